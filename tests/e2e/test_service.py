"""The logger's side: a supervised shipper child, and a final report that is true."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from lightning_dualtrack.delivery.process import ShipperProcess

from lightning_dualtrack.core.journal import JournalReader
from lightning_dualtrack.delivery.report import final_report
from lightning_dualtrack.delivery.state import append_rejected, save_state
from tests.unit.delivery.fakes import make_run, metrics

REPO = Path(__file__).resolve().parents[2]


def _unreachable_run(tmp_path: Path) -> Path:
    """A run whose only backend (MLflow) refuses connections: its shipper keeps retrying."""
    from lightning_dualtrack.core.io import write_json_atomic

    run_dir = make_run(tmp_path, metrics(5), end=False)
    write_json_atomic(run_dir / "run.json", {"run_id": "run1", "experiment_name": "x", "flush_interval": 0.2,
                                              "mlflow": {"enabled": True, "tracking_uri": "http://127.0.0.1:9"}})
    return run_dir


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["MLFLOW_TRACKING_URI"] = "http://127.0.0.1:9"
    return env


def _wait_for(cond, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_a_killed_shipper_is_noticed_by_the_cheap_check_restarted_and_counted(tmp_path: Path) -> None:
    run_dir = _unreachable_run(tmp_path)
    warnings: list[str] = []
    shipper = ShipperProcess(run_dir, _env(), ["mlflow"], warn=warnings.append)
    shipper.start()
    try:
        first = shipper.pid
        _wait_for(lambda: (run_dir / "state" / "mlflow.json").exists(), 20)
        t0 = time.perf_counter()
        for _ in range(1000):
            shipper.check()  # the log path: far below a millisecond per call
        assert (time.perf_counter() - t0) / 1000 < 1e-4
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while shipper.restarts == 0 and time.monotonic() < deadline:
            shipper.check()
            time.sleep(0.05)
        assert shipper.restarts == 1 and shipper.pid != first
        assert len(warnings) == 1 and "restarted" in warnings[0]
        assert shipper.proc.poll() is None
    finally:
        states = shipper.finish(timeout=2.0)
    assert set(states) == {"mlflow"} and not states["mlflow"].get("closed")
    report = final_report(run_dir, states, finalize_timeout=2.0, restarts=shipper.restarts)
    assert "restarted 1 time(s)" in report
    assert f"dualtrack sync {run_dir}" in report


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_while_finalize_waits_prints_the_report_and_re_raises(tmp_path: Path, capsys) -> None:
    run_dir = _unreachable_run(tmp_path)
    shipper = ShipperProcess(run_dir, _env(), ["mlflow"], warn=lambda m: None)
    shipper.start()
    child = shipper.proc
    threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        shipper.finish(timeout=60.0)
    assert time.monotonic() - t0 < 15  # not the 60 s of finalize_timeout
    assert child.poll() is not None  # handed over: the child stopped (its acks are on disk)
    err = capsys.readouterr().err
    assert "PENDING" in err and f"dualtrack sync {run_dir}" in err


def test_final_report_says_what_is_pending_rejected_and_why_and_the_command(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, metrics(10))
    entries, _ = JournalReader(run_dir).read(0)
    save_state(run_dir, "mlflow", {"offset": entries[4].offset, "identity": {"url": "http://srv/#/runs/1"},
                                   "blocked": {"reason": "The run 1 must be in the 'active' state", "action": "restore the run"}})
    save_state(run_dir, "wandb", {"offset": entries[-1].offset, "closed": True, "identity": {"dir": "/w/offline-run-x"}})
    append_rejected(run_dir, "wandb", {"offset": entries[3].offset, "kind": "table", "key": "preds",
                                       "reason": "TypeError: Data row contained incompatible types", "error": "conversion",
                                       "retry_default": False})
    text = final_report(run_dir, {"mlflow": {**__import__("json").loads((run_dir / "state" / "mlflow.json").read_text())},
                                  "wandb": {"offset": entries[-1].offset, "closed": True, "identity": {"dir": "/w/offline-run-x"}}},
                        finalize_timeout=30, restarts=0)
    assert "mlflow: 7 record(s) PENDING" in text  # 12 records, 5 acknowledged
    assert "BLOCKED" in text and "restore the run" in text
    assert "wandb: delivered" in text
    assert "wandb: 1 record(s) REJECTED and set aside: 1 x TypeError: Data row contained incompatible types" in text
    assert f"dualtrack sync {run_dir} --retry-rejected" in text
    assert f"Deliver it with:  dualtrack sync {run_dir}" in text


def test_sync_takes_over_the_lock_of_an_orphaned_shipper_but_not_of_a_live_one(tmp_path: Path) -> None:
    import subprocess

    from lightning_dualtrack.delivery.rundelivery import ShipperBusy, acquire_lock
    from lightning_dualtrack.delivery.state import lock_is_held

    run_dir = make_run(tmp_path, metrics(1))
    (run_dir / "state").mkdir(exist_ok=True)
    hold = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('held', flush=True); time.sleep(60)")

    def holder(parent: int) -> subprocess.Popen:
        # looks like `python -m lightning_dualtrack.shipper RUN --parent-pid N` to the take-over check
        proc = subprocess.Popen([sys.executable, "-c", hold, str(run_dir / "state" / "shipper.lock"),
                                 "lightning_dualtrack.shipper", "--parent-pid", str(parent)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        return proc

    live = holder(os.getpid())  # its parent (this process) is alive: never taken over
    try:
        with pytest.raises(ShipperBusy):
            acquire_lock(run_dir, take_over_stale=True)
    finally:
        live.kill()
        live.wait()
    orphan = holder(2**22 + 12345)  # a parent pid that does not exist
    try:
        fd = acquire_lock(run_dir, take_over_stale=True)
        assert orphan.wait(timeout=10) is not None  # stopped (SIGTERM)
        assert lock_is_held(run_dir)
        os.close(fd)
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
