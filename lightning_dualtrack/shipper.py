"""Delivery: read the journal, hand records to each sink, retry, and remember how far each sink got.

One worker thread per sink, so a sink that is down or slow never holds back the other. Each worker
keeps an ack offset (``state/<sink>.json``: the journal byte offset up to which the sink has stored
everything), written atomically after each delivered batch. Delivery is at-least-once and the sinks'
replays are idempotent (MLflow deduplicates identical metric rows; params, tags and artifacts are
overwritten with the same content), so a replay stores nothing twice.

The logger starts this module as a child process (``python -m lightning_dualtrack.shipper --follow``)
so that serialising and sending never competes with the training loop for the GIL; ``dualtrack sync``
runs the same code in the foreground on a finished, crashed or offline run directory.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning_dualtrack.journal import Entry, JournalReader, now_ms, repair_torn_tail
from lightning_dualtrack.sinks.base import (
    PermanentError,
    RunContext,
    Sink,
    TransientError,
    read_json,
    write_json_atomic,
)

STATE_DIR = "state"
LOCK_FILE = "shipper.lock"
MAX_BATCH = 20_000


_BOOST_LOCK = threading.Lock()
_boosted = False


def _descendant_pids(pid: int) -> list[int]:
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception:  # noqa: BLE001 - best effort
        return []


def end_idle_priority() -> None:
    """Training is over: run delivery (every thread, and wandb-core) at normal priority again.

    SCHED_IDLE keeps delivery off the cores while training runs; after that, on a machine busy with
    other jobs, it could starve delivery until ``finalize_timeout``. Scheduling policy is per thread
    on Linux, so each task of this process and of its children is switched.
    """
    global _boosted
    if not hasattr(os, "SCHED_OTHER"):
        return
    with _BOOST_LOCK:
        if _boosted:
            return
        _boosted = True
        for pid in [os.getpid(), *_descendant_pids(os.getpid())]:
            try:
                tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
            except OSError:
                tids = [pid]
            for tid in tids:
                try:
                    if os.sched_getscheduler(tid) == getattr(os, "SCHED_IDLE", -1):
                        os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
                except OSError:
                    pass


def state_path(run_dir: Path, sink: str) -> Path:
    return Path(run_dir) / STATE_DIR / f"{sink}.json"


def load_state(run_dir: Path, sink: str) -> dict[str, Any]:
    return read_json(state_path(run_dir, sink), default={}) or {}


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
        retry_after = getattr(err, "retry_after", None)
        return max(delay, min(float(retry_after), 60.0)) if retry_after else delay


class Links:
    """Each sink's public identity, shared between the workers for cross-linking."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._identities: dict[str, dict[str, Any]] = {}
        self._pending: set[str] = set()  # sinks that may still publish an identity

    def expect(self, names: set[str]) -> None:
        with self._lock:
            self._pending = set(names) - set(self._identities)

    def publish(self, name: str, identity: dict[str, Any]) -> None:
        with self._lock:
            self._identities[name] = dict(identity)
            self._pending.discard(name)
            self._changed.notify_all()

    def give_up(self, name: str) -> None:
        """``name`` will publish nothing (it could not open its run, or it is done)."""
        with self._lock:
            self._pending.discard(name)
            self._changed.notify_all()

    def wait_for_others(self, name: str, timeout: float) -> bool:
        """Wait until every other sink has published its identity or given up; False on timeout."""
        with self._lock:
            return self._changed.wait_for(lambda: not (self._pending - {name}), timeout)

    def others(self, name: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {k: dict(v) for k, v in self._identities.items() if k != name}


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
        parent_pid: int | None = None,
        poll_interval: float = 1.0,
        health_interval: float = 15.0,
        give_up_after: float | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        super().__init__(name=f"dualtrack-{name}", daemon=True)
        self.ctx, self.make_sink, self.sink_name = ctx, make_sink, name
        self.links, self.stop, self.follow = links, stop, follow
        self.parent_pid, self.poll_interval, self.health_interval = parent_pid, poll_interval, health_interval
        self.give_up_after = give_up_after
        self.log = log
        self.reader = JournalReader(ctx.run_dir)
        self.state = load_state(ctx.run_dir, name)
        self.state.setdefault("offset", 0)
        for key in ("delivered", "failed", "retries", "requests", "bytes"):
            self.state.setdefault(key, 0)
        self.sink: Sink | None = None
        self._linked: dict[str, dict[str, Any]] = dict(self.state.get("linked") or {})
        self._t0 = time.monotonic()
        self._last_health = 0.0
        self._last_step: int | None = self.state.get("last_step")
        self.done = False
        self.peers: list[SinkWorker] = []  # the other workers of this shipper (for cross-link waits)

    # -- bookkeeping ---------------------------------------------------------------------------
    def save(self, **changes: Any) -> None:
        self.state.update(changes)
        self.state["updated_ms"] = now_ms()
        if self.sink is not None:
            self.state["requests"] = self.state.get("requests_base", 0) + self.sink.requests
            self.state["bytes"] = self.state.get("bytes_base", 0) + self.sink.bytes_uploaded
        write_json_atomic(state_path(self.ctx.run_dir, self.sink_name), self.state)

    def _gave_up(self) -> bool:
        return self.give_up_after is not None and time.monotonic() - self._t0 > self.give_up_after

    def _parent_gone(self) -> bool:
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def _wait(self, seconds: float) -> bool:
        """Sleep; True if we should stop."""
        return self.stop.wait(seconds)

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except Exception as err:  # noqa: BLE001 - a worker must never die silently
            self.log(f"[dualtrack] {self.sink_name}: delivery stopped by an unexpected error: {err!r}")
            self.save(last_error=f"{type(err).__name__}: {err}")
        finally:
            self.links.give_up(self.sink_name)
            self.done = True

    def _open(self) -> bool:
        backoff = Backoff()
        while True:
            try:
                self.sink = self.make_sink(self.ctx)
                identity = self.sink.open(dict(self.state.get("identity") or {}))
                self.state["requests_base"] = self.state.get("requests", 0)
                self.state["bytes_base"] = self.state.get("bytes", 0)
                reason = getattr(self.sink, "fallback_reason", None)
                if reason:
                    self.log(f"[dualtrack] {self.sink_name}: {reason}")
                self.save(identity=identity, open=True, last_error=None)
                self.links.publish(self.sink_name, identity)
                self.log(f"[dualtrack] {self.sink_name}: run open after {time.monotonic() - self._t0:.2f} s: {identity.get('url') or identity.get('dir') or identity.get('run_id')}")
                return True
            except (ModuleNotFoundError, PermanentError) as err:
                self.log(f"[dualtrack] {self.sink_name}: cannot open the run: {err}")
                self.save(last_error=str(err), open=False)
                return False
            except Exception as err:  # noqa: BLE001 - transient: server down, timeout...
                self.sink = None
                self.links.give_up(self.sink_name)  # the other sink must not wait for an identity to link to
                self.state["retries"] = self.state.get("retries", 0) + 1
                self.save(last_error=str(err)[:500], open=False)
                if self._wait(backoff.after(err)) or self._gave_up():
                    return False

    def _rewind_to_durable(self) -> None:
        """After a delivery process died without closing the run: deliver again what the backend acked
        but never stored (W&B writes rows asynchronously; see ``sinks/wandb.py``)."""
        probe = getattr(self.sink, "durable_offset", None)
        if probe is None or self.state.get("closed") or not self.state["offset"]:
            return
        durable = probe()
        if durable < self.state["offset"]:
            self.log(
                f"[dualtrack] {self.sink_name}: the previous delivery stopped uncleanly; the backend holds the "
                f"journal up to byte {durable} of {self.state['offset']} acknowledged: delivering the rest again"
            )
            self.save(offset=durable)

    def _restore_prefix(self) -> None:
        """Replay the key map of records that were delivered before this process started."""
        offset = self.state["offset"]
        if offset <= 0:
            return
        entries, _ = self.reader.read(0)
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

    def _deliver(self, entries: list[Entry]) -> bool:
        """Deliver entries (retrying transient failures); False if we were told to stop first."""
        backoff = Backoff()
        while entries:
            try:
                self.sink.progress = 0
                self.sink.deliver(entries)
                return True
            except TransientError as err:
                done = getattr(self.sink, "progress", 0) or 0
                if done:
                    self._ack(entries[done - 1])
                    entries = entries[done:]
                self.state["retries"] += 1
                self.save(last_error=str(err)[:500])
                if self._wait(backoff.after(err)) or self._gave_up():
                    return False
            except PermanentError as err:
                if len(entries) == 1:
                    self._record_failure(entries[0], err)
                    return True
                half = len(entries) // 2
                if not self._deliver(entries[:half]):
                    return False
                self._ack(entries[half - 1])
                entries = entries[half:]
        return True

    def _record_failure(self, entry: Entry, err: Exception) -> None:
        self.state["failed"] += 1
        self.log(f"[dualtrack] {self.sink_name}: a '{entry.record.get('k')}' record was rejected: {err}")
        path = Path(self.ctx.run_dir) / STATE_DIR / f"{self.sink_name}.failed.jsonl"
        import json

        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"offset": entry.offset, "error": str(err), "record": entry.record}, default=repr) + "\n")

    def _ack(self, last: Entry) -> None:
        self.save(offset=last.offset, last_step=self._last_step, last_delivery_ms=now_ms())

    def _health(self) -> None:
        now = time.monotonic()
        if now - self._last_health < self.health_interval:
            return
        self._last_health = now
        pending = max(0, self.reader.size() - self.state["offset"])
        latency = (now_ms() - self.state["last_record_ms"]) / 1000 if self.state.get("last_record_ms") else 0.0
        health = {
            "pending_bytes": pending,
            "delivery_latency_s": max(0.0, latency),
            "requests": float(self.sink.requests),
            "retries": float(self.state["retries"]),
            "failures": float(self.state["failed"]),
            "bytes_uploaded": float(self.sink.bytes_uploaded),
        }
        try:
            self.sink.report_health(health, self._last_step)
        except Exception:  # noqa: BLE001 - health is best effort
            pass

    def _up_to_date(self) -> bool:
        """Closed, and nothing new in the journal: a second ``sync`` must not reopen the backend run.

        (Reopening would set the MLflow run RUNNING and back, and start a new, empty W&B offline-run
        directory that the printed ``wandb sync`` hint would then point to.)
        """
        if self.follow or not self.state.get("closed"):
            return False
        more, _ = self.reader.read(self.state["offset"], max_records=1)
        return not more

    def _run(self) -> None:
        if self._up_to_date():
            self.log(f"[dualtrack] {self.sink_name}: up to date, nothing to deliver")
            return
        if not self._open():
            return
        self._rewind_to_durable()
        self._restore_prefix()
        self._link()
        status = self.state.get("last_status", "running")
        while True:
            entries, new_offset = self.reader.read(self.state["offset"], max_records=MAX_BATCH)
            if entries:
                for e in entries:
                    kind = e.record.get("k")
                    if kind == "end":
                        status = e.record.get("status", "success")
                        end_idle_priority()
                    elif kind == "start":
                        status = "running"
                    elif kind == "metrics" and e.record.get("s") is not None:
                        self._last_step = e.record["s"]
                if not self._deliver(entries):
                    break
                self.state["delivered"] += len(entries)
                self.state["last_record_ms"] = entries[-1].record.get("t")
                self._ack(entries[-1])
                self.save(last_status=status, closed=False, last_error=None)
                self._link()
                self._health()
                if len(entries) >= MAX_BATCH:
                    continue
            # caught up with the journal
            self._link()
            self._health()
            finished = status != "running"
            if finished or self._parent_gone():
                end_idle_priority()
            if finished or not self.follow or self._parent_gone():
                if not finished and self.follow:
                    # the training process died without finalize: one last look, then mark it crashed
                    time.sleep(0.2)
                    more, _ = self.reader.read(self.state["offset"], max_records=1)
                    if more:
                        continue
                close_status = status if finished else None
                # a short run can be fully delivered here before the other backend's run exists: wait
                # (bounded, and cut short by a stop) so that each run still names the other
                deadline = time.monotonic() + 10.0
                while not self.links.wait_for_others(self.sink_name, 0.2):
                    if self.stop.is_set() or time.monotonic() > deadline:
                        break
                self._link()
                self._close(close_status)
                return
            if self._wait(self.poll_interval):
                break
        self._abandon()

    def _await_links(self, timeout: float = 10.0) -> None:
        """Before closing, give the other backends a moment to open so that this run links to them.

        Only a peer that is still starting (not failing: a down server is not waited for) is waited for.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop.is_set():
            published = self.links.others(self.sink_name)
            pending = [
                w for w in self.peers
                if w is not self and not w.done and w.sink_name not in published and not w.state.get("last_error")
            ]
            if not pending:
                break
            time.sleep(0.1)
        self._link()

    def _close(self, status: str | None) -> None:
        self._await_links()
        backoff = Backoff()
        while True:
            try:
                self.sink.close(status)
                self.save(closed=True, final_status=status or "crashed", open=False)
                self.log(
                    f"[dualtrack] {self.sink_name}: closed ({status or 'crashed'}) after {time.monotonic() - self._t0:.2f} s, "
                    f"{self.state['delivered']} records delivered, {self.state['failed']} rejected, {self.state['retries']} retries"
                )
                return
            except Exception as err:  # noqa: BLE001
                self.state["retries"] += 1
                self.save(last_error=f"close: {err}"[:500])
                if self._wait(backoff.next()) or self._gave_up():
                    self._abandon()
                    return

    def _abandon(self) -> None:
        if self.sink is not None:
            try:
                self.sink.abandon()
            except Exception:  # noqa: BLE001
                pass
            self.save(open=False)


def make_sink_factories(ctx: RunContext, only: set[str] | None = None) -> dict[str, Callable[[RunContext], Sink]]:
    factories: dict[str, Callable[[RunContext], Sink]] = {}
    if ctx.settings.get("mlflow", {}).get("enabled") and (only is None or "mlflow" in only):

        def mlflow_sink(c: RunContext) -> Sink:
            from lightning_dualtrack.sinks.mlflow import MlflowSink

            return MlflowSink(c)

        factories["mlflow"] = mlflow_sink
    if ctx.settings.get("wandb", {}).get("enabled") and (only is None or "wandb" in only):

        def wandb_sink(c: RunContext) -> Sink:
            from lightning_dualtrack.sinks.wandb import WandbSink

            return WandbSink(c)

        factories["wandb"] = wandb_sink
    return factories


class ShipperBusy(RuntimeError):
    """Another process is delivering this run."""


def acquire_lock(run_dir: Path) -> int:
    """Hold ``state/shipper.lock`` for this process: two shippers must not deliver one run at once."""
    (run_dir / STATE_DIR).mkdir(parents=True, exist_ok=True)
    path = run_dir / STATE_DIR / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        holder = Path(path).read_text().strip() or "?"
        raise ShipperBusy(f"another process (pid {holder}) is delivering {run_dir}; wait for it or stop it") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def run_shipper(
    run_dir: str | os.PathLike,
    follow: bool = False,
    parent_pid: int | None = None,
    poll_interval: float | None = None,
    give_up_after: float | None = None,
    only: set[str] | None = None,
    log: Callable[[str], None] = print,
    stop: threading.Event | None = None,
    lock_wait: float = 0.0,
) -> dict[str, dict[str, Any]]:
    """Deliver a run directory's journal to its sinks; returns each sink's final state."""
    run_dir = Path(run_dir)
    ctx = RunContext.load(run_dir)
    deadline = time.monotonic() + lock_wait
    while True:
        try:
            lock_fd = acquire_lock(run_dir)
            break
        except ShipperBusy:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
    try:
        if not follow:
            repair_torn_tail(run_dir)
        stop = stop or threading.Event()
        links = Links()
        for name in ("mlflow", "wandb"):  # identities known from earlier sessions
            identity = load_state(run_dir, name).get("identity")
            if identity:
                links.publish(name, identity)
        interval = poll_interval if poll_interval is not None else float(ctx.settings.get("flush_interval", 1.0))
        workers = [
            SinkWorker(ctx, factory, name, links, stop, follow, parent_pid, interval, give_up_after=give_up_after, log=log)
            for name, factory in make_sink_factories(ctx, only).items()
        ]
        links.expect({w.sink_name for w in workers})
        for w in workers:
            w.peers = workers
        for w in workers:
            w.start()
        while any(w.is_alive() for w in workers):
            for w in workers:
                w.join(timeout=0.2)
            if stop.is_set():
                # bounded: a worker stuck in a network call is left behind (its acks are on disk)
                end = time.monotonic() + 5.0
                for w in workers:
                    w.join(timeout=max(0.0, end - time.monotonic()))
                break
        return {w.sink_name: dict(w.state) for w in workers}
    finally:
        os.close(lock_fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_dualtrack.shipper")
    parser.add_argument("run_dir")
    parser.add_argument("--follow", action="store_true", help="keep tailing the journal until the run ends")
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--nice", type=int, default=0)
    parser.add_argument("--idle", action="store_true", help="run only on CPU time nobody else wants (SCHED_IDLE)")
    args = parser.parse_args(argv)
    if args.idle and hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        # Delivery must not take CPU from training: under SCHED_IDLE the kernel runs this process (and
        # the wandb-core process it starts, which inherits the policy) only when a core is otherwise idle.
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError:
            args.nice = args.nice or 19
    if args.nice:
        try:
            os.nice(args.nice)
        except OSError:
            pass
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the training process; we drain

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    # the logger may start us before it has written run.json; wait briefly
    for _ in range(100):
        if (Path(args.run_dir) / "run.json").exists():
            break
        time.sleep(0.05)
    run_shipper(args.run_dir, follow=args.follow, parent_pid=args.parent_pid, log=log, stop=stop, lock_wait=30.0)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # do not wait for threads stuck in a network call


if __name__ == "__main__":
    raise SystemExit(main())
