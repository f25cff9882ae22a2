"""CPU priority of the delivery process: only idle CPU time while training runs, normal priority at a session's end.

Under ``SCHED_IDLE`` the kernel runs the delivery service (and the ``wandb-core`` process it starts, which
inherits the policy) only when a core is otherwise idle, so delivery never takes CPU from training. When a session
ends, what is left must be delivered now, even on a machine busy with other jobs: every thread goes back to
normal priority (scheduling policy is per thread on Linux), and to idle again when a next session starts.
"""

from __future__ import annotations

import os
import threading

_BOOST_LOCK = threading.Lock()
_boosted = False
_started_idle = False  # set when the delivery process started itself under SCHED_IDLE


def mark_started_idle() -> None:
    global _started_idle
    _started_idle = True


def idle_priority_again() -> None:
    """A next session (training again) after :func:`end_idle_priority`: back to SCHED_IDLE, if started so."""
    global _boosted
    if not _started_idle or not hasattr(os, "SCHED_IDLE"):
        return
    with _BOOST_LOCK:
        _boosted = False
        for tid in _our_threads():
            try:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            except OSError:
                pass


def _our_threads() -> list[int]:
    """Every thread of this process and of its children (wandb-core): scheduling policy is per thread on Linux."""
    tids: list[int] = []
    for pid in [os.getpid(), *_descendant_pids(os.getpid())]:
        try:
            tids.extend(int(t) for t in os.listdir(f"/proc/{pid}/task"))
        except OSError:
            tids.append(pid)
    return tids


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
        for tid in _our_threads():
            try:
                if os.sched_getscheduler(tid) == getattr(os, "SCHED_IDLE", -1):
                    os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
            except OSError:
                pass


def start_idle() -> bool:
    """Run this process -- every thread it has, its children (wandb-core) and what they start later -- under
    ``SCHED_IDLE``; False where that is not possible."""
    if not hasattr(os, "sched_setscheduler") or not hasattr(os, "SCHED_IDLE"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError:
        return False
    mark_started_idle()
    idle_priority_again()
    return True


def unidle(pid: int) -> None:
    """Training is over: run the delivery process ``pid`` (every thread, and its children such as wandb-core) at
    normal priority, so that what is left of the session is delivered now even on a busy machine. Best effort;
    called from the training process."""
    if not hasattr(os, "SCHED_IDLE"):
        return
    try:
        import psutil

        pids = [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    except Exception:  # noqa: BLE001 - gone, or psutil missing
        pids = [pid]
    for p in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{p}/task")]
        except OSError:
            tids = [p]
        for tid in tids:
            try:
                if os.sched_getscheduler(tid) == os.SCHED_IDLE:
                    os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
            except OSError:
                pass
