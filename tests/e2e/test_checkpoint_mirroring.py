"""Checkpoints mirror the ``ModelCheckpoint`` callback (``log_model="all"``): what the callback removes from disk is
removed from the MLflow run on a real ``mlflow server`` (proxied artifacts, listed over REST), except a checkpoint a
registered model version points to; W&B (offline) keeps every version, with ``best`` and ``latest`` on kept ones, as
its own reader shows (``wandb leet inspect --json``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_dualtrack import DualTrackLogger
from lightning_dualtrack.core.journal import JournalReader
from tests.helpers import TinyModel, loaders, trainer

pytestmark = [pytest.mark.slow]


class ScoredModel(TinyModel):
    """Logs ``score`` = ``scores[epoch]`` at each validation: which checkpoints a top-k callback keeps is known."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.scores = scores

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.log("score", self.scores[self.current_epoch])


def _fit(server, tmp_path: Path, scores: list[float], callbacks: list[Callback] = (), **logger_kwargs):
    logger = DualTrackLogger(experiment_name=f"mirror_{uuid.uuid4().hex[:8]}", tracking_uri=server.url,
                             wandb_mode="offline", save_dir=tmp_path / "runs", log_system_info=False,
                             system_metrics=False, log_model="all", **logger_kwargs)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpts", monitor="score", mode="max", save_top_k=2)
    train, val = loaders()
    trainer(logger, max_steps=-1, max_epochs=len(scores), enable_checkpointing=True, num_sanity_val_steps=0,
            callbacks=[checkpoint, *callbacks]).fit(ScoredModel(scores), train, val)
    logger.finalize("success")
    return logger, checkpoint


def _mlflow_checkpoints(server, run_id: str) -> set[str]:
    """The run's ``checkpoints/`` as MLflow's REST API lists them."""
    resp = requests.get(f"{server.url}/api/2.0/mlflow/artifacts/list", params={"run_id": run_id, "path": "checkpoints"},
                        timeout=30)
    resp.raise_for_status()
    return {Path(f["path"]).name for f in resp.json().get("files", [])}


def _wandb_artifacts(logger: DualTrackLogger) -> list[dict]:
    """The artifact records of the offline run, in order, read by W&B's own CLI."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    files = sorted(Path(logger.run_dir).rglob(f"run-{logger.wandb_run_id}.wandb"))
    assert files, f"no offline W&B run file under {logger.run_dir}"
    out = []
    for path in files:
        proc = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(path)], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "WANDB_SILENT": "true"})
        assert proc.returncode == 0, proc.stderr
        for line in proc.stdout.splitlines():
            if line.strip().startswith("{"):
                rec = json.loads(line)
                if rec.get("type") == "artifact":
                    out.append(rec["artifact"])
    return out


def test_top_2_over_6_epochs_leaves_exactly_the_callbacks_2_checkpoints_in_mlflow(mlflow_server, tmp_path) -> None:
    # saves at epochs 0, 1, 2 (evicts 0), 3 (evicts 2), 5 (evicts 1); epoch 4 is below the top 2 and not saved
    logger, checkpoint = _fit(mlflow_server, tmp_path, [0.1, 0.5, 0.3, 0.9, 0.2, 0.7])
    kept = {Path(p).name for p in checkpoint.best_k_models}
    assert kept == {p.name for p in (tmp_path / "ckpts").iterdir()} == {"epoch=3-step=32.ckpt", "epoch=5-step=48.ckpt"}
    assert _mlflow_checkpoints(mlflow_server, logger.mlflow_run_id) == kept

    deletes = [r for r in JournalReader(logger.run_dir) if r.get("k") == "delete"]
    assert sorted(Path(r["path"]).name for r in deletes) == ["epoch=0-step=8.ckpt", "epoch=1-step=16.ckpt",
                                                             "epoch=2-step=24.ckpt"]

    # W&B offline: every version stays; the aliases that move (best, latest) end on kept checkpoints
    holder: dict[str, str] = {}
    for art in _wandb_artifacts(logger):
        for alias in art.get("aliases") or []:
            holder[alias] = json.loads(art.get("metadata") or "{}").get("original_filename")
    assert holder["best"] == "epoch=3-step=32.ckpt"
    assert holder["latest"] == "epoch=5-step=48.ckpt"


def test_a_second_delivery_of_the_deletes_removes_nothing_more_and_fails_on_nothing(mlflow_server, tmp_path) -> None:
    from lightning_dualtrack.cli import main as dualtrack

    logger, checkpoint = _fit(mlflow_server, tmp_path, [0.1, 0.5, 0.3])
    kept = {Path(p).name for p in checkpoint.best_k_models}
    assert _mlflow_checkpoints(mlflow_server, logger.mlflow_run_id) == kept
    logger.end_run()
    # forget MLflow's acknowledgements: the whole journal, deletes included, is delivered again
    state = Path(logger.run_dir) / "state" / "mlflow.json"
    saved = json.loads(state.read_text())
    state.write_text(json.dumps({**saved, "offset": 0, "closed": False}))
    assert dualtrack(["sync", str(logger.run_dir), "--only", "mlflow"]) == 0
    assert _mlflow_checkpoints(mlflow_server, logger.mlflow_run_id) == kept


class RegisterFirst(Callback):
    """Registers the first checkpoint the callback saves, as a user registering a checkpoint mid-run would."""

    def __init__(self) -> None:
        self.registered: str | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.registered is None and trainer.current_epoch == 1:  # epoch 0's checkpoint is saved
            checkpoint = trainer.checkpoint_callback
            self.registered = Path(checkpoint.best_model_path).name
            trainer.logger.register_model(f"mirror_{uuid.uuid4().hex[:8]}", artifact_path=f"checkpoints/{self.registered}")


def test_a_checkpoint_a_registered_model_version_points_to_is_kept(mlflow_server, tmp_path) -> None:
    register = RegisterFirst()
    # every epoch is the new best: epochs 0..3 are evicted, 4 and 5 kept; epoch 0 was registered
    logger, checkpoint = _fit(mlflow_server, tmp_path, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], callbacks=[register])
    assert register.registered == "epoch=0-step=8.ckpt"
    kept = {Path(p).name for p in checkpoint.best_k_models}
    assert kept == {"epoch=4-step=40.ckpt", "epoch=5-step=48.ckpt"}
    assert _mlflow_checkpoints(mlflow_server, logger.mlflow_run_id) == kept | {register.registered}
    log = (Path(logger.run_dir) / "delivery.log").read_text()
    assert "epoch=0-step=8.ckpt is kept in MLflow" in log and "registered model version" in log
