"""One run's delivery: a :class:`~lightning_dualtrack.delivery.worker.SinkWorker` per enabled backend, under the
run's lock. The delivery service (:mod:`~lightning_dualtrack.delivery.service`) keeps one
:class:`RunDelivery` per run its training process opens; ``dualtrack sync`` runs one in the foreground
(:func:`deliver_run`) on a finished, crashed or offline run directory. Same code, same acks.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lightning_dualtrack.core.io import STATE_DIR
from lightning_dualtrack.core.journal import repair_torn_tail
from lightning_dualtrack.delivery.links import Links
from lightning_dualtrack.delivery.state import HANDOVER_FILE, LOCK_FILE, load_state, lock_holder
from lightning_dualtrack.delivery.sysmetrics import SystemMonitor
from lightning_dualtrack.delivery.worker import ORPHAN_TIMEOUT_S, SinkWorker
from lightning_dualtrack.sinks import enabled_sinks, sink_class, sink_names
from lightning_dualtrack.sinks.base import RunContext

# the journal is looked at twice per flush_interval: a point logged during training waits about half of it
# (plus one request) before it is on the server (measured: benchmarks/logger_overhead.py --freshness)
POLLS_PER_FLUSH = 2
SERVICE_MODULE = "lightning_dualtrack.delivery"


class DeliveryBusy(RuntimeError):
    """Another process is delivering this run."""


def orphan_timeout() -> float:
    """Seconds delivery keeps retrying once its training process is gone: ``DUALTRACK_ORPHAN_TIMEOUT``, else 120."""
    try:
        return max(0.0, float(os.environ.get("DUALTRACK_ORPHAN_TIMEOUT") or ORPHAN_TIMEOUT_S))
    except ValueError:
        return ORPHAN_TIMEOUT_S


def _service_of_a_gone_process(pid: int) -> bool:
    """Whether ``pid`` is a delivery service whose training process is gone (its lock is stale)."""
    try:
        import psutil

        proc = psutil.Process(pid)
        cmd = proc.cmdline()
    except Exception:  # noqa: BLE001 - gone, or not ours to inspect
        return False
    if SERVICE_MODULE not in cmd or "--parent-pid" not in cmd:
        return False
    try:
        parent = int(cmd[cmd.index("--parent-pid") + 1])
    except (ValueError, IndexError):
        return False
    return not psutil.pid_exists(parent) or proc.ppid() != parent


def acquire_lock(run_dir: Path, take_over_stale: bool = False) -> int:
    """Hold ``state/delivery.lock`` for this process: two processes must not deliver one run at once.

    ``take_over_stale``: the holder is the delivery service of a training process that is gone: stop it
    (SIGTERM, then SIGKILL after 5 s; its acks are on disk) and take the lock.
    """
    (run_dir / STATE_DIR).mkdir(parents=True, exist_ok=True)
    path = run_dir / STATE_DIR / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = lock_holder(run_dir)
        if take_over_stale and holder and _service_of_a_gone_process(holder):
            os.kill(holder, signal.SIGTERM)
            for i in range(100):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    if i == 50:
                        try:
                            os.kill(holder, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    time.sleep(0.1)
            else:
                os.close(fd)
                raise DeliveryBusy(f"the delivery process (pid {holder}) of a training process that is gone holds "
                                   f"{run_dir} and does not stop") from None
        else:
            os.close(fd)
            raise DeliveryBusy(f"the delivery service of a running training process (pid {holder}) is delivering "
                               f"{run_dir}; it delivers what is pending while that process lives") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


class RunDelivery:
    """The workers that deliver one run's journal to each of its backends, and the run's lock.

    Args:
        run_dir: the run directory (``run.json`` and the journal).
        lock_fd: the run's lock, held by the caller (:func:`acquire_lock`); closed by :meth:`close`.
        secrets: per backend, credentials handed over in memory (never written).
        follow: keep tailing the journal until the run ends (the service); False: deliver what is there.
        hold: keep the backend runs open between the run's sessions until :attr:`release` is set or the training
            process is gone (the service).
        orphaned: set when the training process is gone (the service's watch of its parent).
        only: deliver to these backends only.
        system_pid: the training process (the service's parent) whose system figures are sampled every
            ``system_metrics`` seconds of ``run.json`` while the run is in a session (None: not sampled).
        The rest: see :class:`~lightning_dualtrack.delivery.worker.SinkWorker`.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        lock_fd: int,
        *,
        secrets: Mapping[str, Mapping[str, str]] | None = None,
        follow: bool = False,
        hold: bool = False,
        orphaned: threading.Event | None = None,
        stop: threading.Event | None = None,
        only: set[str] | None = None,
        log: Callable[[str], None] = print,
        poll_interval: float | None = None,
        give_up_after: float | None = None,
        retry_rejected: bool | str | None = None,
        progress: Callable[[str, int, int], None] | None = None,
        system_pid: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.lock_fd: int | None = lock_fd
        self.ctx = RunContext.load(self.run_dir, secrets)
        self.ctx.system_pid = system_pid if follow else None
        self.stop = threading.Event()  # this run's delivery stops (its own; the service's stop sets every run's)
        if stop is not None and stop.is_set():
            self.stop.set()
        self.release = threading.Event()
        self.orphaned = orphaned or threading.Event()
        self.links = Links()
        for name in sink_names():  # identities known from earlier sessions
            identity = load_state(self.run_dir, name).get("identity")
            if identity:
                fields = sink_class(name).link_fields
                self.links.publish(name, identity if fields is None else {k: v for k, v in identity.items() if k in fields})
        interval = poll_interval if poll_interval is not None else float(self.ctx.settings.get("flush_interval", 1.0)) / POLLS_PER_FLUSH
        self.workers: list[SinkWorker] = []
        for name in enabled_sinks(self.ctx.settings):
            if only is not None and name not in only:
                continue
            cls = sink_class(name)
            self.workers.append(SinkWorker(
                self.ctx, cls, name, self.links, self.stop, follow, sink_cls=cls, orphaned=orphaned,
                poll_interval=interval, give_up_after=give_up_after, log=log, retry_rejected=retry_rejected,
                orphan_timeout=orphan_timeout(), progress=progress, hold=hold, release=self.release,
            ))
        self.links.expect({w.sink_name for w in self.workers})
        feeds = [w.offer_system for w in self.workers if w.wants_system]
        interval = self.ctx.system_interval
        self.monitor = SystemMonitor(system_pid, interval, feeds, active=self.in_session, stop=self.stop, log=log,
                                     running=self.alive, name=f"dualtrack-{self.run_dir.name}-system") if interval and feeds else None

    def start(self) -> RunDelivery:
        for w in self.workers:
            w.start()
        if self.monitor is not None:
            self.monitor.start()
        return self

    def in_session(self) -> bool:
        """A session of the run is going on, so the system figures are the run's: the training process lives and the
        journal's last record is not an ``end`` (between two sessions, a held run is not training)."""
        return not self.orphaned.is_set() and last_record_kind(self.run_dir) not in ("end", None)

    def alive(self) -> bool:
        return any(w.is_alive() for w in self.workers)

    def handover_asked(self) -> bool:
        """A ``dualtrack sync`` waits for this run and its current session has ended (the journal's last record is
        ``end``): let it have the run. A session still training stays with its delivery service."""
        if not (self.run_dir / STATE_DIR / HANDOVER_FILE).exists():
            return False
        return last_record_kind(self.run_dir) == "end"

    def held(self) -> bool:
        """Every backend run is stored and kept open between two sessions (nothing to deliver right now)."""
        return bool(self.workers) and all(w.state.get("held") or w.state.get("closed") for w in self.workers if w.is_alive())

    def states(self) -> dict[str, dict[str, Any]]:
        return {w.sink_name: dict(w.state) for w in self.workers}

    def join(self) -> dict[str, dict[str, Any]]:
        """Wait for the workers; once :attr:`stop` is set, at most 5 s more (a worker stuck in a network call is
        left behind: its acks are on disk)."""
        while self.alive():
            for w in self.workers:
                w.join(timeout=0.2)
            if self.stop.is_set():
                end = time.monotonic() + 5.0
                for w in self.workers:
                    w.join(timeout=max(0.0, end - time.monotonic()))
                break
        return self.states()

    def relock(self) -> None:
        """The run directory was deleted and made again: hold the lock on the new lock file too, so that a ``dualtrack
        sync`` does not deliver the run at the same time."""
        if self.lock_fd is None or (self.run_dir / STATE_DIR / LOCK_FILE).exists():
            return
        try:
            fd = acquire_lock(self.run_dir)
        except (DeliveryBusy, OSError):
            return
        os.close(self.lock_fd)
        self.lock_fd = fd

    def close(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def last_record_kind(run_dir: Path) -> str | None:
    """The kind (``k``) of the journal's last complete record, read from its end."""
    import json

    from lightning_dualtrack.core.journal import JOURNAL_NAME

    try:
        with open(run_dir / JOURNAL_NAME, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            lines = fh.read().rstrip(b"\n").split(b"\n")
        return json.loads(lines[-1]).get("k") if lines and lines[-1] else None
    except (OSError, ValueError, AttributeError):
        return None


def deliver_run(
    run_dir: str | os.PathLike,
    *,
    only: set[str] | None = None,
    log: Callable[[str], None] = print,
    stop: threading.Event | None = None,
    lock_wait: float = 0.0,
    take_over_stale: bool = False,
    poll_interval: float | None = None,
    give_up_after: float | None = None,
    retry_rejected: bool | str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Deliver what a run directory's journal holds and its backends have not acknowledged (``dualtrack sync``),
    in this process; returns each backend's final state.

    ``lock_wait``: wait this long for a process delivering the run; at the deadline, with ``take_over_stale``, a
    delivery process whose training process is gone is stopped and replaced. ``give_up_after``: stop retrying
    after this many seconds (what is left stays pending). ``retry_rejected``: True: deliver again every set-aside
    record; None/False: those whose reason may have passed; "never": none. ``progress(sink, acked, size)`` is
    called as acks move.
    """
    run_dir = Path(run_dir)
    RunContext.load(run_dir)  # not a run directory: say so before waiting for a lock
    deadline = time.monotonic() + lock_wait
    handover = run_dir / STATE_DIR / HANDOVER_FILE
    try:
        while True:
            last_try = time.monotonic() >= deadline
            try:
                lock_fd = acquire_lock(run_dir, take_over_stale=take_over_stale and last_try)
                break
            except DeliveryBusy:
                if last_try:
                    raise
                if take_over_stale and not handover.exists():
                    handover.write_text(str(os.getpid()))  # a delivery service lets go of a run whose session ended
                time.sleep(0.2)
    finally:
        handover.unlink(missing_ok=True)
    delivery = None
    try:
        repair_torn_tail(run_dir)
        delivery = RunDelivery(run_dir, lock_fd, follow=False, stop=stop, only=only, log=log, poll_interval=poll_interval,
                               give_up_after=give_up_after, retry_rejected=retry_rejected, progress=progress)
        return delivery.start().join()
    finally:
        if delivery is not None:
            delivery.close()
        else:
            os.close(lock_fd)
