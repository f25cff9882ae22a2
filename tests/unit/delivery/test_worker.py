"""The delivery rules, one test each, with a fake sink: nothing lost, nothing twice, the user told."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from lightning_dualtrack.core.errors import BlockedError, PermanentError, TooLargeError, TransientError
from lightning_dualtrack.core.journal import JournalReader
from lightning_dualtrack.delivery.state import load_rejected, load_state
from tests.unit.delivery.fakes import FakeSink, make_run, metrics, run_worker, stored_steps


def _ctx_sink(run_dir: Path, **kwargs) -> FakeSink:
    from lightning_dualtrack.sinks.base import RunContext

    return FakeSink(RunContext.load(run_dir), **kwargs)


def test_everything_is_delivered_once_and_the_run_closed(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, metrics(50))
    sink = _ctx_sink(run_dir, per_request=7)
    worker, _ = run_worker(run_dir, sink)
    assert stored_steps(sink) == list(range(50))
    assert sink.closed_with == ["success"]
    state = load_state(run_dir, "fake")
    assert state["closed"] and state["offset"] == JournalReader(run_dir).size()
    assert load_rejected(run_dir, "fake") == []


def test_transient_failures_are_retried_without_duplicates(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, metrics(30))
    failures = []

    def every_third(chunk, n):
        if n % 3 == 0:
            failures.append(n)
            return TransientError("503")
        return None

    sink = _ctx_sink(run_dir, per_request=4, fail=every_third)
    worker, _ = run_worker(run_dir, sink)
    assert stored_steps(sink) == list(range(30))  # each once: acked requests are not resent
    assert len(failures) >= 3 and load_state(run_dir, "fake")["retries"] == len(failures)


def test_too_large_batches_are_split_and_nothing_is_set_aside(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, metrics(40))
    # the "backend" takes at most 3 records per request, and the sink sends everything in one request
    sink = _ctx_sink(run_dir, per_request=10_000, fail=lambda chunk, n: TooLargeError("HTTP 413") if len(chunk) > 3 else None)
    worker, _ = run_worker(run_dir, sink)
    assert stored_steps(sink) == list(range(40))
    assert load_rejected(run_dir, "fake") == []


def test_a_rejected_record_is_isolated_set_aside_with_its_reason_and_the_rest_delivered(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, metrics(64, bad={17}))

    def reject_bad(chunk, n):
        if any(e.record.get("v", {}).get("loss") == "bad" for e in chunk):
            return PermanentError("INVALID_PARAMETER_VALUE: Got invalid value bad for metric 'loss'", code="INVALID_PARAMETER_VALUE")
        return None

    sink = _ctx_sink(run_dir, per_request=10_000, fail=reject_bad)
    worker, messages = run_worker(run_dir, sink)
    assert stored_steps(sink) == [s for s in range(64) if s != 17]
    rejected = load_rejected(run_dir, "fake")
    assert [(r["key"], r["code"], r["retry_default"]) for r in rejected] == [("loss", "INVALID_PARAMETER_VALUE", False)]
    assert "invalid value bad" in rejected[0]["reason"]
    assert sum("was set aside" in m for m in messages) == 1
    assert load_state(run_dir, "fake")["closed"]


def test_a_record_the_sink_cannot_convert_never_blocks_the_others(tmp_path: Path) -> None:
    records = metrics(10)
    del records[4]["v"]  # a record missing a field: KeyError('v') in the sink
    run_dir = make_run(tmp_path, records)
    sink = _ctx_sink(run_dir, per_request=3)
    run_worker(run_dir, sink)
    assert stored_steps(sink) == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    (item,) = load_rejected(run_dir, "fake")
    assert item["error"] == "conversion" and "KeyError" in item["reason"]


def test_ack_moves_after_each_request_so_a_stop_loses_no_progress_and_resume_continues_there(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, metrics(100))
    stop = threading.Event()
    sink = _ctx_sink(run_dir, per_request=10, on_request=lambda n: stop.set() if n == 4 else None,
                     fail=lambda chunk, n: TransientError("hang") if n > 4 else None)
    run_worker(run_dir, sink, stop=stop)
    assert stored_steps(sink) == list(range(39))  # 4 requests of 10 records: the start record and 39 metrics
    entries, _ = JournalReader(run_dir).read(0)
    assert load_state(run_dir, "fake")["offset"] == entries[39].offset
    resumed = _ctx_sink(run_dir, per_request=10)
    run_worker(run_dir, resumed)
    assert stored_steps(resumed) == list(range(39, 100))  # nothing acknowledged is sent again


def test_blocked_backend_keeps_records_pending_says_once_what_to_do_then_delivers(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, metrics(20))
    sink = _ctx_sink(run_dir, per_request=5, fail=lambda chunk, n: BlockedError(
        "The run x must be in the 'active' state", action="restore the MLflow run") if 2 <= n <= 6 else None)
    worker, messages = run_worker(run_dir, sink)
    assert stored_steps(sink) == list(range(20))
    blocked = [m for m in messages if "BLOCKED" in m]
    assert len(blocked) == 1 and "restore the MLflow run" in blocked[0]
    assert load_rejected(run_dir, "fake") == []
    assert load_state(run_dir, "fake").get("blocked") is None


def test_appending_sink_resumes_from_what_its_files_hold_in_both_directions(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, metrics(30))
    entries, _ = JournalReader(run_dir).read(0)
    # state lost (offset 0) but the backend holds the first 12 records: skip them
    sink = _ctx_sink(run_dir, per_request=5, appends=True, durable=entries[12].offset)
    run_worker(run_dir, sink)
    assert stored_steps(sink) == list(range(12, 30))

    run_dir2 = make_run(tmp_path / "b", metrics(30), end=False)
    from lightning_dualtrack.delivery.state import save_state

    entries, _ = JournalReader(run_dir2).read(0)
    save_state(run_dir2, "fake", {"offset": entries[20].offset})  # acked 20, but the backend stored only 8
    sink = _ctx_sink(run_dir2, per_request=5, appends=True, durable=entries[8].offset)
    run_worker(run_dir2, sink)
    assert stored_steps(sink) == list(range(8, 30))


def test_an_orphaned_worker_gives_up_after_its_timeout_and_leaves_the_rest_pending(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, metrics(10), end=False)
    sink = _ctx_sink(run_dir, fail=lambda chunk, n: TransientError("server hangs"))
    orphaned = threading.Event()
    orphaned.set()  # the service saw the training process die
    t0 = time.monotonic()
    worker, messages = run_worker(run_dir, sink, orphaned=orphaned, orphan_timeout=0.5)
    assert time.monotonic() - t0 < 10
    assert worker.gave_up and "gave up" in worker.gave_up
    assert any("dualtrack sync" in m for m in messages)
    state = load_state(run_dir, "fake")
    assert not state.get("closed") and state.get("gave_up")


def test_unparseable_journal_lines_are_counted_reported_and_skipped(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, metrics(5))
    with open(run_dir / "journal.jsonl", "ab") as fh:
        fh.write(b"{not json\n[1, 2]\n")
    from lightning_dualtrack.core.journal import JournalWriter

    journal = JournalWriter(run_dir)
    journal.append({"k": "metrics", "t": 1, "s": 5, "v": {"loss": 5.0}})
    journal.close()
    sink = _ctx_sink(run_dir, per_request=100)
    worker, messages = run_worker(run_dir, sink)
    assert stored_steps(sink) == [0, 1, 2, 3, 4, 5]
    assert load_state(run_dir, "fake")["unparseable_lines"] == 2
    assert any("2 journal line(s) are not records" in m for m in messages)


def test_sync_retries_set_aside_records_whose_reason_may_have_passed(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, metrics(10))
    down = {"on": True}
    sink = _ctx_sink(run_dir, per_request=1, fail=lambda chunk, n: PermanentError("HTTP 404 (an old verdict)")
                     if down["on"] and chunk[0].record.get("s") == 3 else None)
    run_worker(run_dir, sink)
    assert [r["s"] for r in sink.rows if r.get("k") == "metrics"] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert len(load_rejected(run_dir, "fake")) == 1
    down["on"] = False
    again = _ctx_sink(run_dir, per_request=1)
    run_worker(run_dir, again, retry_rejected=True)
    assert stored_steps(again) == [3]  # only the set-aside record; nothing delivered is sent again
    assert load_rejected(run_dir, "fake") == []
    assert load_state(run_dir, "fake")["failed"] == 0


def test_a_timeout_stops_a_long_backlog_between_requests_with_progress_kept(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, metrics(2000))
    sink = _ctx_sink(run_dir, per_request=10, on_request=lambda n: time.sleep(0.01))
    t0 = time.monotonic()
    worker, _ = run_worker(run_dir, sink, give_up_after=0.3)
    assert time.monotonic() - t0 < 3  # not the ~2 s x load the whole backlog takes
    assert 0 < len(sink.rows) < 2000 and worker.gave_up
    entries, _ = JournalReader(run_dir).read(0)
    assert load_state(run_dir, "fake")["offset"] == entries[len(sink.rows) - 1].offset  # every stored request acked
    resumed = _ctx_sink(run_dir, per_request=500)
    run_worker(run_dir, resumed)
    assert stored_steps(sink) + stored_steps(resumed) == list(range(2000))
