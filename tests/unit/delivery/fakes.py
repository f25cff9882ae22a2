"""A fake sink for the delivery core's unit tests: a real :class:`Sink` subclass (so that a misspelt hook
fails), storing records in memory, with the failures a test scripts."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning_dualtrack.core.io import RUN_FILE, write_json_atomic
from lightning_dualtrack.core.journal import Entry, JournalWriter, now_ms
from lightning_dualtrack.delivery.links import Links
from lightning_dualtrack.delivery.worker import SinkWorker
from lightning_dualtrack.sinks.base import RunContext, Sink


class FakeSink(Sink):
    name = "fake"

    def __init__(self, ctx: RunContext, *, per_request: int = 1, fail: Callable[[list[Entry], int], Exception | None] | None = None,
                 appends: bool = False, durable: int | None = None, on_request: Callable[[int], None] | None = None,
                 holds_open: bool = False) -> None:
        super().__init__(ctx)
        self.per_request = per_request
        self.fail = fail or (lambda chunk, n: None)
        self.appends = appends
        self.durable = durable
        self.on_request = on_request
        self.rows: list[dict[str, Any]] = []  # every record stored, in order (duplicates kept)
        self.closed_with: list[str | None] = []
        self.calls = 0
        self.holds_open = holds_open
        self.held_at: list[int] = []  # journal offsets a session's end was made durable up to (hold)
        self.opens = 0

    def open(self, state: dict[str, Any]) -> dict[str, Any]:
        self.opens += 1
        return {"run_id": "fake-run"}

    def hold(self, offset: int, timeout: float = 10.0) -> None:
        self.held_at.append(offset)

    def deliver(self, entries: list[Entry]) -> None:
        self.progress = 0
        for i in range(0, len(entries), self.per_request):
            chunk = entries[i : i + self.per_request]
            self.calls += 1
            self._requests += 1
            err = self.fail(chunk, self.calls)
            if err is not None:
                raise err
            for e in chunk:
                if e.record.get("k") == "metrics":
                    _ = e.record["v"]  # a record missing its values cannot be converted (KeyError)
            self.rows.extend(e.record for e in chunk)
            self.stored(i + len(chunk))
            if self.on_request is not None:
                self.on_request(self.calls)

    def close(self, status: str | None) -> None:
        self.closed_with.append(status)

    def durable_offset(self) -> int | None:
        return self.durable


def make_run(tmp_path: Path, records: list[dict[str, Any]], *, end: bool = True) -> Path:
    run_dir = tmp_path / "run1"
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / RUN_FILE, {"run_id": "run1", "experiment_name": "x", "fake": {"enabled": True}})
    journal = JournalWriter(run_dir)
    journal.append({"k": "start", "t": now_ms(), "run_id": "run1"})
    for rec in records:
        journal.append(rec)
    if end:
        journal.append({"k": "end", "t": now_ms(), "status": "success"})
    journal.close()
    return run_dir


def metrics(n: int, bad: set[int] = frozenset()) -> list[dict[str, Any]]:
    return [{"k": "metrics", "t": 1000 + i, "s": i, "v": {"loss": ("bad" if i in bad else float(i))}} for i in range(n)]


def run_worker(run_dir: Path, sink: FakeSink, *, stop: threading.Event | None = None, **kwargs: Any) -> tuple[SinkWorker, list[str]]:
    messages: list[str] = []
    ctx = RunContext.load(run_dir)
    worker = SinkWorker(ctx, lambda c: sink, "fake", Links(), stop or threading.Event(), follow=False,
                        poll_interval=0.01, log=messages.append, **kwargs)
    worker.run()  # in this thread: the test sees the end state
    return worker, messages


def stored_steps(sink: FakeSink) -> list[int]:
    return [r["s"] for r in sink.rows if r.get("k") == "metrics"]
