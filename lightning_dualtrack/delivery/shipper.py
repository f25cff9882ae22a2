"""The shipper loop: one :class:`~lightning_dualtrack.delivery.worker.SinkWorker` per enabled sink, under
the run's lock, until the journal is delivered, the run is given up on, or a stop is asked for.

The logger starts this as a child process (``python -m lightning_dualtrack.shipper RUN_DIR --follow``)
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

from lightning_dualtrack.delivery.links import Links
from lightning_dualtrack.delivery.state import LOCK_FILE, STATE_DIR, load_state, lock_holder
from lightning_dualtrack.delivery.worker import (
    ORPHAN_TIMEOUT_S,
    SESSION_GRACE_S,
    SinkWorker,
    mark_started_idle,
)
from lightning_dualtrack.journal import repair_torn_tail
from lightning_dualtrack.sinks import enabled_sinks, sink_class, sink_names
from lightning_dualtrack.sinks.base import RunContext, Sink


def make_sink_factories(ctx: RunContext, only: set[str] | None = None) -> dict[str, Callable[[RunContext], Sink]]:
    """name -> factory for each backend the run enables (and ``only`` allows), from the registry."""
    return {
        name: (lambda c, n=name: sink_class(n)(c))
        for name in enabled_sinks(ctx.settings)
        if only is None or name in only
    }


POLLS_PER_FLUSH = 2


class ShipperBusy(RuntimeError):
    """Another process is delivering this run."""


def _orphaned_shipper(pid: int) -> bool:
    """Whether ``pid`` is a shipper whose training process is gone (its lock is stale)."""
    try:
        import psutil

        proc = psutil.Process(pid)
        cmd = proc.cmdline()
    except Exception:  # noqa: BLE001 - gone, or not ours to inspect
        return False
    if "lightning_dualtrack.shipper" not in " ".join(cmd) or "--parent-pid" not in cmd:
        return False
    try:
        parent = int(cmd[cmd.index("--parent-pid") + 1])
    except (ValueError, IndexError):
        return False
    return not psutil.pid_exists(parent) or proc.ppid() != parent


def acquire_lock(run_dir: Path, take_over_stale: bool = False) -> int:
    """Hold ``state/shipper.lock`` for this process: two shippers must not deliver one run at once.

    ``take_over_stale``: the holder is an orphaned shipper (its training process is gone): stop it
    (SIGTERM, then SIGKILL after 5 s; its acks are on disk) and take the lock.
    """
    (run_dir / STATE_DIR).mkdir(parents=True, exist_ok=True)
    path = run_dir / STATE_DIR / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = Path(path).read_text().strip() or "?"
        if take_over_stale and holder.isdigit() and _orphaned_shipper(int(holder)):
            os.kill(int(holder), signal.SIGTERM)
            for i in range(100):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    if i == 50:
                        try:
                            os.kill(int(holder), signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    time.sleep(0.1)
            else:
                os.close(fd)
                raise ShipperBusy(f"an orphaned shipper (pid {holder}) holds {run_dir} and does not stop") from None
        else:
            os.close(fd)
            raise ShipperBusy(f"another process (pid {holder}) is delivering {run_dir}; wait for it or stop it") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def orphan_timeout(settings: dict[str, Any]) -> float:
    """Seconds an orphaned shipper keeps retrying: ``DUALTRACK_ORPHAN_TIMEOUT``, else the run's
    ``orphan_timeout`` setting, else :data:`ORPHAN_TIMEOUT_S`."""
    env = os.environ.get("DUALTRACK_ORPHAN_TIMEOUT")
    try:
        return float(env) if env else float(settings.get("orphan_timeout", ORPHAN_TIMEOUT_S))
    except ValueError:
        return ORPHAN_TIMEOUT_S


def session_grace(settings: dict[str, Any]) -> float:
    """Seconds the logger's shipper keeps a run's backend runs open after a session ends, for the next session of
    the same process (``trainer.test`` after ``trainer.fit``): ``DUALTRACK_SESSION_GRACE``, else the run's
    ``session_grace`` setting, else :data:`SESSION_GRACE_S`. 0 ends them at every session's end."""
    env = os.environ.get("DUALTRACK_SESSION_GRACE")
    try:
        return max(0.0, float(env) if env else float(settings.get("session_grace", SESSION_GRACE_S)))
    except ValueError:
        return SESSION_GRACE_S


