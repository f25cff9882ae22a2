"""An Optuna study as one parent run with a child run per trial, in MLflow and W&B at once.

    pip install "lightning-dualtrack[sweeps]"       # optuna and optuna-integration
    python examples/optuna_sweep.py --trials 4 --save-dir dualtrack_runs

* MLflow: the tracking URI is ``MLFLOW_TRACKING_URI`` (else ``sqlite:///mlflow.db`` in the working directory). The
  study is one run; each trial is a child run nested under it (``mlflow.parentRunId``: MLflow's UI shows a tree).
* W&B: the mode is ``WANDB_MODE`` (else online when you are logged in, offline otherwise). The trials are one
  group, named after the study, with job type ``trial``.
* The study's run holds the summary: ``study/best_value``, ``study/best_trial``, the trial counts by state, the
  best params (``study/best_params/<name>``) and the tag ``dualtrack.best_run_id``. A pruned trial ends ``KILLED``
  in MLflow with the tag ``dualtrack.status=pruned`` (W&B: exit code 255, config ``dualtrack/status``).

The model is a small MLP on a synthetic two-class problem, so a trial takes seconds on a CPU; every trial shares
the process's one delivery service. See docs/training-life.md.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

import lightning.pytorch as pl
import optuna
import torch
from optuna_integration import PyTorchLightningPruningCallback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_dualtrack import DualTrackLogger

MONITOR = "val/acc"


class Net(pl.LightningModule):
    """A one-hidden-layer MLP classifier that logs ``train/loss``, ``val/loss`` and ``val/acc``."""

    def __init__(self, hidden: int = 16, lr: float = 0.05) -> None:
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
        self.log(MONITOR, (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def make_data(n: int = 256, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """A learnable two-class problem: the label is the sign of a fixed random projection, plus noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = ((x @ torch.randn(8, generator=g) + 0.3 * torch.randn(n, generator=g)) > 0).long()
    split = n * 3 // 4
    return (DataLoader(TensorDataset(x[:split], y[:split]), batch_size=32, shuffle=True, generator=g),
            DataLoader(TensorDataset(x[split:], y[split:]), batch_size=64))


def objective_for(parent: DualTrackLogger, epochs: int, data: tuple[DataLoader, DataLoader]) -> Callable[[optuna.Trial], float]:
    """The study's objective: one child run of ``parent`` per trial."""

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-3, 0.5, log=True)
        hidden = trial.suggest_categorical("hidden", [4, 16, 64])
        run = parent.child(run_name=f"trial-{trial.number}", job_type="trial")
        trial.set_user_attr("dualtrack_run_id", run.run_id)  # log_study_summary names the best trial's run
        trainer = pl.Trainer(
            max_epochs=epochs, logger=run, accelerator="cpu", log_every_n_steps=1, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False,
            callbacks=[PyTorchLightningPruningCallback(trial, monitor=MONITOR)],
        )
        try:
            trainer.fit(Net(hidden, lr), *data)  # a pruned trial raises optuna.TrialPruned from here
        finally:
            run.end_run()  # the trial's run ends with fit's status: success, failed or pruned
        return trainer.callback_metrics[MONITOR].item()

    return objective


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4, help="number of trials (default 4)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial (default 3)")
    parser.add_argument("--save-dir", default="dualtrack_runs", help="where the run directories go")
    parser.add_argument("--experiment", default="optuna_sweep", help="MLflow experiment (and W&B project)")
    parser.add_argument("--study-name", default="study", help="the parent run's name (the W&B group)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error(f"--trials must be at least 1, got {args.trials}")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    pl.seed_everything(args.seed, verbose=False)
    data = make_data(seed=args.seed)
    with DualTrackLogger(experiment_name=args.experiment, run_name=args.study_name, save_dir=args.save_dir) as parent:
        parent.log_params({"trials": args.trials, "epochs": args.epochs, "sampler": "TPE", "pruner": "median"})
        study = optuna.create_study(
            study_name=args.study_name, direction="maximize", sampler=optuna.samplers.TPESampler(seed=args.seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        )
        study.optimize(objective_for(parent, args.epochs, data), n_trials=args.trials)
        parent.log_study_summary(study)
    states = {s.name.lower(): sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState}
    print(f"study {args.study_name!r} (run {parent.run_id}): {len(study.trials)} trials "
          f"({', '.join(f'{n} {s}' for s, n in states.items() if n)}); best {MONITOR} = {study.best_value:.4f} "
          f"in trial {study.best_trial.number} (run {study.best_trial.user_attrs['dualtrack_run_id']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
