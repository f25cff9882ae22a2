"""One run across sessions (Lightning's fit, then test, with one logger): the delivery service keeps a
holding sink's backend run open from one session to the next, and ends it exactly once -- when the run is
released (``end_run``, the logger gone, the process exiting) or the training process is gone. A sink that
cannot hold is closed and opened again."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from lightning_dualtrack.core.journal import JournalReader, JournalWriter, now_ms
from lightning_dualtrack.delivery.links import Links
from lightning_dualtrack.delivery.state import load_state
from lightning_dualtrack.delivery.worker import SinkWorker
from lightning_dualtrack.sinks.base import RunContext
from tests.unit.delivery.fakes import FakeSink, make_run, metrics, stored_steps


def _start(run_dir: Path, sink: FakeSink, *, orphaned: threading.Event | None = None):
    release, stop, messages = threading.Event(), threading.Event(), []
    worker = SinkWorker(RunContext.load(run_dir), lambda c: sink, "fake", Links(), stop, follow=True,
                        orphaned=orphaned, poll_interval=0.02, log=messages.append, hold=True, release=release)
    worker.start()
    return worker, release, stop, messages


def _next_session(run_dir: Path, steps: range, status: str = "success") -> int:
    journal = JournalWriter(run_dir)
    journal.append({"k": "start", "t": now_ms(), "run_id": "run1", "resumed": True})
    for s in steps:
        journal.append({"k": "metrics", "t": now_ms(), "s": s, "v": {"loss": float(s)}})
    journal.append({"k": "end", "t": now_ms(), "status": status})
    journal.close()
    return JournalReader(run_dir).size()


def _until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _session_stored(run_dir: Path, offset: int):
    return lambda: (lambda s: s.get("closed") and s.get("offset", 0) >= offset)(load_state(run_dir, "fake"))


def test_a_holding_sink_keeps_one_run_over_sessions_and_ends_it_once_when_released(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, metrics(5))
    first_end = JournalReader(run_dir).size()
    sink = FakeSink(RunContext.load(run_dir), holds_open=True)
    worker, release, _, _ = _start(run_dir, sink)
    _until(_session_stored(run_dir, first_end))
    state = load_state(run_dir, "fake")
    assert state["held"] and sink.held_at == [first_end] and sink.closed_with == []  # stored, run still open
    second_end = _next_session(run_dir, range(5, 9))
    _until(_session_stored(run_dir, second_end))
    assert sink.opens == 1 and sink.held_at == [first_end, second_end] and sink.closed_with == []
    assert stored_steps(sink) == list(range(9))
    release.set()
    worker.join(5)
    assert not worker.is_alive() and worker.released
    assert sink.closed_with == ["success"]  # once, with the last session's status
    state = load_state(run_dir, "fake")
    assert state["closed"] and not state["held"] and state["final_status"] == "success"


def test_a_sink_that_cannot_hold_is_closed_at_each_session_end_and_reopened_for_the_next(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, metrics(3))
    sink = FakeSink(RunContext.load(run_dir))
    worker, release, _, _ = _start(run_dir, sink)
    _until(_session_stored(run_dir, JournalReader(run_dir).size()))
    assert sink.closed_with == ["success"] and sink.opens == 1  # MLflow: FINISHED at each finalize
    _until(_session_stored(run_dir, _next_session(run_dir, range(3, 6), status="failed")))
    worker.join(5)  # a failed session is not held: the worker ends
    assert not worker.is_alive()
    assert sink.opens == 2 and sink.closed_with == ["success", "failed"] and stored_steps(sink) == list(range(6))


def test_a_held_run_stays_open_until_released_and_ends_when_the_training_process_is_gone(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, metrics(3))
    sink = FakeSink(RunContext.load(run_dir), holds_open=True)
    worker, release, _, messages = _start(run_dir, sink)
    try:
        _until(lambda: sink.held_at)
        time.sleep(0.5)  # no grace period: held for as long as the run lasts
        assert worker.is_alive() and sink.closed_with == []
    finally:
        release.set()
    worker.join(5)
    assert not worker.is_alive() and sink.closed_with == ["success"]
    assert any("released" in m for m in messages)

    run_dir2 = make_run(tmp_path / "b", metrics(3))
    sink2 = FakeSink(RunContext.load(run_dir2), holds_open=True)
    orphaned = threading.Event()
    worker2, release2, _, messages2 = _start(run_dir2, sink2, orphaned=orphaned)
    try:
        _until(lambda: sink2.held_at)
        orphaned.set()  # the service saw the training process die
        worker2.join(5)
        assert not worker2.is_alive() and sink2.closed_with == ["success"]
        assert any("the training process is gone" in m for m in messages2)
    finally:
        release2.set()


def test_sync_and_a_failed_session_do_not_hold(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, metrics(3))
    sink = FakeSink(RunContext.load(run_dir), holds_open=True)
    worker = SinkWorker(RunContext.load(run_dir), lambda c: sink, "fake", Links(), threading.Event(), follow=False,
                        poll_interval=0.02, log=lambda m: None, hold=True)
    worker.run()  # dualtrack sync: follow=False
    assert sink.held_at == [] and sink.closed_with == ["success"]
