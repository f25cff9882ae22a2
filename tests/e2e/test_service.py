"""The training process's delivery service: one process for every run, supervised, handing a run over to
``dualtrack sync`` when asked, and a final report that is true."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lightning_dualtrack.core.io import write_json_atomic
from lightning_dualtrack.core.journal import JournalReader, JournalWriter, now_ms
from lightning_dualtrack.delivery import client
from lightning_dualtrack.delivery.report import final_report
from lightning_dualtrack.delivery.rundelivery import DeliveryBusy, acquire_lock, deliver_run
from lightning_dualtrack.delivery.state import append_rejected, lock_holder, lock_is_held, save_state
from tests.unit.delivery.fakes import make_run, metrics

pytestmark = [pytest.mark.slow, pytest.mark.fresh_service]  # each test is a training process's life


def _unreachable_run(tmp_path: Path, *, end: bool = False) -> Path:
    """A run whose only backend (MLflow) refuses connections: delivery keeps retrying."""
    run_dir = make_run(tmp_path, metrics(5), end=end)
    write_json_atomic(run_dir / "run.json", {"run_id": "run1", "experiment_name": "x", "flush_interval": 0.2,
                                              "mlflow": {"enabled": True, "tracking_uri": "http://127.0.0.1:9"}})
    return run_dir


def _wait_for(cond, timeout: float, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def service():
    warnings: list[str] = []
    svc = client.DeliveryService(warnings.append)
    svc.start()
    svc.warnings = warnings
    yield svc
    if svc.proc is not None and svc.proc.poll() is None:
        svc.proc.kill()
        svc.proc.wait()


def test_a_killed_service_is_noticed_by_the_cheap_check_restarted_and_told_its_runs_again(tmp_path, service) -> None:
    run_dir = _unreachable_run(tmp_path)
    service.follow(run_dir)
    _wait_for(lambda: lock_holder(run_dir) == service.pid, 30, "the service to take the run")
    first = service.pid
    service.proc.kill()
    service.proc.wait()
    t0 = time.perf_counter()
    for _ in range(1000):
        service.check()  # the log path: far below a millisecond per call
    assert (time.perf_counter() - t0) / 1000 < 1e-3
    deadline = time.monotonic() + 5
    while service.restarts == 0 and time.monotonic() < deadline:
        service.check()
        time.sleep(0.05)
    assert service.restarts == 1 and service.pid != first and service.alive()
    assert len(service.warnings) == 1 and "restarted" in service.warnings[0]
    _wait_for(lambda: lock_holder(run_dir) == service.pid and lock_is_held(run_dir), 30, "the new service to follow the run")


def test_ctrl_c_while_finalize_waits_prints_the_report_and_re_raises(tmp_path, service, capsys) -> None:
    run_dir = _unreachable_run(tmp_path)
    service.follow(run_dir)
    threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        service.wait(run_dir, ["mlflow"], lambda states: False, timeout=60.0)
    assert time.monotonic() - t0 < 15  # not the 60 s of finalize_timeout
    assert service.alive()  # delivery goes on for the process's other runs
    err = capsys.readouterr().err
    assert "PENDING" in err and f"dualtrack sync {run_dir}" in err


def test_sync_takes_a_run_whose_session_ended_from_a_live_service_but_never_one_still_training(tmp_path, service) -> None:
    training = _unreachable_run(tmp_path / "a", end=False)
    ended = _unreachable_run(tmp_path / "b", end=True)
    for run_dir in (training, ended):
        service.follow(run_dir)
        _wait_for(lambda d=run_dir: lock_holder(d) == service.pid, 30, "the service to take the run")
    with pytest.raises(DeliveryBusy, match="running training process"):
        deliver_run(training, lock_wait=2.0, take_over_stale=True, give_up_after=1.0, log=lambda m: None)
    assert lock_holder(training) == service.pid and service.alive()
    t0 = time.monotonic()
    states = deliver_run(ended, lock_wait=30.0, take_over_stale=True, give_up_after=1.0, log=lambda m: None)
    assert time.monotonic() - t0 < 20 and set(states) == {"mlflow"}
    assert not (ended / "state" / "delivery.handover").exists()
    assert "handing the run over" in (ended / "delivery.log").read_text()
    assert service.alive() and lock_holder(training) == service.pid  # the other run stays with the service


def test_sync_takes_over_the_lock_of_a_service_whose_training_process_is_gone(tmp_path) -> None:
    run_dir = make_run(tmp_path, metrics(1))
    (run_dir / "state").mkdir(exist_ok=True)
    hold = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('held', flush=True); time.sleep(60)")

    def holder(parent: int) -> subprocess.Popen:
        # looks like `python -m lightning_dualtrack.delivery --parent-pid N` to the take-over check
        proc = subprocess.Popen([sys.executable, "-c", hold, str(run_dir / "state" / "delivery.lock"),
                                 "lightning_dualtrack.delivery", "--parent-pid", str(parent)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        return proc

    live = holder(os.getpid())  # its parent (this process) is alive: never taken over
    try:
        with pytest.raises(DeliveryBusy):
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


def test_a_sweep_in_one_process_uses_one_service_and_ends_each_dropped_trials_runs(mlflow_server, tmp_path) -> None:
    """Six trials, a fresh logger each, dropped after its fit: one delivery process for all, each trial's W&B run
    finished (its logger is gone) and its MLflow run FINISHED with every step."""
    import psutil
    from mlflow.tracking import MlflowClient

    from lightning_dualtrack import DualTrackLogger
    from tests.helpers import TinyModel, loaders, trainer, wandb_run

    def objective(trial: int) -> tuple[Path, str, int]:  # a study's trial: its objects go when it returns
        logger = DualTrackLogger(experiment_name="sweep", run_name=f"trial-{trial}", tracking_uri=mlflow_server.url,
                                 wandb_mode="offline", save_dir=tmp_path / "runs", log_system_info=False)
        trainer(logger, max_steps=8).fit(TinyModel(lr=0.01 * (trial + 1)), loaders()[0])
        return logger.run_dir, logger.run_id, logger._run.delivery.pid

    runs = []
    services = set()
    for trial in range(6):
        run_dir, run_id, pid = objective(trial)
        runs.append((run_dir, run_id))
        services.add(pid)
        gc.collect()
        children = [p for p in psutil.Process().children()
                    if p.status() != psutil.STATUS_ZOMBIE and "lightning_dualtrack.delivery" in " ".join(p.cmdline())]
        assert len(children) == 1, children
    assert len(services) == 1
    service = client.current()
    _wait_for(lambda: all(wandb_run(d, i).exit_code == 0 for d, i in runs), 60, "every dropped trial's W&B run to end")
    mlflow = MlflowClient(mlflow_server.url)
    for run_dir, _run_id in runs:
        state = (run_dir / "state" / "mlflow.json").read_text()
        rid = __import__("json").loads(state)["identity"]["run_id"]
        assert mlflow.get_run(rid).info.status == "FINISHED"
        assert sorted(m.step for m in mlflow.get_metric_history(rid, "train/loss")) == list(range(8))
    assert service.alive()


def test_a_new_environment_gets_a_new_service_once_no_run_is_followed(mlflow_server, tmp_path, monkeypatch) -> None:
    """A notebook sets a delivery variable (here a ``DUALTRACK_`` one; ``WANDB_DIR``, a proxy) between experiments:
    the next logger's service has it. A service still following a run is kept; a retired one exits by itself."""
    import psutil

    from lightning_dualtrack import DualTrackLogger

    def logger(name: str) -> DualTrackLogger:
        lg = DualTrackLogger(experiment_name="env", run_name=name, tracking_uri=mlflow_server.url, wandb_mode="offline",
                             save_dir=tmp_path / "runs", log_system_info=False)
        lg.log_metrics({"x": 1.0}, step=0)
        return lg

    first = logger("a")
    first.end_run()
    second = logger("b")  # the same environment: the same service
    assert second._run.delivery is first._run.delivery
    monkeypatch.setenv("DUALTRACK_EXAMPLE_SETTING", "1")
    third = logger("c")  # "b" is still followed: kept
    assert third._run.delivery is first._run.delivery
    second.end_run()
    third.end_run()
    old = first._run.delivery
    fourth = logger("d")  # nothing followed any more and the environment changed: a new service, with it
    new = fourth._run.delivery
    assert new is not old and new.pid != old.pid and new.env["DUALTRACK_EXAMPLE_SETTING"] == "1"
    assert psutil.Process(new.pid).environ()["DUALTRACK_EXAMPLE_SETTING"] == "1"
    old.proc.wait(timeout=30)  # the retired one ended what it held and exited
    assert old.proc.returncode == 0
    fourth.end_run()
    for lg in (first, second, third, fourth):
        assert lg._run.last_report and all(s.get("closed") for s in lg._run.last_report.values()), lg.run_id


