"""The training process's side of delivery: its one delivery service, started once and shared by every run.

:func:`service` starts ``python -m lightning_dualtrack.delivery`` the first time a logger asks (when it is
built, so that the service's start-up -- ``import wandb``, ``wandb-core`` -- overlaps the model's setup) and
returns the same :class:`DeliveryService` to every logger of the process afterwards. The training thread
pays only for :meth:`DeliveryService.check` on the log path: a monotonic-clock compare and, at most once a
second, a non-blocking ``poll()``. A dead service is restarted with a warning and told again about every run
this process follows (their journals and acks are on disk). At interpreter exit (after the loggers have
finalized their runs) its input is closed and the exit waits, bounded, until every backend run is ended.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_dualtrack.delivery.priority import unidle
from lightning_dualtrack.delivery.report import final_report
from lightning_dualtrack.delivery.state import sink_states

CHECK_EVERY_S = 1.0
MAX_RESTARTS = 3  # a service that keeps dying (e.g. at import) is not restarted forever
EXIT_WAIT_S = 5.0  # at interpreter exit, the wait for the service when no run asked for more (finalize_timeout)
_SERVICE: DeliveryService | None = None
_SERVICE_LOCK = threading.Lock()
_RETIRED: list[DeliveryService] = []  # retired services still finishing: polled (reaped) at the next service() call


def service_env() -> dict[str, str]:
    """The service's environment: ours, with the training script's directories on ``PYTHONPATH`` (pickled models'
    classes import there) and without ``WANDB_SERVICE``: a ``wandb.init`` in the training process (a stock
    ``WandbLogger``, the user's own) exports the address of its ``wandb-core``; inherited, our W&B runs would be
    written through that process's service (paths resolved against its working directory, runs ended with it)."""
    env = dict(os.environ)
    env.pop("WANDB_SERVICE", None)
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*paths[:3], *env.get("PYTHONPATH", "").split(os.pathsep)])).strip(os.pathsep)
    return env


# the variables that change what delivery does (backends, credentials, proxies, certificates, where files go)
_DELIVERY_ENV = re.compile(r"^(WANDB_|MLFLOW_|DUALTRACK_|AWS_|AZURE_|GOOGLE_|(HTTPS?|NO|ALL)_PROXY$|REQUESTS_CA_BUNDLE$|"
                           r"CURL_CA_BUNDLE$|SSL_CERT_|PYTHONPATH$)", re.IGNORECASE)


def delivery_env(env: Mapping[str, str]) -> dict[str, str]:
    """The part of an environment that the delivery service's behaviour depends on.

    Example:
        >>> delivery_env({"WANDB_DIR": "/w", "PL_GLOBAL_SEED": "1", "https_proxy": "p", "MLFLOW_TRACKING_URI": "u"})
        {'WANDB_DIR': '/w', 'https_proxy': 'p', 'MLFLOW_TRACKING_URI': 'u'}
    """
    return {k: v for k, v in env.items() if _DELIVERY_ENV.match(k)}


def service(warn: Callable[[str], None], warm: Sequence[str] = ()) -> DeliveryService:
    """This process's delivery service, started on the first call (warming up the backends in ``warm``); the end of
    the process calls :meth:`DeliveryService.shutdown` after the runs have ended (``run.session``'s exit handler).

    A service with no run left to follow whose environment is not the process's any more (a notebook set
    ``WANDB_DIR`` or a proxy between two experiments) is retired -- it finishes what it holds on its own -- and a new
    one starts with the new environment. A service still following a run is kept."""
    global _SERVICE
    with _SERVICE_LOCK:
        _RETIRED[:] = [s for s in _RETIRED if s.proc is not None and s.proc.poll() is None]  # reaped once exited
        if _SERVICE is not None and _SERVICE.owner == os.getpid() and _SERVICE.stale():
            _SERVICE.retire()
            _RETIRED.append(_SERVICE)
            _SERVICE = None
        if _SERVICE is None or _SERVICE.owner != os.getpid():
            _SERVICE = DeliveryService(warn, warm)
            _SERVICE.start()
        return _SERVICE


def forget(svc: DeliveryService) -> None:
    """After :meth:`DeliveryService.shutdown`: the next :func:`service` call starts a new one."""
    global _SERVICE
    with _SERVICE_LOCK:
        if _SERVICE is svc:
            _SERVICE = None


def current() -> DeliveryService | None:
    """The service, if this process started one."""
    return _SERVICE if _SERVICE is not None and _SERVICE.owner == os.getpid() else None