def _logger_shipper(pid: int) -> bool:
    """Whether ``pid`` is a training process's own shipper (``--follow``): it may be holding the run's backend
    runs open between two sessions, and SIGUSR1 asks it to end them (mid-session: not to hold them at its end)."""
    try:
        import psutil

        cmd = psutil.Process(pid).cmdline()
    except Exception:  # noqa: BLE001 - gone, or not ours to inspect
        return False
    return "lightning_dualtrack.shipper" in " ".join(cmd) and "--follow" in cmd


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
    retry_rejected: bool | str | None = None,
    take_over_stale: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    release: threading.Event | None = None,
    hold_sessions: bool = False,
) -> dict[str, dict[str, Any]]:
    """Deliver a run directory's journal to its sinks; returns each sink's final state.

    ``give_up_after``: stop retrying (and return) after this many seconds; what is left stays pending.
    ``retry_rejected``: True: deliver again every set-aside record; None/False: those whose reason may
    have passed; "never": none. ``progress(sink, acked_offset, journal_size)`` is called as acks move.
    ``hold_sessions`` (the logger's shipper): keep the backend runs open between sessions (see
    :func:`session_grace`) until ``release`` is set, the parent is gone or the grace time is over.
    ``take_over_stale`` also asks a shipper that only holds the run between sessions to end it (SIGUSR1).
    """
    run_dir = Path(run_dir)
    ctx = RunContext.load(run_dir)
    deadline = time.monotonic() + lock_wait
    asked: set[int] = set()
    while True:
        last_try = time.monotonic() >= deadline
        try:
            # a live shipper of a live run is waited for; at the deadline, an orphaned one is taken over
            lock_fd = acquire_lock(run_dir, take_over_stale=take_over_stale and last_try)
            break
        except ShipperBusy:
            holder = lock_holder(run_dir)
            if take_over_stale and holder and holder not in asked and _logger_shipper(holder):
                asked.add(holder)
                # the training process's shipper may be keeping the backend runs open for a next session: end them
                try:
                    os.kill(holder, signal.SIGUSR1)
                except OSError:
                    pass
                deadline = max(deadline, time.monotonic() + 15.0)
                last_try = False
            if last_try:
                raise
            time.sleep(0.2)
    try:
        if not follow:
            repair_torn_tail(run_dir)
        stop = stop or threading.Event()
        links = Links()
        for name in sink_names():  # identities known from earlier sessions
            identity = load_state(run_dir, name).get("identity")
            if identity:
                links.publish(name, identity)
        # the journal is looked at twice per flush_interval: a point logged during training waits at most about
        # half of it (plus one request) before it is on the server (measured: benchmarks --freshness)
        interval = poll_interval if poll_interval is not None else float(ctx.settings.get("flush_interval", 1.0)) / POLLS_PER_FLUSH
        workers = [
            SinkWorker(ctx, factory, name, links, stop, follow, parent_pid, interval, give_up_after=give_up_after,
                       log=log, retry_rejected=retry_rejected, orphan_timeout=orphan_timeout(ctx.settings),
                       progress=progress, release=release,
                       session_grace=session_grace(ctx.settings) if hold_sessions else 0.0)
            for name, factory in make_sink_factories(ctx, only).items()
        ]
        links.expect({w.sink_name for w in workers})
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
            mark_started_idle()
        except OSError:
            args.nice = args.nice or 19
    if args.nice:
        try:
            os.nice(args.nice)
        except OSError:
            pass
    stop = threading.Event()
    release = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # the training process is exiting (or `dualtrack sync` wants the run): end runs held open between sessions
    signal.signal(signal.SIGUSR1, lambda *_: release.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the training process; we drain

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    # the logger may start us before it has written run.json; wait briefly
    for _ in range(100):
        if (Path(args.run_dir) / "run.json").exists():
            break
        time.sleep(0.05)
    run_shipper(args.run_dir, follow=args.follow, parent_pid=args.parent_pid, log=log, stop=stop, lock_wait=30.0,
                retry_rejected="never", release=release, hold_sessions=args.follow and args.parent_pid is not None)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # do not wait for threads stuck in a network call
