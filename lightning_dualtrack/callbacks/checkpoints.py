"""Checkpoints that know their runs: both backends' run ids are stored in every checkpoint.

Uploading is the logger's job (``DualTrackLogger(log_model=True | "all")``, once per save, to both
backends; W&B aliases ``latest``, ``best`` and ``epoch-N``). This callback adds a ``"dualtrack"``
entry to each checkpoint so that resuming from it (``dualtrack fit --ckpt_path X``, or
:func:`run_ids_from_checkpoint` + ``DualTrackLogger(run_id=...)``) continues the same two runs.

Pruning: checkpoints that ``ModelCheckpoint`` evicts from its top-k are not deleted from the
backends — MLflow's tracking API has no artifact deletion, and W&B artifact versions can only be
deleted online through its public API; delete them there if storage matters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

KEY = "dualtrack"


def _dualtrack_loggers(trainer: Trainer) -> list[Any]:
    from lightning_dualtrack.logger import DualTrackLogger

    return [lg for lg in trainer.loggers if isinstance(lg, DualTrackLogger)]


class RunIdsInCheckpoint(Callback):
    """Write the run ids (ours, MLflow's, W&B's) and the run directory into every checkpoint."""

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        loggers = _dualtrack_loggers(trainer)
        if not loggers:
            return
        logger = loggers[0]
        checkpoint[KEY] = {
            "run_id": logger.run_id,
            "save_dir": logger.root_dir,
            "run_dir": str(logger.run_dir),
            "experiment_name": logger.name,
            "mlflow_run_id": logger.mlflow_run_id,
            "wandb_run_id": logger.wandb_run_id,
        }


def run_ids_from_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The ``"dualtrack"`` entry of a checkpoint (memory-mapped: the weights are not read)."""
    import torch

    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 - a checkpoint of another format: nothing to continue
        return None
    return ckpt.get(KEY) if isinstance(ckpt, dict) else None
