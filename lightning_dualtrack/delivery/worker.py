"""One thread per sink: read the journal from the sink's ack offset, deliver, acknowledge, isolate, retry.

Rules (each has a unit test in ``tests/unit/delivery/``):

* **Ack as stored.** The sink calls ``stored(n)`` after each request that succeeds; the worker moves the
  ack offset there (``state/<sink>.json``, atomic), so stopping at any moment loses no progress.
* **Classify every failure** (:mod:`~lightning_dualtrack.core.errors`): transient -> retry with
  backoff; too large -> split the batch; rejected -> bisect down to the one record, set it aside with the
  reason, go on; blocked -> keep it pending, say once what to do, retry slowly.
* **Exactly once in an appending backend** (W&B): on open, the sink's ``durable_offset`` (what its files
  provably hold) replaces the ack offset, in both directions.
* **Bounded when orphaned**: once the training process is gone (``orphaned``), a worker gives up retrying
  after ``orphan_timeout`` seconds and leaves the rest to ``dualtrack sync``.
* **One run across sessions** (``hold``, the delivery service's workers): when a session of the run ends
  with success (Lightning finalizes after ``fit``, then tests with the same logger), the worker delivers
  everything, proves it stored (W&B: :meth:`~lightning_dualtrack.sinks.base.Sink.hold`; MLflow: the run is
  closed FINISHED) and waits for the next session instead of ending: a new ``start`` record continues the
  same backend runs (one W&B directory). It ends the backend runs when the run is over (``release``: the
  logger ended the run or is gone, or the service makes room for newer runs) or the training process is gone.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning_dualtrack.core.errors import (
    BlockedError,
    DeliveryError,
    PermanentError,
    TooLargeError,
    reason_may_have_passed,
)
from lightning_dualtrack.core.errors import classify as classify_generic
from lightning_dualtrack.core.io import STATE_DIR
from lightning_dualtrack.core.journal import Entry, JournalReader, now_ms
from lightning_dualtrack.core.summary import RunSummary
from lightning_dualtrack.delivery.links import Links
from lightning_dualtrack.delivery.priority import end_idle_priority, idle_priority_again
from lightning_dualtrack.delivery.state import (
    append_rejected,
    load_rejected,
    load_state,
    save_state,
    write_rejected,
)
from lightning_dualtrack.sinks import sink_class
from lightning_dualtrack.sinks.base import RunContext, Sink

MAX_BATCH = 20_000  # records read at once (acks are per request, not per read)
ORPHAN_TIMEOUT_S = 120.0  # default; ``DUALTRACK_ORPHAN_TIMEOUT``
BLOCKED_RETRY_S = 10.0
HOLD_TIMEOUT_S = 10.0  # how long a session's end waits to see its last W&B row in the run file
_HOLD_POLL_S = 0.1  # while held: how often the journal (its size) is looked at
LINK_WAIT_S = 3.0  # at the end, how long a sink waits for the other's run identity before closing
_ACK_EVERY_S = 0.25  # an appending sink acks at most this often (its durable offset is checked on resume)
SYSTEM_BACKLOG = 720  # system samples kept while the backend cannot take them (an hour at the default 5 s)


class Backoff:
    """Exponential backoff with a cap: 0.5, 1, 2, 4 ... max_s seconds."""

    def __init__(self, first_s: float = 0.5, max_s: float = 15.0) -> None:
        self.first_s, self.max_s, self.n = first_s, max_s, 0

    def next(self) -> float:
        delay = min(self.max_s, self.first_s * (2**self.n))
        self.n += 1
        return delay

    def after(self, err: BaseException) -> float:
        """The next delay, or longer if the server asked for it (``Retry-After``, capped at 60 s)."""
        delay = self.next()
        if isinstance(err, BlockedError):
            delay = min(delay, BLOCKED_RETRY_S) if delay > 1 else delay
        retry_after = getattr(err, "retry_after", None)
        return max(delay, min(float(retry_after), 60.0)) if retry_after else delay


class _Stop(Exception):
    """Raised from the ack callback inside a long ``deliver`` call: told to stop, or out of time."""


def _record_key(record: dict[str, Any]) -> str | None:
    if record.get("key"):
        return str(record["key"])
    if record.get("path"):
        return str(record["path"])
    values = record.get("v")
    if isinstance(values, dict) and values:
        keys = list(values)
        return ", ".join(map(str, keys[:5])) + (f" (+{len(keys) - 5})" if len(keys) > 5 else "")
    return None


class SinkWorker(threading.Thread):
    """Delivers the journal to one sink."""

    def __init__(
        self,
        ctx: RunContext,
        make_sink: Callable[[RunContext], Sink],
        name: str,
        links: Links,
        stop: threading.Event,
        follow: bool,
        *,
        sink_cls: type[Sink] | None = None,
        orphaned: threading.Event | None = None,
        poll_interval: float = 1.0,
        health_interval: float = 15.0,
        give_up_after: float | None = None,
        log: Callable[[str], None] = print,
        retry_rejected: bool | str | None = False,
        orphan_timeout: float | None = None,
        progress: Callable[[str, int, int], None] | None = None,
        hold: bool = False,
        release: threading.Event | None = None,
    ) -> None:
        super().__init__(name=f"dualtrack-{ctx.run_dir.name}-{name}", daemon=True)
        self.hold_between_sessions = hold  # False: end the backend run at each session's end (sync, tests)
        self.release = release or threading.Event()
        self.released = False  # ended after holding the run, with nothing pending
        self.ctx, self.make_sink, self.sink_name = ctx, make_sink, name
        self.sink_cls = sink_cls
        self.links, self.stop, self.follow = links, stop, follow
        self.orphaned = orphaned or threading.Event()  # set by the service when the training process is gone
        self.poll_interval, self.health_interval = poll_interval, health_interval
        self.give_up_after = give_up_after
        self.orphan_timeout = ORPHAN_TIMEOUT_S if orphan_timeout is None else orphan_timeout
        self.retry_rejected = retry_rejected  # True: all; None/False: those whose reason may have passed; "never"
        self.log = log
        self.on_progress = progress
        self.reader = JournalReader(ctx.run_dir)
        self.state = load_state(ctx.run_dir, name)
        self.state.setdefault("offset", 0)
        for key in ("delivered", "failed", "retries", "requests", "bytes"):
            self.state.setdefault(key, 0)
        self.sink: Sink | None = None
        self._linked: dict[str, dict[str, Any]] = dict(self.state.get("linked") or {})
        self._t0 = time.monotonic()
        self._last_health = 0.0
        self._last_save = 0.0
        self._orphaned_at: float | None = None
        self._last_step: int | None = self.state.get("last_step")
        self._said: set[str] = set()
        self._rejected_logged = 0
        self.gave_up: str | None = None
        self.done = False
        # system figures sampled by the run's SystemMonitor, sent between requests (only to sinks that record them)
        self.wants_system = sink_cls is not None and sink_cls.report_system is not Sink.report_system
        self._system: deque[tuple[int, dict[str, float]]] = deque(maxlen=SYSTEM_BACKLOG)
        self.summary = RunSummary()  # what the run is, folded from every record read: the backend's description

    # -- bookkeeping ---------------------------------------------------------------------------
    def save(self, **changes: Any) -> None:
        self.state.update(changes)
        self.state["updated_ms"] = now_ms()
        if self.sink is not None:
            self.state["requests"] = self.state.get("requests_base", 0) + self.sink.requests
            self.state["bytes"] = self.state.get("bytes_base", 0) + self.sink.bytes_uploaded
            self.state["response_ms"] = self.sink.response_times.figures() or self.state.get("response_ms")  # `dualtrack status`
        self.state["unparseable_lines"] = self.reader.corrupt_lines
        save_state(self.ctx.run_dir, self.sink_name, self.state)
        self._last_save = time.monotonic()
        if self.on_progress is not None and self.sink is not None:
            self.on_progress(self.sink_name, self.state["offset"], self.reader.size())

    def _say_once(self, key: str, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self.log(f"[dualtrack] {self.sink_name}: {message}")

    def classify(self, err: BaseException) -> DeliveryError:
        """The sink's own meaning of its backend's exception, else the generic rules."""
        found = self.sink_cls.classify(err) if self.sink_cls is not None else None
        return found if found is not None else classify_generic(err)

    def _parent_gone(self) -> bool:
        if not self.orphaned.is_set():
            return False
        if self._orphaned_at is None:
            self._orphaned_at = time.monotonic()
        return True

    def _out_of_time(self) -> bool:
        if self.give_up_after is not None and time.monotonic() - self._t0 > self.give_up_after:
            self.gave_up = f"gave up after --timeout {self.give_up_after:g} s"
            return True
        return False

    def _should_give_up(self) -> bool:
        """Checked while retrying: out of time, or orphaned for longer than ``orphan_timeout`` (an orphan that
        is delivering successfully goes on: only retrying is bounded)."""
        if self._out_of_time():
            return True
        if self._parent_gone() and time.monotonic() - self._orphaned_at > self.orphan_timeout:
            self.gave_up = f"the training process is gone; gave up retrying after {self.orphan_timeout:g} s"
            return True
        return False

    def _wait(self, seconds: float) -> bool:
        """Sleep; True if we should stop (told to, or out of time)."""
        return self.stop.wait(seconds) or self._should_give_up()

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except Exception as err:  # noqa: BLE001 - a worker must never die silently
            self.log(f"[dualtrack] {self.sink_name}: delivery stopped by an unexpected error: {err!r}")
            self.save(last_error=f"{type(err).__name__}: {err}")
        finally:
            self.links.give_up(self.sink_name)
            if self.gave_up:
                self.log(f"[dualtrack] {self.sink_name}: {self.gave_up}; the rest is safe in the journal: "
                         f"dualtrack sync {self.ctx.run_dir}")
                self.save(gave_up=self.gave_up)
            self.done = True

    def _open(self) -> bool:
        backoff = Backoff()
        while True:
            try:
                self.sink = self.make_sink(self.ctx)
                self.sink.on_note = self._say_once
                identity = self.sink.open(dict(self.state.get("identity") or {}))
                self.state["requests_base"] = self.state.get("requests", 0)
                self.state["bytes_base"] = self.state.get("bytes", 0)
                if self.sink.fallback_reason:
                    self.log(f"[dualtrack] {self.sink_name}: {self.sink.fallback_reason}")
                self.save(identity=identity, open=True, last_error=None, blocked=None, held=False)
                self.links.publish(self.sink_name, self._public(identity))
                self.log(f"[dualtrack] {self.sink_name}: run open after {time.monotonic() - self._t0:.2f} s: {identity.get('url') or identity.get('dir') or identity.get('run_id')}")
                return True
            except ModuleNotFoundError as err:
                self.gave_up = f"cannot open the run: {err}"
                self.save(last_error=str(err), open=False)
                return False
            except Exception as raw:  # noqa: BLE001
                err = self.classify(raw)
                self.sink = None
                self.links.give_up(self.sink_name)  # the other sink must not wait for an identity to link to
                if isinstance(err, PermanentError):  # a rule of the backend's: the same call fails again
                    self.gave_up = f"cannot open the run: {str(err)[:300]} (not retried: fix the run's settings in run.json)"
                    self.save(last_error=str(err)[:500], open=False)
                    return False
                self._note_blocked(err)
                self.state["retries"] = self.state.get("retries", 0) + 1
                self.save(last_error=str(err)[:500], open=False)
                if self._wait(backoff.after(err)):
                    return False

    def _public(self, identity: dict[str, Any]) -> dict[str, Any]:
        """The identity fields this backend lets the others write into their runs (its ``link_fields``)."""
        fields = self.sink_cls.link_fields if self.sink_cls is not None else None
        return dict(identity) if fields is None else {k: v for k, v in identity.items() if k in fields}

    def _note_blocked(self, err: DeliveryError) -> None:
        if isinstance(err, BlockedError):
            self.state["blocked"] = {"reason": str(err)[:300], "action": err.action}
            self._say_once(f"blocked:{err.code}:{str(err)[:60]}",
                           f"BLOCKED: {err}. Everything stays pending in the journal. To deliver it: {err.action}")

    def _resume_from_durable(self) -> None:
        """An appending backend: start from what its files provably hold, whatever the state file says."""
        durable = self.sink.durable_offset()
        offset = self.state["offset"]
        if durable is None or durable == offset or (durable == 0 and self.state.get("closed")):
            return
        if durable < offset:
            self.log(
                f"[dualtrack] {self.sink_name}: the backend holds the journal up to byte {durable} of {offset} "
                "acknowledged (the previous delivery stopped uncleanly): delivering the rest again"
            )
        else:
            self.log(
                f"[dualtrack] {self.sink_name}: the backend already holds the journal up to byte {durable} "
                f"(acknowledged: {offset}; state lost?): not delivering that part again"
            )
        self.save(offset=durable)

    def _restore_prefix(self) -> None:
        """Replay the key map of records that were delivered before this process started."""
        offset = self.state["offset"]
        if offset <= 0:
            return
        entries, _ = self.reader.read(0)
        for e in entries:
            if e.offset <= offset:
                self.summary.add(e.record)
        prefix = [e for e in entries if e.offset <= offset and e.record.get("k") == "keymap"]
        if prefix:
            self.sink.deliver(prefix)

    def _link(self) -> None:
        for other, identity in self.links.others(self.sink_name).items():
            if self._linked.get(other) == identity:
                continue
            try:
                self.sink.link(other, identity)
                self._linked[other] = identity
                self.save(linked=self._linked)
            except Exception as err:  # noqa: BLE001 - retried on the next pass
                self.state["last_error"] = f"cross-link: {err}"[:500]

    def _on_stored(self, entries: list[Entry], n: int) -> None:
        self.state["offset"] = max(self.state["offset"], entries[n - 1].offset)
        if not self.sink.appends or time.monotonic() - self._last_save > _ACK_EVERY_S:
            self._ack()
        if self.stop.is_set() or self._out_of_time():  # between two requests of a long backlog
            self._ack()
            raise _Stop

    def _ack(self) -> None:
        self.save(last_step=self._last_step, last_delivery_ms=now_ms())

    def _deliver(self, entries: list[Entry], set_aside: Callable[[Entry, DeliveryError], None] | None = None) -> bool:
        """Deliver entries (retrying, splitting, isolating); False if told to stop (or out of time) first."""
        set_aside = set_aside or self._set_aside
        backoff = Backoff()
        while entries:
            self.sink.progress = 0
            self.sink.on_stored = lambda n, batch=entries: self._on_stored(batch, n)
            try:
                self.sink.deliver(entries)
                if self.state.get("blocked"):
                    self.log(f"[dualtrack] {self.sink_name}: no longer blocked; delivering")
                    self.state["blocked"] = None
                return True
            except _Stop:
                return False
            except Exception as raw:  # noqa: BLE001 - classified below
                err = self.classify(raw)
            finally:
                self.sink.on_stored = None
            done = self.sink.progress or 0
            if done:
                entries = entries[done:]
                self._ack()
                if not entries:
                    return True
            if isinstance(err, PermanentError) or (isinstance(err, TooLargeError) and len(entries) > 1):
                if len(entries) == 1:
                    set_aside(entries[0], err)
                    return True
                half = len(entries) // 2
                if not self._deliver(entries[:half], set_aside):
                    return False
                entries = entries[half:]
                continue
            self._note_blocked(err)
            self.state["retries"] += 1
            self.save(last_error=str(err)[:500])
            if self._wait(backoff.after(err)):
                return False
        return True

    def _set_aside(self, entry: Entry, err: DeliveryError) -> None:
        rec = entry.record
        item = {
            "offset": entry.offset,
            "kind": rec.get("k"),
            "key": _record_key(rec),
            "reason": str(err)[:500],
            "error": err.kind,
            "code": err.code,
            "retry_default": reason_may_have_passed(err.kind, err.code),
            "t": now_ms(),
        }
        append_rejected(self.ctx.run_dir, self.sink_name, item)
        self.state["failed"] = len(load_rejected(self.ctx.run_dir, self.sink_name))
        self.state["offset"] = max(self.state["offset"], entry.offset)
        self._rejected_logged += 1
        if self._rejected_logged <= 3:
            self.log(f"[dualtrack] {self.sink_name}: a '{rec.get('k')}' record ({item['key']}) was set aside: {err}; "
                     f"the next records are delivered (see `dualtrack status {self.ctx.run_dir}`)")
        elif self._rejected_logged == 4:
            self.log(f"[dualtrack] {self.sink_name}: more records set aside; `dualtrack status {self.ctx.run_dir}` lists them")
        self._ack()

    def _retry_set_aside(self) -> None:
        """``dualtrack sync``: deliver again what was set aside (all with --retry-rejected, else those whose
        reason may have passed); what fails again stays set aside, with the new reason."""
        if self.retry_rejected == "never" or self.follow:
            return
        items = load_rejected(self.ctx.run_dir, self.sink_name)
        legacy = Path(self.ctx.run_dir) / STATE_DIR / f"{self.sink_name}.failed.jsonl"
        if legacy.exists():  # an older version set these aside, often after a transient 404/413: retry them
            import json

            for line in legacy.read_text(encoding="utf-8").splitlines():
                try:
                    old = json.loads(line)
                    items.append({"offset": int(old["offset"]), "kind": old.get("record", {}).get("k"),
                                  "reason": old.get("error"), "error": "legacy", "retry_default": True})
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue
        if not items:
            return
        chosen = [i for i in items if self.retry_rejected is True or i.get("retry_default")]
        keep = [i for i in items if i not in chosen]
        if chosen:
            by_offset = {int(i["offset"]) for i in chosen}
            entries = [e for e in self.reader.read(0)[0] if e.offset in by_offset]
            still: list[dict[str, Any]] = []
            offset_before = self.state["offset"]

            def again(entry: Entry, err: DeliveryError) -> None:
                still.append({"offset": entry.offset, "kind": entry.record.get("k"), "key": _record_key(entry.record),
                              "reason": str(err)[:500], "error": err.kind, "code": err.code,
                              "retry_default": reason_may_have_passed(err.kind, err.code), "t": now_ms()})

            for entry in entries:
                if not self._deliver([entry], again):
                    still.extend(i for i in chosen if int(i["offset"]) >= entry.offset and i not in still)
                    break
            self.state["offset"] = offset_before  # retried records are older than the ack offset
            self.log(f"[dualtrack] {self.sink_name}: retried {len(entries)} set-aside record(s): "
                     f"{len(entries) - len(still)} delivered, {len(still)} still rejected")
            keep.extend(still)
        write_rejected(self.ctx.run_dir, self.sink_name, sorted(keep, key=lambda i: int(i["offset"])))
        legacy.unlink(missing_ok=True)
        self.save(failed=len(keep))

    def _health(self) -> None:
        now = time.monotonic()
        if now - self._last_health < self.health_interval:
            return
        self._last_health = now
        pending = max(0, self.reader.size() - self.state["offset"])
        latency = (now_ms() - self.state["last_record_ms"]) / 1000 if self.state.get("last_record_ms") else 0.0
        # totals over every process that delivered this run: monotonic through fit, validate and test
        health = {
            "pending_bytes": pending,
            "delivery_latency_s": max(0.0, latency),
            "requests": float(self.state.get("requests_base", 0) + self.sink.requests),
            "retries": float(self.state["retries"]),
            "rejected": float(self.state["failed"]),
            "bytes_uploaded": float(self.state.get("bytes_base", 0) + self.sink.bytes_uploaded),
            **self.sink.response_times.figures(),  # response_p50_ms / response_p95_ms over the last requests
        }
        try:
            self.sink.report_health(health, self._last_step)
        except Exception:  # noqa: BLE001 - health is best effort
            pass

    def offer_system(self, t_ms: int, figures: dict[str, float]) -> None:
        """A system sample for this backend (called by the run's SystemMonitor thread; a deque is thread-safe)."""
        if self.wants_system:
            self._system.append((t_ms, figures))

    def _report_system(self) -> None:
        """Send the pending system samples, best effort: they are not journalled, so a backend that cannot take them
        now keeps them here (the latest :data:`SYSTEM_BACKLOG`) and gets them with the next call."""
        if not self._system or self.sink is None:
            return
        batch = []
        while self._system:
            batch.append(self._system.popleft())
        first = int(self.state.get("system_samples") or 0)
        try:
            self.sink.report_system([(first + i, t, figures) for i, (t, figures) in enumerate(batch)])
        except Exception as err:  # noqa: BLE001 - best effort; the journal's records are what must arrive
            room = SYSTEM_BACKLOG - len(self._system)  # samples taken meanwhile come after these
            if room > 0:
                self._system.extendleft(reversed(batch[-room:]))
            self._say_once("system-failed", f"system metrics not recorded for now ({str(err)[:200]}); kept for the next try")
            return
        self.state["system_samples"] = first + len(batch)

    def _up_to_date(self) -> bool:
        """Closed, and nothing new in the journal: a second ``sync`` must not reopen the backend run."""
        if self.follow or not self.state.get("closed"):
            return False
        if any(i.get("retry_default") or self.retry_rejected is True for i in load_rejected(self.ctx.run_dir, self.sink_name)):
            return False
        if (Path(self.ctx.run_dir) / STATE_DIR / f"{self.sink_name}.failed.jsonl").exists():
            return False
        more, _ = self.reader.read(self.state["offset"], max_records=1)
        return not more

    def _run(self) -> None:
        if self._up_to_date():
            self.log(f"[dualtrack] {self.sink_name}: up to date, nothing to deliver")
            return
        if not self._open():
            return
        self._resume_from_durable()
        self._restore_prefix()
        self._link()
        self._retry_set_aside()
        status = self.state.get("last_status", "running")
        while True:
            if self.sink.storage_lost() and not self._start_over():
                return
            entries, _ = self.reader.read(self.state["offset"], max_records=MAX_BATCH)
            self._note_unparseable()
            if entries:
                for e in entries:
                    self.summary.add(e.record)
                    kind = e.record.get("k")
                    if kind == "end":
                        status = e.record.get("status", "success")
                        end_idle_priority()
                    elif kind == "start":
                        status = "running"
                    elif kind == "metrics" and isinstance(e.record.get("s"), int):
                        self._last_step = e.record["s"]
                if not self._deliver(entries):
                    break
                self.state["delivered"] += len(entries)
                self.state["last_record_ms"] = entries[-1].record.get("t")
                self.state["offset"] = max(self.state["offset"], entries[-1].offset)
                self.save(last_status=status, closed=False, last_error=None, last_step=self._last_step)
                self._link()
                self._health()
                self._report_system()
                if len(entries) >= MAX_BATCH:
                    continue
            # caught up with the journal
            self._link()
            finished = status != "running"
            if finished:
                self._last_health = 0.0  # a session's end: its delivery figures as they stand, whatever the interval
            self._health()
            self._report_system()
            if finished or self._parent_gone():
                end_idle_priority()
            if finished or not self.follow or self._parent_gone():
                if not finished and self.follow:
                    # the training process died without finalize: one last look, then mark it crashed
                    time.sleep(0.2)
                    more, _ = self.reader.read(self.state["offset"], max_records=1)
                    if more:
                        continue
                # one bounded wait (cut short by a stop) so that a short run still names the other backend;
                # short, since a peer that is not open by now is failing (a later sync links them)
                self.links.wait_for_others(self.sink_name, LINK_WAIT_S, self.stop)
                self._link()
                if self.sink.storage_lost():  # deleted during this pass: not closed incomplete, delivered again
                    if not self._start_over():
                        return
                    continue
                if finished and self._may_hold(status):
                    if self._between_sessions(status):
                        status = "running"
                        continue  # the next session of the run: same backend runs
                    return
                self._close(status if finished else None)
                return
            if self._wait(self.poll_interval):
                break
        self._abandon()

    def _start_over(self) -> bool:
        """The backend's local files were deleted (the run directory was removed during the run): what they held is
        gone, so the run is delivered again from the start into new files. False if the backend cannot reopen."""
        self.log(f"[dualtrack] {self.sink_name}: its files in the run directory were deleted with what they held; "
                 "delivering the run again from the start into new ones")
        self._abandon()
        self.save(offset=0, delivered=0, closed=False, held=False, identity=None, restarted_from_scratch=True)
        if not self._open():
            return False
        self._link()
        return True

    # -- between two sessions of one run -------------------------------------------------------
    def _may_hold(self, status: str) -> bool:
        return (self.follow and self.hold_between_sessions and status == "success"
                and not self.stop.is_set() and not self.release.is_set() and not self._parent_gone())

    def _between_sessions(self, status: str) -> bool:
        """A session ended with success: store it provably, wait for the next one; True when it begins."""
        end = self.state["offset"]
        held = False
        if self.sink.holds_open:
            try:
                self.sink.hold(end, HOLD_TIMEOUT_S)
                held = True
            except Exception as err:  # noqa: BLE001 - then end the backend run as a plain session end does
                self.log(f"[dualtrack] {self.sink_name}: cannot keep the run open for a next session ({err}); ending it")
        if held:
            self.save(closed=True, held=True, final_status=status, last_status=status)
            self.log(f"[dualtrack] {self.sink_name}: session stored after {time.monotonic() - self._t0:.2f} s; "
                     "the run stays open for a next session of this process")
        else:
            self._close(status)  # MLflow: FINISHED now; RUNNING again when the next session starts
            if not self.state.get("closed"):
                return False
        while True:
            why = self._wait_next_session()
            if why == "more":
                return self._next_session(held)
            if held:
                self.save(held=False, closed=False)  # not closed until the backend run has ended
                self._close(status)  # the W&B run ends now; its directory is complete
                held = False
                if not self.state.get("closed"):
                    return False
            # a session that began while the run was being ended (a race with the grace time) is delivered
            more, _ = self.reader.read(self.state["offset"], max_records=1)
            if more:
                return self._next_session(False)
            self._link()
            self.released = True
            self.log(f"[dualtrack] {self.sink_name}: no next session ({why}); done")
            return False

    def _wait_next_session(self) -> str:
        while True:
            if self.reader.size() > self.state["offset"]:
                return "more"
            self._link()  # an identity published since (a resumed run's new W&B directory)
            if self.stop.is_set():
                return "stopped"
            if self.release.is_set():
                return "released"
            if self._parent_gone():
                return "the training process is gone"
            self.release.wait(_HOLD_POLL_S)

    def _next_session(self, held: bool) -> bool:
        idle_priority_again()  # training again: delivery back on CPU time nobody else wants
        if held:
            self.save(closed=False, held=False, last_status="running")
            return True
        if not self._open():  # MLflow: the same run, RUNNING again; W&B after a finished run: a new directory
            return False
        self._restore_prefix()
        self._link()
        self.save(closed=False, last_status="running")
        return True

    def _note_unparseable(self) -> None:
        n = self.reader.corrupt_lines
        if n and n != self.state.get("unparseable_lines"):
            first = min(self.reader.corrupt_offsets)
            self.log(f"[dualtrack] {self.sink_name}: {n} journal line(s) are not records (the first at byte {first}): "
                     "skipped and counted; the other records are delivered")
            self.save()

    def _others(self) -> list[dict[str, Any]]:
        """The other backends as this run's description names them: title, link, where, how to upload."""
        out = []
        for name, identity in self.links.others(self.sink_name).items():
            try:
                cls = sink_class(name)
            except KeyError:
                continue
            state = {"identity": identity}
            out.append({"title": cls.title, "url": identity.get("url"), "where": cls.where(state),
                        "upload": cls.upload_command(self.ctx.run_dir, state)})
        return out

    def _describe(self) -> None:
        """The run's description, rewritten at each session's end (best effort: the records are what must arrive)."""
        try:
            self.sink.describe(self.summary, self._others())
        except Exception as err:  # noqa: BLE001
            self._say_once("describe", f"the run's description was not written ({str(err)[:200]})")

    def _close(self, status: str | None) -> None:
        self._describe()
        backoff = Backoff()
        while True:
            try:
                self.sink.close(status)
                self.save(closed=True, final_status=status or "crashed", open=False)
                self.log(
                    f"[dualtrack] {self.sink_name}: closed ({status or 'crashed'}) after {time.monotonic() - self._t0:.2f} s, "
                    f"{self.state['delivered']} records delivered, {self.state['failed']} set aside, {self.state['retries']} retries"
                )
                return
            except Exception as raw:  # noqa: BLE001
                err = self.classify(raw)
                self._note_blocked(err)
                self.state["retries"] += 1
                self.save(last_error=f"close: {err}"[:500])
                if self._wait(backoff.after(err)):
                    self._abandon()
                    return

    def _abandon(self) -> None:
        if self.sink is not None:
            try:
                self.sink.abandon()
            except Exception:  # noqa: BLE001
                pass
            self.save(open=False)
