"""Fault families staged against a real ``mlflow server`` and W&B offline (issue: delivery core v2).

Each test ends with every valid point stored exactly once in both backends, read back from the server
and from W&B's run file, and checks that what the user was told (the final report, ``dualtrack sync``'s
exit status) is true.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lightning_dualtrack.cli import run_status
from lightning_dualtrack.delivery.state import load_rejected
from tests.e2e.reliability.faults import FaultProxy, Window
from tests.e2e.reliability.ledger import Every, LedgerModel, TimedLogger, assert_delivered, mlflow_run_id
from tests.helpers import loaders, trainer

pytestmark = [pytest.mark.slow]


def make_logger(tmp_path: Path, tracking_uri: str, **kwargs) -> TimedLogger:
    kwargs.setdefault("experiment_name", "faults")
    kwargs.setdefault("wandb_mode", "offline")
    kwargs.setdefault("flush_interval", 0.2)
    return TimedLogger(tracking_uri=tracking_uri, save_dir=tmp_path / "runs", **kwargs)


def sync(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightning_dualtrack.cli", "sync", *args, "--timeout", "60"],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(300)
def test_proxy_answering_404_413_html_and_garbage_for_a_window_loses_nothing(mlflow_server, tmp_path, capfd) -> None:
    window = Window(first=3, last=14)  # 12 log-batch requests: 404, 413, portal page (200), garbage (200)
    model = LedgerModel(step_sleep=0.02)
    with FaultProxy(mlflow_server.url) as proxy:
        proxy.mode = window
        logger = make_logger(tmp_path, proxy.url, finalize_timeout=90)
        trainer(logger, max_steps=60).fit(model, loaders()[0])
    assert sum(window.injected.values()) == 12, window.injected
    assert {code for code, _ in window.injected} == {404, 413, 200}
    # nothing set aside, everything delivered by finalize, the report says so
    assert load_rejected(logger.run_dir, "mlflow") == []
    assert logger.last_report["mlflow"].get("closed"), logger.last_report
    assert_delivered(logger.run_dir, logger.run_id, mlflow_server.url, model.ledger)
    err = capfd.readouterr().err
    assert "mlflow: delivered" in err and "REJECTED" not in err and "dualtrack sync" not in err
    assert sync(str(logger.run_dir)).returncode == 0


@pytest.mark.timeout(300)
def test_run_deleted_mid_run_is_blocked_not_rejected_and_sync_delivers_after_restore(mlflow_server, tmp_path, capfd) -> None:
    client = MlflowClient(mlflow_server.url)
    model = LedgerModel(step_sleep=0.02)
    deleted: list[str] = []

    def delete_at_step_10(t) -> None:
        if t.global_step >= 10 and not deleted:
            rid = t.logger.mlflow_run_id  # once delivery has created the run
            if rid:
                client.delete_run(rid)
                deleted.append((rid, t.global_step))

    logger = make_logger(tmp_path, mlflow_server.url, finalize_timeout=6)
    trainer(logger, max_steps=150, callbacks=[Every(delete_at_step_10)]).fit(model, loaders()[0])
    assert deleted and deleted[0][1] < 140, f"the MLflow run was created too late: {deleted}"
    err = capfd.readouterr().err
    # the user is told the truth: pending (not rejected), why, and the command
    assert "mlflow:" in err and "PENDING" in err and "BLOCKED" in err, err
    assert f"dualtrack sync {logger.run_dir}" in err
    assert load_rejected(logger.run_dir, "mlflow") == []
    still = sync(str(logger.run_dir), "--timeout", "3")  # still deleted: not delivered, and says so
    assert still.returncode == 1, still.stdout + still.stderr
    rid = deleted[0][0]
    client.restore_run(rid)
    done = sync(str(logger.run_dir))
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert mlflow_run_id(logger.run_dir) == rid
    assert_delivered(logger.run_dir, logger.run_id, mlflow_server.url, model.ledger)
    assert client.get_run(rid).info.status == "FINISHED"


@pytest.mark.timeout(300)
def test_delivery_process_killed_alone_is_restarted_and_everything_arrives_once(mlflow_server, tmp_path, capfd) -> None:
    model = LedgerModel(step_sleep=0.03)
    killed: list[int] = []

    def kill_delivery_at_step_40(t) -> None:
        if t.global_step == 40 and not killed:
            pid = t.logger._run.delivery.pid
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    logger = make_logger(tmp_path, mlflow_server.url, finalize_timeout=90)
    with pytest.warns(UserWarning, match="delivery process exited during the run"):
        trainer(logger, max_steps=120, callbacks=[Every(kill_delivery_at_step_40)]).fit(model, loaders()[0])
    assert killed
    assert logger.last_report["mlflow"].get("closed") and logger.last_report["wandb"].get("closed"), logger.last_report
    assert_delivered(logger.run_dir, logger.run_id, mlflow_server.url, model.ledger)
    assert "restarted 1 time(s)" in capfd.readouterr().err


@pytest.mark.timeout(300)
def test_state_files_removed_before_sync_store_nothing_twice(mlflow_server, tmp_path) -> None:
    model = LedgerModel()
    logger = make_logger(tmp_path, mlflow_server.url, finalize_timeout=60)
    trainer(logger, max_steps=40).fit(model, loaders()[0])
    logger.end_run()  # the run is over (its shipper no longer holds the W&B run open for a next stage)
    assert_delivered(logger.run_dir, logger.run_id, mlflow_server.url, model.ledger)
    for name in ("mlflow", "wandb"):
        (logger.run_dir / "state" / f"{name}.json").unlink()
    result = sync(str(logger.run_dir))
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "already holds the journal" in result.stderr
    assert_delivered(logger.run_dir, logger.run_id, mlflow_server.url, model.ledger)
    assert run_status(logger.run_dir)["backends"]["wandb"]["closed"]


@pytest.mark.timeout(400)
def test_registering_the_same_model_name_twice_on_sqlite_is_idempotent(tmp_path) -> None:
    """The quickstart run twice in one folder (sqlite store): the second registration is a new version."""
    import torch

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = []
    for i in range(2):
        logger = make_logger(tmp_path, uri, finalize_timeout=120, wandb=False)
        logger.log_metrics({"acc": 0.5 + i / 10}, step=0)
        logger.log_model(torch.nn.Linear(2, 3), input_example=torch.zeros(1, 2), registered_model_name="tiny_quickstart",
                         registry_aliases=["champion"])
        logger.finalize("success")
        runs.append(logger)
    client = MlflowClient(uri)
    for logger in runs:
        run = client.get_run(mlflow_run_id(logger.run_dir))
        assert run.info.status == "FINISHED"
        assert run_status(logger.run_dir)["backends"]["mlflow"]["closed"]
    versions = client.search_model_versions("name='tiny_quickstart'")
    assert sorted(v.run_id for v in versions) == sorted(mlflow_run_id(lg.run_dir) for lg in runs)
    assert client.get_model_version_by_alias("tiny_quickstart", "champion").run_id == mlflow_run_id(runs[1].run_dir)
    assert sync(str(tmp_path / "runs")).returncode == 0


@pytest.mark.timeout(300)
def test_sync_of_a_runs_folder_delivers_every_run_with_something_pending(mlflow_server, tmp_path) -> None:
    from lightning_dualtrack.testing import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    ledgers = {}
    for _ in range(2):
        model = LedgerModel()
        logger = make_logger(tmp_path, dead, finalize_timeout=2, wandb=False)
        trainer(logger, max_steps=10).fit(model, loaders()[0])
        ledgers[logger.run_dir] = (logger.run_id, model.ledger)
        # the run is recorded for a server that was down; the user points it at the real one
        settings = json.loads((logger.run_dir / "run.json").read_text())
        settings["mlflow"]["tracking_uri"] = mlflow_server.url
        (logger.run_dir / "run.json").write_text(json.dumps(settings))
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url}
    result = subprocess.run([sys.executable, "-m", "lightning_dualtrack.cli", "sync", str(tmp_path / "runs")],
                            capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    for run_dir, (run_id, ledger) in ledgers.items():
        assert_delivered(run_dir, run_id, mlflow_server.url, ledger, wandb=False)
    assert "\r" not in result.stderr  # no progress bar when the output is not a terminal
    started = time.monotonic()
    again = subprocess.run([sys.executable, "-m", "lightning_dualtrack.cli", "sync", str(tmp_path / "runs")],
                           capture_output=True, text=True, timeout=180, env=env)
    assert again.returncode == 0 and "run " not in again.stdout  # nothing pending: no run is touched
    assert time.monotonic() - started < 30


@pytest.mark.timeout(300)
def test_a_table_wandb_cannot_convert_is_set_aside_and_the_rows_after_it_arrive(mlflow_server, tmp_path, capfd) -> None:
    from lightning_dualtrack.cli import main as dualtrack_main
    from lightning_dualtrack.sinks.wandb.runfile import read_runs
    from lightning_dualtrack.sinks.wandb.sink import OFFSET_KEY
    from tests.e2e.reliability.ledger import wandb_points

    with make_logger(tmp_path, mlflow_server.url, finalize_timeout=60) as run:
        for step in range(100):
            run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
            if step == 20:
                run.log_table("predictions", ["score"], [[0.91], ["n/a"]], step=step)  # mixed types: W&B TypeError
    rejected = load_rejected(run.run_dir, "wandb")
    assert [(r["kind"], r["key"], r["error"]) for r in rejected] == [("table", "predictions", "conversion")]
    assert "incompatible types" in rejected[0]["reason"] or "TypeError" in rejected[0]["reason"]
    points = wandb_points(run.run_dir, run.run_id)
    assert sorted(s for (k, s, _), n in points.items() if k == "loss" for _ in range(n)) == list(range(100))
    assert load_rejected(run.run_dir, "mlflow") == []  # MLflow stored the table as a file
    err = capfd.readouterr().err
    assert "wandb: 1 record(s) REJECTED and set aside" in err and "--retry-rejected" in err
    # the logger's own figures and the offset stay out of the run's summary
    summary = read_runs(run.run_dir, run.run_id).summary
    assert OFFSET_KEY not in summary and not any(k.startswith(("dualtrack/", "system/dualtrack/")) for k in summary), summary
    # status lists the record by reason; sync says it is not delivered (exit 1) and how to retry
    assert dualtrack_main(["status", str(run.run_dir)]) == 0
    out = capfd.readouterr().out
    assert "set aside, by reason" in out and "predictions" in out
    result = sync(str(run.run_dir), "--retry-rejected")
    assert result.returncode == 1 and "--retry-rejected" in result.stdout
    assert len(load_rejected(run.run_dir, "wandb")) == 1
    assert sorted(s for (k, s, _), n in wandb_points(run.run_dir, run.run_id).items() if k == "loss" for _ in range(n)) == list(range(100))


@pytest.mark.timeout(300)
def test_sync_on_a_terminal_shows_progress_per_backend(tmp_path) -> None:
    import pty
    import select

    from lightning_dualtrack import DualTrackLogger

    logger = DualTrackLogger(save_dir=tmp_path / "runs", mlflow=False, wandb_mode="offline", deliver=False,
                             log_system_info=False)
    for step in range(3000):
        logger.log_metrics({"loss": 1.0 / (step + 1), "acc": step / 3000}, step=step)
    logger.finalize("success")
    main_fd, child_fd = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "lightning_dualtrack.cli", "sync", str(logger.run_dir)],
                            stdin=child_fd, stdout=child_fd, stderr=child_fd, close_fds=True)
    os.close(child_fd)
    out = b""
    while True:
        ready, _, _ = select.select([main_fd], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(main_fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=120)
    os.close(main_fd)
    text = out.decode("utf-8", "replace")
    assert proc.returncode == 0, text[-2000:]
    assert f"{logger.run_dir.name} wandb" in text and "100%" in text, text[-2000:]  # a tqdm bar, per backend
