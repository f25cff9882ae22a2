"""MLflow outages during training: refused, black-holed, flaky. Nothing lost, nothing stored twice.

Each test keeps a ledger of the metrics its model logged and compares it with the journal, the MLflow
server (read back with ``MlflowClient``) and the W&B run file: every point exactly once. The delivery
tests run on SQLite and, with ``DUALTRACK_TEST_POSTGRES_URL``, on PostgreSQL.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from mlflow.tracking import MlflowClient

from lightning_dualtrack.cli import run_status
from lightning_dualtrack.testing import MlflowServer, free_port
from tests.e2e.reliability.conftest import Store
from tests.e2e.reliability.faults import FAIL_AFTER, FAIL_BEFORE, BlackHole, EveryNth, FaultProxy
from tests.e2e.reliability.ledger import Every, LedgerModel, TimedLogger, assert_delivered, mlflow_run_id
from tests.helpers import loaders, trainer

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

LOG_CALL_BOUND_S = 0.05  # a bound on the caller's cost of one log call (the real cost is ~0.1 ms)


def make_logger(tmp_path, tracking_uri: str, **kwargs) -> TimedLogger:
    kwargs.setdefault("experiment_name", "reliability")
    kwargs.setdefault("wandb_mode", "offline")
    kwargs.setdefault("flush_interval", 0.2)
    return TimedLogger(tracking_uri=tracking_uri, save_dir=tmp_path / "runs", **kwargs)


def sync(run_dir, timeout: float = 120) -> subprocess.CompletedProcess:
    """``dualtrack sync RUN_DIR`` as a user runs it (a separate process)."""
    return subprocess.run(
        [sys.executable, "-m", "lightning_dualtrack.cli", "sync", str(run_dir), "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.timeout(300)
def test_server_refusing_from_the_start_then_coming_up_mid_run_loses_nothing(store: Store, tmp_path) -> None:
    port = free_port()
    server = MlflowServer(workdir=tmp_path / "srv", port=port, backend_store_uri=store.backend_store_uri)
    up = threading.Event()
    failed: list[BaseException] = []
    marks: dict[str, int] = {}

    def boot() -> None:
        try:
            server.start()
            up.set()
        except BaseException as err:  # noqa: BLE001 - reported by the test
            failed.append(err)

    def drive(t) -> None:
        # after 5 steps the server starts booting; training goes on meanwhile and stops 20 steps after it is up
        if t.global_step == 5:
            threading.Thread(target=boot, daemon=True).start()
        if up.is_set() and "up" not in marks:
            marks["up"] = t.global_step
        if failed or ("up" in marks and t.global_step >= marks["up"] + 20) or t.global_step > 3000:
            t.should_stop = True

    logger = make_logger(tmp_path, f"http://127.0.0.1:{port}", finalize_timeout=90)
    model = LedgerModel(step_sleep=0.03)
    try:
        trainer(logger, max_steps=10_000, callbacks=[Every(drive)]).fit(model, loaders()[0])
        assert not failed, f"the MLflow server did not start: {failed[0]}"
        assert "up" in marks, "training ended before the server came up"
        steps = {s for _, s, _ in model.ledger.points}
        assert min(steps) < 5 < marks["up"] <= max(steps), "points were logged both before and after the server came up"
        assert max(logger.call_seconds) < LOG_CALL_BOUND_S
        assert logger.last_report["mlflow"].get("closed"), logger.last_report
        assert_delivered(logger.run_dir, logger.run_id, server.url, model.ledger)
        assert MlflowClient(server.url).get_run(mlflow_run_id(logger.run_dir)).info.status == "FINISHED"
    finally:
        server.stop()


@pytest.mark.timeout(300)
def test_black_holed_server_costs_nothing_and_sync_delivers_exactly_once(tmp_path) -> None:
    port = free_port()
    finalize_timeout = 8.0  # W&B's end (it waits up to 3 s for MLflow's run id to link) fits in it on a busy machine
    model = LedgerModel()
    with BlackHole(port) as hole:
        logger = make_logger(tmp_path, hole.url, finalize_timeout=finalize_timeout)
        trainer(logger, max_steps=30).fit(model, loaders()[0])
        assert hole.accepted > 0, "delivery never reached the black hole"
    assert max(logger.call_seconds) < LOG_CALL_BOUND_S, f"slowest log call {max(logger.call_seconds):.3f} s"
    assert max(logger.finalize_seconds) < finalize_timeout + 2.0
    # the tail is in the journal, pending for MLflow; W&B is unaffected
    status = run_status(logger.run_dir)
    assert status["backends"]["mlflow"]["pending"] > 0
    assert status["backends"]["wandb"]["closed"] and status["backends"]["wandb"]["pending"] == 0

    with MlflowServer(workdir=tmp_path / "srv", port=port) as server:  # healthy, same address
        first = sync(logger.run_dir)
        assert first.returncode == 0, first.stderr[-3000:]
        second = sync(logger.run_dir)  # nothing left: stores nothing twice
        assert second.returncode == 0, second.stderr[-3000:]
        assert_delivered(logger.run_dir, logger.run_id, server.url, model.ledger)
        run = MlflowClient(server.url).get_run(mlflow_run_id(logger.run_dir))
        assert run.info.status == "FINISHED"
        assert run.data.params["lr"] == "0.05"


@pytest.mark.timeout(300)
def test_server_failing_every_third_request_stores_each_point_once(store: Store, tmp_path) -> None:
    policy = EveryNth(3)  # 500, 503, 429 (Retry-After: 1); before and after the server stored it
    model = LedgerModel(step_sleep=0.02)

    def side_records(t) -> None:
        if t.global_step == 10:
            t.logger.log_text("notes written mid-run", "notes/mid.txt")
            t.logger.set_tags({"phase": "mid"})
            t.logger.log_params({"extra": {"seed": 7}})

    with FaultProxy(store.server.url) as proxy:
        proxy.mode = policy
        logger = make_logger(tmp_path, proxy.url, finalize_timeout=120)
        trainer(logger, max_steps=40, callbacks=[Every(side_records)]).fit(model, loaders()[0])
    injected = {status for _, status in policy.injected}
    modes = {mode for mode, _ in policy.injected}
    assert injected == {500, 503, 429} and modes == {FAIL_BEFORE, FAIL_AFTER}, policy.injected
    assert logger.last_report["mlflow"].get("closed"), logger.last_report
    assert_delivered(logger.run_dir, logger.run_id, store.server.url, model.ledger)
    client = MlflowClient(store.server.url)
    rid = mlflow_run_id(logger.run_dir)
    run = client.get_run(rid)
    assert run.info.status == "FINISHED"
    assert run.data.params["extra/seed"] == "7" and run.data.tags["phase"] == "mid"
    assert [a.path for a in client.list_artifacts(rid, "notes")] == ["notes/mid.txt"]
    # one MLflow run for this dualtrack run, despite lost answers to runs/create
    found = client.search_runs([run.info.experiment_id], f"tags.`dualtrack.run_id` = '{logger.run_id}'")
    assert len(found) == 1
