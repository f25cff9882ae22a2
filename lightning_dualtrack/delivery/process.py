"""The logger's side of delivery: start the shipper child, notice if it dies, stop it at the end.

The training thread only ever pays for :meth:`ShipperProcess.check` on the log path: a monotonic-clock
compare, and at most once a second a ``Popen.poll()`` (a non-blocking ``waitpid``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_dualtrack.delivery.state import sink_states

CHECK_EVERY_S = 1.0
MAX_RESTARTS = 3  # a shipper that keeps dying (e.g. at import) is not restarted forever


class ShipperProcess:
    """One run's delivery child: ``python -m lightning_dualtrack.shipper RUN_DIR --follow``.

    Args:
        run_dir: the run directory (``run.json`` and the journal are there or about to be).
        env: the child's environment (tracking URI, credentials, ``PYTHONPATH``).
        sinks: the enabled backends' names (whose ``state/<name>.json`` :meth:`finish` returns).
        warn: how to tell the user something (the logger's warning function).
    """

    def __init__(self, run_dir: Path, env: Mapping[str, str], sinks: Sequence[str], *, warn: Callable[[str], None]) -> None:
        self.run_dir = Path(run_dir)
        self.env = dict(env)
        self.sinks = tuple(sinks)
        self.warn = warn
        self.restarts = 0
        self.proc: subprocess.Popen | None = None
        self._next_check = 0.0
        self._gave_up_restarting = False
        self.kept = False  # the process outlived a session's end, holding the backend runs open for the next

    # -- start -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Spawn the child (again, after :meth:`finish`, for a run that continues, e.g. test after fit)."""
        log = open(self.run_dir / "shipper.log", "ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lightning_dualtrack.shipper", str(self.run_dir), "--follow", "--parent-pid", str(os.getpid()), "--idle"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.env,
                close_fds=True,
                # Our own process group, so Ctrl-C in the terminal (sent to the foreground group) does not
                # stop delivery -- but the same session: with scheduler autogrouping (on by default on
                # Linux) a new session is a new CPU group with an equal share, and SCHED_IDLE would not
                # keep the shipper off the cores training uses.
                **({"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}),
            )
        finally:
            log.close()
        self._next_check = time.monotonic() + CHECK_EVERY_S

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    # -- supervise ---------------------------------------------------------------------------------
    def check(self) -> None:
        """Cheap; call on the log path. A shipper that died while the run is open is restarted (warned once)."""
        now = time.monotonic()
        if now < self._next_check or self.proc is None:
            return
        self._next_check = now + CHECK_EVERY_S
        code = self.proc.poll()
        if code is None or self._gave_up_restarting:
            return
        if self.kept and code == 0:
            # it ended the held runs (grace time over) just as this session began: a fresh one continues the run
            self.kept = False
            self._start_quietly()
            return
        if self.restarts >= MAX_RESTARTS:
            self._gave_up_restarting = True
            self.warn(
                f"DUALTRACK: the delivery process keeps exiting (status {code}, {self.restarts} restarts; see "
                f"{self.run_dir / 'shipper.log'}); not restarting it. Records are safe in the journal: "
                f"dualtrack sync {self.run_dir}"
            )
            return
        self.restarts += 1
        if self.restarts == 1:
            self.warn(
                f"DUALTRACK: the delivery process exited during the run (status {code}); restarted it. "
                "Nothing acknowledged is lost, and the final report will say so."
            )
        self._start_quietly()

    def _start_quietly(self) -> None:
        try:
            self.start()
        except OSError as err:
            self._gave_up_restarting = True
            self.warn(f"DUALTRACK: cannot start the delivery process ({err}); deliver later with `dualtrack sync {self.run_dir}`")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_until_open(self, timeout: float) -> None:
        """Strict mode: return once every backend run is open; raise if one cannot start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = sink_states(self.run_dir, self.sinks)
            if all(s.get("open") for s in states.values()):
                return
            bad = {n: s["last_error"] for n, s in states.items() if s.get("last_error") and not s.get("open")}
            if bad:
                raise RuntimeError(f"strict mode: a backend could not start: {bad}")
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"strict mode: the delivery process exited; see {self.run_dir / 'shipper.log'}")
            time.sleep(0.1)
        raise TimeoutError(f"strict mode: the backends did not start within {timeout} s")

    # -- the end of a session, the end of the run ---------------------------------------------------
    def end_session(self, timeout: float, end_offset: int, background: bool = False) -> tuple[dict[str, dict[str, Any]], bool]:
        """Wait (bounded by ``timeout``) until every backend stored the session up to journal byte ``end_offset``
        and ended it; returns the per-sink states and whether the process is kept (it then holds the backend
        runs open for the next session of this process: one W&B directory for fit and test).
        ``background``: do not wait for a backend whose run is not open yet (it gets the session later).

        The process runs at normal priority from here on (training is over). Out of time: as :meth:`finish`
        (the process is told to stop; the rest stays in the journal). A SIGINT or SIGTERM during the wait:
        the report, the sync command, then the signal's usual effect.
        """
        proc = self.proc
        if proc is None:
            return sink_states(self.run_dir, self.sinks), False
        unidle(proc.pid)

        def ended(state: dict[str, Any]) -> bool:
            if state.get("closed") and int(state.get("offset") or 0) >= end_offset:
                return True
            # ``background``: a backend still starting (its run not open yet) is not waited for; the process,
            # kept, delivers the session to it after this returns (and before it exits)
            return background and not state.get("open") and not state.get("last_error")

        return self._wait(proc, timeout, until=lambda states: all(ended(s) for s in states.values()))

    def release(self, timeout: float) -> dict[str, dict[str, Any]]:
        """The run is over (the training process exits, or ``end_run``): end the backend runs held open now
        (SIGUSR1) and wait, bounded, for the process to exit (it is not killed: what it holds is stored)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGUSR1)
                proc.wait(timeout=max(0.1, timeout))
            except (subprocess.TimeoutExpired, OSError):
                pass
        if proc is not None and proc.poll() is not None:
            self.proc = None
        self.kept = False
        return sink_states(self.run_dir, self.sinks)

    # -- stop --------------------------------------------------------------------------------------
    def finish(self, timeout: float) -> dict[str, dict[str, Any]]:
        """Wait (bounded by ``timeout``) for delivery to end, then SIGTERM, then kill; per-sink states.

        A SIGINT or SIGTERM arriving during the wait: print the report and the sync command, let the
        shipper hand over cleanly (SIGTERM: it stops retrying; its acks are on disk), then re-raise
        (``KeyboardInterrupt``) or exit with the signal's usual status.
        """
        proc = self.proc
        if proc is None:
            return sink_states(self.run_dir, self.sinks)
        return self._wait(proc, timeout, until=None)[0]

    def _wait(self, proc: subprocess.Popen, timeout: float, until: Callable[[dict], bool] | None) -> tuple[dict[str, dict[str, Any]], bool]:
        received: list[int] = []
        previous = self._trap_signals(received)
        try:
            deadline = time.monotonic() + timeout
            grace = min(3.0, timeout / 3)
            while proc.poll() is None and not received and time.monotonic() < deadline - grace:
                if until is not None:
                    states = sink_states(self.run_dir, self.sinks)
                    if until(states):
                        self.kept = True
                        return states, True
                    time.sleep(0.02)
                    continue
                try:
                    proc.wait(timeout=0.1)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # stop retrying; everything not acked stays in the journal
                end = time.monotonic() + (5.0 if received else max(0.1, deadline - time.monotonic()))
                try:
                    proc.wait(timeout=max(0.1, end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.proc = None
            self.kept = False
        finally:
            self._restore_signals(previous)
        states = sink_states(self.run_dir, self.sinks)
        if received:
            from lightning_dualtrack.delivery.report import final_report

            print(final_report(self.run_dir, states, finalize_timeout=timeout, restarts=self.restarts), file=sys.stderr, flush=True)
            print(f"[dualtrack] interrupted while delivering; the rest is safe in the journal: dualtrack sync {self.run_dir}",
                  file=sys.stderr, flush=True)
            self._reraise(received[0], previous.get(received[0]))
        return states, False

    @staticmethod
    def _trap_signals(received: list[int]) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, lambda s, _f: received.append(s))
            except (ValueError, OSError):
                pass
        return previous

    @staticmethod
    def _restore_signals(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            try:
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            except (ValueError, OSError):
                pass

    @staticmethod
    def _reraise(sig: int, handler: Any) -> None:
        if callable(handler) and handler not in (signal.default_int_handler,):
            handler(sig, None)  # the program's own handler (e.g. Lightning's) decides
            return
        if sig == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)  # the usual status: killed by SIGTERM (143 in a shell)
        time.sleep(1.0)
        raise SystemExit(128 + sig)


def unidle(pid: int) -> None:
    """Training is over: run the delivery process ``pid`` (every thread, and its children such as wandb-core) at
    normal priority, so that what is left of the session is delivered now even on a busy machine. Best effort."""
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
