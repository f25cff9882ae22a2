"""Small shared pieces for the tests: a tiny model that logs, and readers of what the backends stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class TinyModel(pl.LightningModule):
    """A linear classifier on random tensors that logs ``n_metrics`` values every step."""

    def __init__(self, n_metrics: int = 3, lr: float = 0.05, fail_at_step: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(8, 2)

    def training_step(self, batch, batch_idx):
        if self.hparams.fail_at_step is not None and self.global_step == self.hparams.fail_at_step:
            raise RuntimeError("boom in training_step")
        x, y = batch
        loss = nn.functional.cross_entropy(self.layer(x), y)
        values = {f"m{i}": loss.detach() * (i + 1) for i in range(self.hparams.n_metrics)}
        values["train/loss"] = loss.detach()
        self.log_dict(values, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def loaders(n: int = 64, batch_size: int = 8) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long()
    ds = TensorDataset(x, y)
    return DataLoader(ds, batch_size=batch_size), DataLoader(ds, batch_size=batch_size)


def trainer(logger: Any, max_steps: int = 16, **kwargs: Any) -> pl.Trainer:
    defaults = dict(
        max_steps=max_steps,
        logger=logger,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        limit_val_batches=2,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def metric_steps(tracking_uri: str, run_id: str, key: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    return sorted(m.step for m in MlflowClient(tracking_uri).get_metric_history(run_id, key))


def wandb_run(run_dir: Path, run_id: str):
    from lightning_dualtrack.sinks.wandb.runfile import read_runs

    return read_runs(run_dir, run_id)


def _lookup(row: dict, key: str) -> Any:
    """A value of a W&B row: flat key first, else the nested form the reader gives multi-part keys."""
    if key in row:
        return row[key]
    value: Any = row
    for part in key.split("/"):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def wandb_values(run_dir: Path, run_id: str, key: str) -> list[tuple[int, Any]]:
    """(trainer/global_step, value) of every W&B history row holding ``key``."""
    out = []
    for row in wandb_run(run_dir, run_id).history:
        value = _lookup(row, key)
        if value is not None:
            out.append((_lookup(row, "trainer/global_step"), value))
    return out


def run_dirs(save_dir: Path) -> list[str]:
    """The run directories in ``save_dir``: its entries but the logger's own indexes (``.checkpoints.jsonl``,
    ``.jobs/``), which are hidden and are asserted to be nothing else."""
    names = sorted(p.name for p in Path(save_dir).iterdir())
    hidden = [n for n in names if n.startswith(".")]
    assert set(hidden) <= {".checkpoints.jsonl", ".jobs"}, hidden
    return [n for n in names if not n.startswith(".")]
