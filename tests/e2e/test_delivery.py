"""End-to-end delivery through a real ``mlflow server`` and W&B offline, read back from both."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from lightning_dualtrack import DualTrackLogger
from lightning_dualtrack.cli import main as dualtrack_main
from lightning_dualtrack.cli import run_status
from tests.helpers import TinyModel, loaders, metric_steps, trainer, wandb_run, wandb_values

pytestmark = pytest.mark.slow


def make_logger(server, tmp_path, **kwargs) -> DualTrackLogger:
    kwargs.setdefault("experiment_name", "delivery")
    kwargs.setdefault("wandb_mode", "offline")
    kwargs.setdefault("save_dir", tmp_path / "runs")
    return DualTrackLogger(tracking_uri=server.url if server else None, **kwargs)


def test_trainer_run_lands_in_both_backends_linked(mlflow_server, tmp_path) -> None:
    logger = make_logger(mlflow_server, tmp_path, run_name="fit-1", tags={"team": "vision"})
    train, val = loaders()
    trainer(logger, max_steps=24, val_check_interval=8).fit(TinyModel(), train, val)
    assert wandb_run(logger.run_dir, logger.run_id).exit_code is None  # kept open for a test stage of this process
    logger.end_run()  # the run is over: W&B finishes it now (else at interpreter exit)

    client = MlflowClient(mlflow_server.url)
    run = client.get_run(logger.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "fit-1"
    assert run.data.params["n_metrics"] == "3" and run.data.params["lr"] == "0.05"
    assert run.data.tags["team"] == "vision"
    assert metric_steps(mlflow_server.url, run.info.run_id, "m0") == list(range(24))
    assert len(metric_steps(mlflow_server.url, run.info.run_id, "val/loss")) == 3
    # cross-links, both ways
    assert run.data.tags["wandb.run_id"] == logger.run_id
    assert run.data.tags["wandb.project"] == "delivery"
    w = wandb_run(logger.run_dir, logger.run_id)
    assert w.exit_code == 0
    assert w.config["mlflow/run_id"] == run.info.run_id
    assert w.config["mlflow/tracking_uri"] == mlflow_server.url
    assert w.config["n_metrics"] == 3
    # every training step is a row, and validation rows at lower-or-equal steps are kept too
    assert [s for s, _ in wandb_values(logger.run_dir, logger.run_id, "m0")] == list(range(24))
    assert len(wandb_values(logger.run_dir, logger.run_id, "val/loss")) == 3
    # run metadata, in both
    assert run.data.tags["dualtrack.python"] == w.config["dualtrack/python"]
    assert "dualtrack/requirements.txt" in [a.path for a in client.list_artifacts(run.info.run_id, "dualtrack")]


def test_failed_training_marks_both_runs_failed_and_keeps_the_exception(mlflow_server, tmp_path) -> None:
    logger = make_logger(mlflow_server, tmp_path)
    train, _ = loaders()
    with pytest.raises(RuntimeError, match="boom in training_step"):
        trainer(logger, max_steps=20).fit(TinyModel(fail_at_step=5), train)
    run = MlflowClient(mlflow_server.url).get_run(logger.mlflow_run_id)
    assert run.info.status == "FAILED"
    assert metric_steps(mlflow_server.url, logger.mlflow_run_id, "m0") == list(range(5))
    assert wandb_run(logger.run_dir, logger.run_id).exit_code not in (0, None)


def test_direct_use_media_tables_and_values(mlflow_server, tmp_path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    with pytest.warns(UserWarning) as record, make_logger(mlflow_server, tmp_path) as run:
        run.log_params({"model": {"name": "tiny", "layers": [1, 2]}, "long": "y" * 10_000})
        run.log_metrics({"acc@1": 0.5, "nan": float("nan"), "inf": float("inf"), "text": "hello", "vec": np.ones(3)})
        run.log_metrics({"acc@1": 0.6})
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        run.log_figure(fig, "curves/loss", step=3)
        run.log_table("preds", ["id", "label", "image"], [[1, "a", np.zeros((4, 4, 3), np.uint8)], [2, "b", None]])
        run.log_text("hello", "notes/readme.txt")
        run.log_confusion_matrix([[5, 1], [2, 7]], ["cat", "dog"], step=3)
        run.set_tags({"stage": "dev"})
    messages = " ".join(str(w.message) for w in record)
    assert "'text' dropped" in messages and "'vec' dropped" in messages and "acc@1" in messages

    client = MlflowClient(mlflow_server.url)
    rid = run.mlflow_run_id
    r = client.get_run(rid)
    assert r.data.params["model/layers"] == "[1, 2]"
    assert r.data.params["long"].endswith("full value in artifact params/long.txt]")
    assert [m.value for m in client.get_metric_history(rid, "acc_1")] == [0.5, 0.6]
    assert math.isnan(client.get_metric_history(rid, "nan")[0].value)
    assert "text" not in r.data.metrics and "vec" not in r.data.metrics
    arts = {a.path for a in client.list_artifacts(rid)}
    assert {"confusion_matrix_step0000003.png", "confusion_matrix_step0000003_normalized.png", "confusion_matrix_step0000003.json", "notes", "images", "tables", "params"} <= arts
    full = client.download_artifacts(rid, "params/long.txt", str(tmp_path / "dl"))
    assert open(full).read() == "y" * 10_000
    key_map = json.load(open(client.download_artifacts(rid, "dualtrack/key_map.json", str(tmp_path / "dl2"))))
    assert key_map["mlflow"]["acc@1"] == "acc_1"

    w = wandb_run(run.run_dir, run.run_id)
    assert w.config["long"] == "y" * 10_000
    # W&B stores a custom chart's data as "<key>_table" in history and its spec in the config
    cm_rows = [row for row in w.history if "confusion_matrix_table" in row]
    assert cm_rows, "the native W&B confusion matrix chart was not logged"
    assert any(math.isinf(row.get("inf", 0)) for row in w.history)
    assert "stage:dev" in w.tags


def test_mlflow_down_from_the_start_then_sync_delivers_exactly_once(tmp_path) -> None:
    from lightning_dualtrack.testing import MlflowServer, free_port

    port = free_port()
    logger = DualTrackLogger(
        experiment_name="outage",
        tracking_uri=f"http://127.0.0.1:{port}",
        wandb_mode="offline",
        save_dir=tmp_path / "runs",
        finalize_timeout=4,
    )
    train, _ = loaders()
    trainer(logger, max_steps=12).fit(TinyModel(), train)  # must not raise, must not hang
    status = run_status(logger.run_dir)
    assert status["backends"]["mlflow"]["pending"] > 0
    assert status["backends"]["wandb"]["pending"] == 0 and status["backends"]["wandb"]["closed"]

    with MlflowServer(workdir=tmp_path / "srv", port=port) as server:
        assert dualtrack_main(["sync", str(logger.run_dir)]) == 0
        assert dualtrack_main(["sync", str(logger.run_dir)]) == 0  # a second sync stores nothing twice
        rid = run_status(logger.run_dir)["backends"]["mlflow"]["run_id"]
        run = MlflowClient(server.url).get_run(rid)
        assert run.info.status == "FINISHED"
        assert metric_steps(server.url, rid, "m0") == list(range(12))
        assert run.data.tags["wandb.run_id"] == logger.run_id
    # W&B was delivered once, not replayed by sync
    assert [s for s, _ in wandb_values(logger.run_dir, logger.run_id, "m0")] == list(range(12))


def test_embedded_sqlite_default(tmp_path, monkeypatch) -> None:
    logger = DualTrackLogger(experiment_name="embedded", wandb=False, save_dir=tmp_path / "runs")
    # the default, sqlite:///mlflow.db in the working directory, made absolute: delivery and a later `dualtrack sync`
    # from another directory find the same database
    assert logger.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    with logger:
        logger.log_metrics({"x": 1.0}, step=0)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")  # absolute: MLflow caches stores per URI
    assert client.get_run(logger.mlflow_run_id).data.metrics["x"] == 1.0


def test_resume_continues_both_runs(mlflow_server, tmp_path) -> None:
    first = make_logger(mlflow_server, tmp_path)
    with first:
        first.log_metrics({"x": 1.0}, step=0)
    again = make_logger(mlflow_server, tmp_path, run_id=first.run_id)
    with again:
        again.log_metrics({"x": 2.0}, step=1)
    assert again.mlflow_run_id == first.mlflow_run_id
    assert metric_steps(mlflow_server.url, first.mlflow_run_id, "x") == [0, 1]
    assert [s for s, _ in wandb_values(first.run_dir, first.run_id, "x")] == [0, 1]


def test_logger_pickles_and_status_cli(mlflow_server, tmp_path) -> None:
    logger = make_logger(mlflow_server, tmp_path)
    logger.log_metrics({"x": 1.0}, step=0)
    clone = pickle.loads(pickle.dumps(logger))
    assert clone.run_id == logger.run_id
    logger.finalize("success")
    out = subprocess.run(
        [sys.executable, "-m", "lightning_dualtrack.cli", "status", str(logger.run_dir)], capture_output=True, text=True, check=True
    ).stdout
    assert "mlflow" in out and "up to date" in out and "pending       0" in out
