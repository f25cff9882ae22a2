"""k-fold cross-validation as one parent run with a child run per fold, in MLflow and W&B at once.

    python examples/kfold.py --folds 3 --save-dir dualtrack_runs

* MLflow: the tracking URI is ``MLFLOW_TRACKING_URI`` (else ``sqlite:///mlflow.db`` in the working directory). The
  cross-validation is one run; each fold is a child run nested under it (``mlflow.parentRunId``).
* W&B: the mode is ``WANDB_MODE`` (else online when you are logged in, offline otherwise). The folds are one
  group, named after the parent run, with job type ``fold``.
* The parent run holds each validation metric's mean and standard deviation over the folds
  (``summary/val/acc/mean``, ``summary/val/acc/std``, ...), computed from the folds' last logged values.

The model is a small MLP on a synthetic two-class problem, so a fold takes seconds on a CPU. See
docs/training-life.md.
"""

from __future__ import annotations

import argparse
import logging

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from lightning_dualtrack import DualTrackLogger

METRICS = ["val/acc", "val/loss"]


class Net(pl.LightningModule):
    """A one-hidden-layer MLP classifier that logs ``train/loss``, ``val/loss`` and ``val/acc``."""

    def __init__(self, hidden: int = 16, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log("val/loss", nn.functional.cross_entropy(logits, y))
        self.log("val/acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def make_dataset(n: int = 240, seed: int = 0) -> TensorDataset:
    """A learnable two-class problem: the label is the sign of a fixed random projection, plus noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = ((x @ torch.randn(8, generator=g) + 0.3 * torch.randn(n, generator=g)) > 0).long()
    return TensorDataset(x, y)


def folds(n: int, k: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """``k`` (train indices, validation indices) pairs: a shuffled partition, each part validating once."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    parts = [order[i::k] for i in range(k)]
    return [([i for j, p in enumerate(parts) if j != f for i in p], parts[f]) for f in range(k)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, default=3, help="number of folds (default 3)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per fold (default 3)")
    parser.add_argument("--save-dir", default="dualtrack_runs", help="where the run directories go")
    parser.add_argument("--experiment", default="kfold", help="MLflow experiment (and W&B project)")
    parser.add_argument("--run-name", default="cv", help="the parent run's name (the W&B group)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error(f"--folds must be at least 2, got {args.folds}")

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    data = make_dataset(seed=args.seed)
    with DualTrackLogger(experiment_name=args.experiment, run_name=args.run_name, save_dir=args.save_dir) as parent:
        parent.log_params({"folds": args.folds, "epochs": args.epochs, "seed": args.seed})
        for k, (train_idx, val_idx) in enumerate(folds(len(data), args.folds, args.seed)):
            pl.seed_everything(args.seed + k, verbose=False)
            run = parent.child(run_name=f"fold-{k}", job_type="fold")
            trainer = pl.Trainer(max_epochs=args.epochs, logger=run, accelerator="cpu", log_every_n_steps=1,
                                 enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
            try:
                trainer.fit(Net(), DataLoader(Subset(data, train_idx), batch_size=32, shuffle=True),
                            DataLoader(Subset(data, val_idx), batch_size=64))
            finally:
                run.end_run()
        summary = parent.summarize_children(METRICS)
    for key in METRICS:
        print(f"{key}: {summary[f'summary/{key}/mean']:.4f} ± {summary[f'summary/{key}/std']:.4f} over "
              f"{args.folds} folds (parent run {parent.run_id})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