def _forget_in_child() -> None:
    """A forked child (a DataLoader worker) must not talk to its parent's service, nor keep its input open."""
    global _SERVICE
    if _SERVICE is not None and _SERVICE.proc is not None and _SERVICE.proc.stdin is not None:
        try:
            os.close(_SERVICE.proc.stdin.fileno())
        except OSError:
            pass
    _SERVICE = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


class DeliveryService:
    """The delivery service process of this training process (see :mod:`lightning_dualtrack.delivery.service`)."""

    def __init__(self, warn: Callable[[str], None], warm: Sequence[str] = ()) -> None:
        self.warm = list(warm)
        # what the service itself prints (a crash, a give-up); each run's delivery messages are in its delivery.log.
        # Removed at a clean end; named by the warning when the service dies.
        self.log_path = Path(tempfile.gettempdir()) / "dualtrack-delivery" / f"{os.getpid()}.log"
        self.warn = warn
        self.owner = os.getpid()
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.followed: dict[str, dict[str, dict[str, str]]] = {}  # run dir -> secrets, re-sent after a restart
        self._pending: list[bytes] = []  # commands the pipe could not take yet
        self._later: collections.deque[str] = collections.deque()  # ends queued by the garbage collector
        self._next_check = 0.0
        self._gave_up = False
        self._lock = threading.Lock()
        self.exit_wait = EXIT_WAIT_S  # the longest finalize_timeout of the runs followed: what the process end waits
        self.env: dict[str, str] = {}  # the environment it was started with

    # -- start -------------------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path, "ab")
        except OSError:
            log = subprocess.DEVNULL
        self.env = service_env()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lightning_dualtrack.delivery", "--parent-pid", str(os.getpid()), "--idle",
                 "--warm", ",".join(self.warm)],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=log,
                env=self.env,
                close_fds=True,
                # Its own process group, so Ctrl-C in the terminal (sent to the foreground group) does not stop
                # delivery -- but the same session: with scheduler autogrouping (on by default on Linux) a new
                # session is a new CPU group with an equal share, and SCHED_IDLE would not keep delivery off the
                # cores training uses.
                **({"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}),
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        fd = self.proc.stdin.fileno()
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)  # never block training
        self._next_check = time.monotonic() + CHECK_EVERY_S

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- commands ----------------------------------------------------------------------------------
    def _send(self, command: Mapping[str, Any] | None) -> None:
        """One command, one ``write`` (small: atomic on a pipe); what the pipe cannot take now is sent later."""
        with self._lock:
            self._queue_later()
            if command is not None:
                self._pending.append((json.dumps(command) + "\n").encode("utf-8"))
            self._flush()

    def _queue_later(self) -> None:
        while self._later:
            run_dir = self._later.popleft()
            self.followed.pop(run_dir, None)
            self._pending.append((json.dumps({"op": "end", "run_dir": run_dir}) + "\n").encode("utf-8"))

    def _flush(self) -> None:
        while self._pending and self.proc is not None and self.proc.stdin is not None and not self.proc.stdin.closed:
            data = self._pending[0]
            try:
                written = os.write(self.proc.stdin.fileno(), data)
            except BlockingIOError:
                return
            except (BrokenPipeError, OSError) as err:
                if getattr(err, "errno", None) == errno.EAGAIN:
                    return
                return  # the service is gone: check() restarts it and re-sends what it follows
            if written < len(data):
                self._pending[0] = data[written:]
                return
            self._pending.pop(0)

    def follow(self, run_dir: str | os.PathLike, secrets: Mapping[str, Mapping[str, str]] | None = None) -> None:
        """Deliver this run (its journal as it grows); ``secrets``: per backend, credentials kept in memory."""
        key = str(Path(run_dir).resolve())
        self.followed[key] = {k: dict(v) for k, v in (secrets or {}).items()}
        self._send({"op": "follow", "run_dir": key, "secrets": self.followed[key]})

    def end(self, run_dir: str | os.PathLike) -> None:
        """The run is over: end its backend runs once delivered (none is kept open for a next session)."""
        key = str(Path(run_dir).resolve())
        self.followed.pop(key, None)
        self._send({"op": "end", "run_dir": key})

    def end_later(self, run_dir: str | os.PathLike) -> None:
        """:meth:`end`, from a garbage-collector callback (any point of the program, maybe inside :meth:`_send`):
        queued without a lock, sent with the next command or check."""
        self._later.append(os.path.realpath(run_dir))
        # sent now unless this thread is inside _send (the collector ran there): then with the next command or check
        if self._lock.acquire(blocking=False):
            try:
                self._queue_later()
                self._flush()
            finally:
                self._lock.release()

    # -- supervise ---------------------------------------------------------------------------------
    def check(self) -> None:
        """Cheap; call on the log path. A service that died is restarted (warned once) and told what to deliver."""
        now = time.monotonic()
        if now < self._next_check or self.proc is None:
            return
        self._next_check = now + CHECK_EVERY_S
        if self._pending or self._later:
            self._send(None)
        code = self.proc.poll()
        if code is None or self._gave_up:
            return
        if self.restarts >= MAX_RESTARTS:
            self._gave_up = True
            self.warn(f"DUALTRACK: the delivery process keeps exiting (status {code}, {self.restarts} restarts; see "
                      f"{self.log_path}); not restarting it. Records are safe in the journal: "
                      "dualtrack sync RUN_DIR")
            return
        self.restarts += 1
        if self.restarts == 1:
            self.warn(f"DUALTRACK: the delivery process exited during the run (status {code}); restarted it. "
                      "Nothing acknowledged is lost, and the final report will say so.")
        self._restart()

    def _restart(self) -> None:
        self._pending.clear()
        try:
            self.start()
        except OSError as err:
            self._gave_up = True
            self.warn(f"DUALTRACK: cannot start the delivery process ({err}); deliver later with `dualtrack sync RUN_DIR`")
            return
        for run_dir, secrets in list(self.followed.items()):
            self._send({"op": "follow", "run_dir": run_dir, "secrets": secrets})

    def ensure_alive(self) -> None:
        """Before a wait: a service found dead is restarted now (not at the next log call)."""
        self._next_check = 0.0
        self.check()

    # -- waiting for a run ---------------------------------------------------------------------------
    def wait(self, run_dir: Path, sinks: Sequence[str], until: Callable[[dict[str, dict[str, Any]]], bool],
             timeout: float) -> tuple[dict[str, dict[str, Any]], bool]:
        """Poll the run's ack state until ``until(states)`` or ``timeout``; returns (states, reached).

        The service runs at normal priority from here on (training is over). A SIGINT or SIGTERM during the wait:
        the report and the sync command, then the signal's usual effect (delivery goes on in the service).
        """
        self.ensure_alive()
        if self.pid is not None:
            unidle(self.pid)
        received: list[int] = []
        previous = _trap_signals(received)
        try:
            deadline = time.monotonic() + timeout
            while True:
                states = sink_states(run_dir, sinks)
                if until(states):
                    return states, True
                if received or time.monotonic() >= deadline:
                    break
                if not self.alive():
                    self.ensure_alive()
                time.sleep(0.02)
        finally:
            _restore_signals(previous)
        states = sink_states(run_dir, sinks)
        if received:
            print(final_report(run_dir, states, finalize_timeout=timeout, restarts=self.restarts, held_by=self.pid),
                  file=sys.stderr, flush=True)
            print(f"[dualtrack] interrupted while waiting for delivery; the rest is safe in the journal: dualtrack sync {run_dir}",
                  file=sys.stderr, flush=True)
            _reraise(received[0], previous.get(received[0]))
        return states, False

    # -- a new environment ------------------------------------------------------------------------
    def stale(self) -> bool:
        """No run to follow any more, and started with another delivery environment than the process has now."""
        return (not self.followed and not self._later and self.proc is not None
                and delivery_env(self.env) != delivery_env(service_env()))

    def retire(self) -> None:
        """Close its input without waiting: it ends what it holds, delivers what is left and exits by itself."""
        with self._lock:
            deadline = time.monotonic() + 2.0
            while self._pending and time.monotonic() < deadline and self.alive():
                self._flush()
                time.sleep(0.01)
        try:
            self.proc.stdin.close()
        except (OSError, AttributeError):
            pass
        if self.alive():
            unidle(self.proc.pid)

    # -- the end of the process ------------------------------------------------------------------
    def shutdown(self, timeout: float | None = None) -> None:
        """At interpreter exit: close the service's input (every run is over) and wait, bounded, for it to end
        the backend runs; what it has not delivered by then it goes on delivering after this process is gone
        (bounded by its orphan timeout), and stays in the journals for ``dualtrack sync``."""
        if self.proc is None or os.getpid() != self.owner:
            return
        timeout = self.exit_wait if timeout is None else timeout
        with self._lock:
            deadline = time.monotonic() + min(timeout, 5.0)
            while self._pending and time.monotonic() < deadline and self.alive():
                self._flush()
                time.sleep(0.01)
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        if self.alive():
            unidle(self.proc.pid)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                print(f"[dualtrack] the delivery process (pid {self.proc.pid}) is still delivering; it goes on after this "
                      "process exits. If it is stopped first: dualtrack sync RUN_DIR", file=sys.stderr)
                return
        if self.proc.returncode == 0 and self.restarts == 0:
            self.log_path.unlink(missing_ok=True)


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


def _restore_signals(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        try:
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        except (ValueError, OSError):
            pass


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
