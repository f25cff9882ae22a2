"""Resuming and evaluating the quickstart's own ``last.ckpt`` through ``dualtrack``: the same runs continue.

A shortened quickstart (few images, 2 then 4 epochs) against the session's real ``mlflow server``; what the
server and W&B's offline run file hold is what is checked.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import torch

from lightning_dualtrack.callbacks.checkpoints import run_ids_from_checkpoint
from lightning_dualtrack.cli import main

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


# the callbacks resuming needs (the run ids in the checkpoint, last.ckpt); the quickstart's others (exports,
# reports) are tested elsewhere and would only make each of the five commands here slower
_CALLBACKS = """
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {save_last: true}  # no monitor: each epoch's checkpoint is saved, so last.ckpt is the last epoch's
    - class_path: lightning_dualtrack.callbacks.RunIdsInCheckpoint
"""


def _short(experiment: str) -> list[str]:
    overlay = Path("resume_callbacks.yaml")
    overlay.write_text(_CALLBACKS)
    return [
        "--config", str(RECIPES / "quickstart.yaml"),
        "--config", str(overlay),
        "--experiment_name", experiment,
        "--data.init_args.synthetic_samples_per_class", "6",  # 90 images: 2 training steps per epoch
        "--trainer.log_every_n_steps", "1",
    ]


def _last_ckpt() -> Path:
    # Lightning's ModelCheckpoint directory (the run's artifacts/ holds a snapshot copy too)
    (path,) = Path("dualtrack_runs").glob("*/*/*/checkpoints/last.ckpt")
    return path


@pytest.mark.slow
def test_quickstart_resumed_from_its_last_ckpt_continues_the_same_runs(mlflow_server, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    from tests.helpers import wandb_values

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)  # the recipe names no URI: the env decides
    experiment = f"resume_{uuid.uuid4().hex[:8]}"
    assert main(["fit", *_short(experiment), "--trainer.max_epochs", "2"]) == 0
    last = _last_ckpt()
    ids = run_ids_from_checkpoint(last)
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    ckpt_step, ckpt_epoch = ckpt["global_step"], ckpt["epoch"]
    assert ids and ids["run_id"] and ckpt_step > 0
    client = MlflowClient(mlflow_server.url)
    exp = client.get_experiment_by_name(experiment)
    (first,) = client.search_runs([exp.experiment_id])

    resumed_at = time.time() * 1000
    assert main(["fit", *_short(experiment), "--ckpt_path", str(last), "--trainer.max_epochs", "4"]) == 0

    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [first.info.run_id]  # one run: the resumed one
    run = runs[0]
    assert run.info.status == "FINISHED"

    def sessions(key: str) -> tuple[list[int], list[int]]:
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.timestamp, m.step))
        return [m.step for m in history if m.timestamp < resumed_at], [m.step for m in history if m.timestamp >= resumed_at]

    before, after = sessions("train/loss_step")
    per_epoch = len(before) // 2
    assert before == list(range(2 * per_epoch))  # the first session: 2 epochs
    # the resumed session starts at the checkpoint's step and trains to epoch 4. (Lightning 2.6 writes last.ckpt
    # only when a top-k checkpoint is saved, so it may be an earlier epoch than the first session's last one.)
    assert after == list(range(ckpt_step, 4 * per_epoch))
    val_before, val_after = sessions("val/acc")
    assert len(val_before) == 2
    # one validation per epoch trained after the checkpoint, plus, when Lightning re-validates on resume (the
    # checkpoint was written in on_validation_end, which it counts as mid-evaluation), one at the checkpoint's step
    assert len(val_after) - (3 - ckpt_epoch) in (0, 1) and min(val_after) >= ckpt_step - 1, (val_after, ckpt_step)
    # the settings of both sessions: MLflow params cannot change, so the new max_epochs is a `.v2`
    assert run.data.params["trainer/max_epochs"] == "2"
    assert run.data.params["trainer/max_epochs.v2"] == "4"

    run_dir = Path("dualtrack_runs") / ids["run_id"]
    assert len(wandb_values(run_dir, ids["run_id"], "val/acc")) == len(val_before) + len(val_after)  # as in MLflow

    # evaluating the checkpoint logs into the run it came from
    for command, key in (("test", "test/acc"), ("validate", "val/acc")):
        assert main([command, *_short(experiment), "--ckpt_path", str(last)]) == 0
        assert key in client.get_run(run.info.run_id).data.metrics, command
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == len(val_before) + len(val_after) + 1  # + validate's
    assert main(["predict", *_short(experiment), "--ckpt_path", str(last)]) == 0
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id])] == [run.info.run_id]
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