def test_at_most_four_runs_are_kept_open_between_sessions(mlflow_server, tmp_path) -> None:
    from lightning_dualtrack import DualTrackLogger
    from tests.helpers import wandb_run

    loggers = []
    for i in range(6):  # kept alive: none is dropped, so only the cap ends the oldest
        logger = DualTrackLogger(experiment_name="held", tracking_uri=mlflow_server.url, wandb_mode="offline",
                                 save_dir=tmp_path / "runs", log_system_info=False)
        logger.log_metrics({"x": float(i)}, step=0)
        logger.finalize("success")
        loggers.append(logger)
    _wait_for(lambda: sum(wandb_run(lg.run_dir, lg.run_id).exit_code is not None for lg in loggers) >= 2, 60,
              "the oldest held runs to be ended")
    ended = [wandb_run(lg.run_dir, lg.run_id).exit_code is not None for lg in loggers]
    assert ended[:2] == [True, True] and ended[2:] == [False] * 4  # the newest four stay open


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


def test_a_journal_appended_after_a_follow_is_delivered_in_order(tmp_path, service) -> None:
    """The service follows a journal as it grows: records appended later arrive, in order, once."""
    run_dir = make_run(tmp_path, metrics(3), end=False)
    write_json_atomic(run_dir / "run.json", {"run_id": "run1", "experiment_name": "x", "flush_interval": 0.2,
                                              "tensorboard": {"enabled": True}})
    service.follow(run_dir)
    journal = JournalWriter(run_dir)
    for s in range(3, 10):
        journal.append({"k": "metrics", "t": now_ms(), "s": s, "v": {"loss": float(s)}})
    journal.append({"k": "end", "t": now_ms(), "status": "success"})
    journal.close()
    size = JournalReader(run_dir).size()
    states, reached = service.wait(run_dir, ["tensorboard"], lambda st: all(s.get("closed") and s.get("offset", 0) >= size
                                                                            for s in st.values()), timeout=60)
    assert reached, states
