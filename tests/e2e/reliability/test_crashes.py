"""The training process dies: SIGKILL, an exception, Ctrl-C, SIGTERM; a backend fails during finalize.

What a user checks afterwards: the original error, the run's status in both backends, and every point
logged, exactly once, in the journal and in both backends (after ``dualtrack sync`` where needed).

Lightning turns ``KeyboardInterrupt`` into ``SystemExit(1)`` after finalizing the loggers (its
``_call_and_handle_interrupt``), and a SIGTERM into ``SIGTERMException`` (a ``SystemExit``) at the
end of the current batch; the logger records Ctrl-C as ``aborted`` (MLflow KILLED, W&B exit code
255) and an exception or SIGTERM as ``failed`` (MLflow FAILED, W&B exit code 1).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger
from mlflow.tracking import MlflowClient

from lightning_dualtrack.cli import run_status
from lightning_dualtrack.sinks.wandb.runfile import read_runs
from tests.e2e.reliability.faults import HANG, PASS, FaultProxy
from tests.e2e.reliability.ledger import (
    Every,
    LedgerModel,
    TimedLogger,
    assert_delivered,
    assert_each_once,
    assert_exactly_once,
    journal_keymap,
    journal_points,
    journal_status,
    mlflow_points,
    mlflow_run_id,
    norm,
    read_ledger_file,
    to_mlflow_keys,
    wandb_points,
)
from tests.helpers import loaders, trainer

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

SCRIPT = Path(__file__).with_name("train_script.py")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def lock_free(run_dir: Path) -> bool:
    """Whether no process holds the run's delivery lock (``dualtrack sync`` would refuse to start)."""
    import fcntl

    fd = os.open(run_dir / "state" / "delivery.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def wandb_acked(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "state" / "wandb.json").read_text()).get("offset", 0)
    except (FileNotFoundError, ValueError):
        return 0


def delivery_pid(run_dir: Path) -> int | None:
    try:
        return int((run_dir / "state" / "delivery.lock").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def start_script(tmp_path: Path, env: dict[str, str], tracking_uri: str, *extra: str) -> tuple[subprocess.Popen, Path, Path]:
    ledger, info = tmp_path / "ledger.jsonl", tmp_path / "info.json"
    log = open(tmp_path / "script.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--save-dir", str(tmp_path / "runs"), "--tracking-uri", tracking_uri,
         "--ledger", str(ledger), "--info", str(info), *extra],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
    )
    log.close()
    return proc, ledger, info


def steps_logged(ledger: Path) -> int:
    return len({p[1] for _, p in read_ledger_file(ledger)})


def sync(run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lightning_dualtrack.cli", "sync", str(run_dir), "--timeout", "60"],
        capture_output=True, text=True, timeout=150,
    )


@pytest.mark.timeout(240)
@pytest.mark.parametrize("killed", ["trainer", "trainer-and-delivery"])
def test_sigkill_mid_run_then_sync_delivers_every_point(killed, mlflow_server, tmp_path, subprocess_env) -> None:
    flush_interval = 0.5
    proc, ledger, info = start_script(tmp_path, subprocess_env, mlflow_server.url, "--flush-interval", str(flush_interval))
    try:
        wait_for(lambda: info.exists() and steps_logged(ledger) >= 40, 90, "40 training steps")
        run = json.loads(info.read_text())
        run_dir = Path(run["run_dir"])
        delivery = delivery_pid(run_dir)
        if killed == "trainer-and-delivery":
            wait_for(lambda: wandb_acked(run_dir), 60, "W&B to receive rows")
            # the whole machine goes down, say, while W&B's writer (wandb-core, a child of the delivery process)
            # still holds rows delivery has handed over and acknowledged: freeze the writer first
            import psutil

            writers = psutil.Process(delivery).children(recursive=True)
            for w in writers:
                w.suspend()
            time.sleep(1.5)  # delivery hands over and acknowledges more rows meanwhile
        killed_at = time.time()
        proc.kill()
        if killed == "trainer-and-delivery":
            os.kill(delivery, signal.SIGKILL)
            for w in writers:
                w.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    # delivery outlives its parent and finishes by itself; wait for it so that sync does not race it
    wait_for(lambda: lock_free(run_dir), 90, "the orphaned delivery process to finish")
    with open(run_dir / "journal.jsonl", "ab") as fh:  # a write torn by the crash
        fh.write(b'{"k":"metrics","t":1,"s":123456,"v":{"m0":0.')

    result = sync(run_dir)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

    # every point logged more than flush_interval before the kill is in both backends, exactly once
    old = Counter((k, s, norm(v)) for t, (k, s, v) in read_ledger_file(ledger) if t < killed_at - flush_interval)
    assert sum(old.values()) >= 4 * 10
    rid = mlflow_run_id(run_dir)
    assert_each_once(to_mlflow_keys(old, journal_keymap(run_dir)), mlflow_points(mlflow_server.url, rid), "MLflow vs ledger")
    assert_each_once(old, wandb_points(run_dir, run["run_id"]), "W&B vs ledger")
    # and everything the journal holds (the torn line excepted), exactly once
    assert ("m0", 123456, 0.0) not in journal_points(run_dir)
    assert_delivered(run_dir, run["run_id"], mlflow_server.url)
    assert MlflowClient(mlflow_server.url).get_run(rid).info.status == "FAILED"  # crashed: not FINISHED
    assert read_runs(run_dir, run["run_id"]).exit_code not in (0, None)
    assert journal_status(run_dir) is None  # no end record: it crashed
    again = sync(run_dir)
    assert again.returncode == 0 and "up to date" in again.stderr


# -- errors that Lightning sees -------------------------------------------------------------------
class Boom(LedgerModel):
    def __init__(self, at: int, error: BaseException, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self.at, self.error = at, error

    def training_step(self, batch, batch_idx):  # noqa: ANN001
        if self.global_step == self.at:
            raise self.error
        return super().training_step(batch, batch_idx)


def _logger(tmp_path, uri, **kwargs) -> TimedLogger:
    return TimedLogger(experiment_name="crashes", tracking_uri=uri, wandb_mode="offline", save_dir=tmp_path / "runs", flush_interval=0.2, **kwargs)


def _check_ended(logger: TimedLogger, model: LedgerModel, uri: str, journal: str, mlflow: str, wandb_exit: int) -> None:
    assert journal_status(logger.run_dir) == journal
    assert_delivered(logger.run_dir, logger.run_id, uri, model.ledger)
    assert MlflowClient(uri).get_run(mlflow_run_id(logger.run_dir)).info.status == mlflow
    assert read_runs(logger.run_dir, logger.run_id).exit_code == wandb_exit


@pytest.mark.timeout(120)
def test_exception_in_training_step_propagates_unchanged_and_marks_both_runs_failed(mlflow_server, tmp_path) -> None:
    error = RuntimeError("boom at step 12")
    model = Boom(12, error)
    logger = _logger(tmp_path, mlflow_server.url)
    with pytest.raises(RuntimeError) as raised:
        trainer(logger, max_steps=30).fit(model, loaders()[0])
    assert raised.value is error
    assert {s for _, s, _ in model.ledger.points} == set(range(12))
    _check_ended(logger, model, mlflow_server.url, "failed", "FAILED", 1)


@pytest.mark.timeout(120)
def test_keyboard_interrupt_becomes_systemexit_1_and_marks_both_runs_killed(mlflow_server, tmp_path) -> None:
    model = Boom(12, KeyboardInterrupt())
    logger = _logger(tmp_path, mlflow_server.url)
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as raised:  # Lightning: finalize the loggers, then sys.exit(1)
            trainer(logger, max_steps=30).fit(model, loaders()[0])
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores further Ctrl-C from then on
    assert raised.value.code == 1
    _check_ended(logger, model, mlflow_server.url, "aborted", "KILLED", 255)


@pytest.mark.timeout(180)
def test_sigterm_ends_both_runs_failed_with_everything_delivered(mlflow_server, tmp_path, subprocess_env) -> None:
    proc, ledger, info = start_script(tmp_path, subprocess_env, mlflow_server.url, "--flush-interval", "0.2")
    try:
        wait_for(lambda: info.exists() and steps_logged(ledger) >= 20, 90, "20 training steps")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    output = (tmp_path / "script.log").read_text()
    assert "Received SIGTERM" in output and "TRAINING DONE" not in output
    assert code == 0  # SIGTERMException is a SystemExit without a code: the exit status does not say it
    run = json.loads(info.read_text())
    run_dir = Path(run["run_dir"])
    assert journal_status(run_dir) == "failed"
    points = Counter((k, s, norm(v)) for _, (k, s, v) in read_ledger_file(ledger))
    assert_exactly_once(points, journal_points(run_dir), "journal vs ledger")  # nothing logged was lost
    assert_delivered(run_dir, run["run_id"], mlflow_server.url)
    assert MlflowClient(mlflow_server.url).get_run(mlflow_run_id(run_dir)).info.status == "FAILED"
    assert read_runs(run_dir, run["run_id"]).exit_code == 1


@pytest.mark.timeout(180)
def test_mlflow_hanging_during_finalize_does_not_stop_wandb_or_other_loggers(mlflow_server, tmp_path) -> None:
    finalize_timeout = 5.0
    model = LedgerModel()
    csv = CSVLogger(tmp_path / "csv")
    with FaultProxy(mlflow_server.url) as proxy:

        def black_hole_at_the_end(t) -> None:  # noqa: ANN001
            if t.global_step == 20:
                time.sleep(1.0)  # let delivery catch up, then MLflow stops answering
                proxy.mode = HANG

        logger = _logger(tmp_path, proxy.url, finalize_timeout=finalize_timeout)
        trainer([logger, csv], max_steps=20, callbacks=[Every(black_hole_at_the_end)]).fit(model, loaders()[0])
        assert max(logger.finalize_seconds) < finalize_timeout + 2.0
        report = logger.last_report
        assert report["wandb"].get("closed") and not report["mlflow"].get("closed")
        assert (Path(csv.log_dir) / "metrics.csv").exists()  # the next logger was finalized too
        assert run_status(logger.run_dir)["backends"]["mlflow"]["pending"] > 0

        proxy.mode = PASS
        # the delivery service still holds the run (this process lives): sync asks it to let go, since the run's
        # session has ended; the held W&B run is then ended (exit code 0) and sync delivers MLflow's tail
        result = sync(logger.run_dir)
        assert result.returncode == 0, result.stderr[-3000:]
        assert read_runs(logger.run_dir, logger.run_id).exit_code == 0
    _check_ended(logger, model, mlflow_server.url, "success", "FINISHED", 0)
