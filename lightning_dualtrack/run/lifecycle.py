"""The delivery process's lifetime, seen from the training process: start, health, wait, report.

The shipper (``python -m lightning_dualtrack.shipper RUN_DIR --follow``) runs as a child process in
its own process group (Ctrl-C in the terminal does not stop delivery) but the training process's
session (see :meth:`ShipperProcess.start`). It writes each sink's state to ``state/<sink>.json``,
which is all the training process reads of it.

This module has the shape of ``lightning_dualtrack.delivery.process.ShipperProcess`` and
``lightning_dualtrack.delivery.report.final_report`` (start / check / restarts / wait_until_open /
finish; a report string), so the run can use either; the logic is the facade's former
``_spawn_shipper`` ... ``_print_report``, unchanged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_dualtrack.sinks.base import RUN_FILE, read_json


def shipper_env(tracking_uri: str, user: str | None, password: str | None) -> dict[str, str]:
    """The shipper's environment: ours, plus the tracking URI and its credentials (never written to a file)."""
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    if user:
        env["MLFLOW_TRACKING_USERNAME"] = user
    if password:
        env["MLFLOW_TRACKING_PASSWORD"] = password
    # the training script's directory, so that pickled models' classes import in the shipper
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*paths[:3], *env.get("PYTHONPATH", "").split(os.pathsep)])).strip(os.pathsep)
    return env


def sink_states(run_dir: Path, sinks: Sequence[str]) -> dict[str, dict[str, Any]]:
    return {n: read_json(run_dir / "state" / f"{n}.json", {}) or {} for n in sinks}


class ShipperProcess:
    """The background delivery process of one run (one per session of the run)."""

    def __init__(
        self, run_dir: Path, env: Mapping[str, str], sinks: Sequence[str], warn: Callable[[str], None], flush_interval: float = 1.0
    ) -> None:
        self.run_dir = Path(run_dir)
        self.env = dict(env)
        self.sinks = list(sinks)
        self.warn = warn  # how a failure to start is reported (a warning; an error in strict mode)
        self.flush_interval = flush_interval
        self.restarts = 0  # this stand-in never restarts a shipper
        self.popen: subprocess.Popen | None = None
        self._last_health_check = 0.0

    def start(self) -> None:
        log = open(self.run_dir / "shipper.log", "ab")
        try:
            self.popen = subprocess.Popen(
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
        except OSError as err:
            self.warn(f"cannot start the delivery process ({err}); deliver later with `dualtrack sync {self.run_dir}`")
        finally:
            log.close()

    def states(self) -> dict[str, dict[str, Any]]:
        return sink_states(self.run_dir, self.sinks)

    def wait_until_open(self, timeout: float = 120.0) -> None:
        """Strict mode: wait until every sink has opened its run; raise on the first failure."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.states()
            if all(s.get("open") for s in states.values()):
                return
            bad = {n: s["last_error"] for n, s in states.items() if s.get("last_error") and not s.get("open")}
            if bad:
                raise RuntimeError(f"strict mode: a backend could not start: {bad}")
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"strict mode: the delivery process exited; see {self.run_dir / 'shipper.log'}")
            time.sleep(0.1)
        raise TimeoutError(f"strict mode: the backends did not start within {timeout} s")

    def check(self) -> None:
        """Strict mode's health check, at most once per ``flush_interval``: raise if a sink is failing."""
        now = time.monotonic()
        if now - self._last_health_check < self.flush_interval:
            return
        self._last_health_check = now
        for name, state in self.states().items():
            if state.get("failed"):
                raise RuntimeError(f"strict mode: {name} rejected {state['failed']} record(s); see {self.run_dir / 'state'}")
            if state.get("last_error") and not state.get("open"):
                raise RuntimeError(f"strict mode: {name} is failing: {state['last_error']}")

    def finish(self, timeout: float) -> dict[str, dict[str, Any]]:
        """Wait at most ``timeout`` s for delivery to end (the journal holds an ``end`` record); per-sink states."""
        proc = self.popen
        if proc is not None:
            deadline = time.monotonic() + timeout
            grace = min(3.0, timeout / 3)
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic() - grace))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)  # stop retrying; everything not acked stays in the journal
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.popen = None
        return self.states()


def pending_message(run_dir: Path, pending: Mapping[str, Any], finalize_timeout: float) -> str:
    names = ", ".join(sorted(pending))
    return (
        f"[dualtrack] not everything reached {names} before finalize_timeout={finalize_timeout:g}s; "
        f"it is safe in the journal. Deliver it with:  dualtrack sync {run_dir}"
    )


def final_report(run_dir: Path, states: Mapping[str, Mapping[str, Any]], finalize_timeout: float, restarts: int = 0) -> str:
    """The lines printed at the end of a run: where each backend's run is, and what is still pending."""
    run_id = (read_json(run_dir / RUN_FILE, {}) or {}).get("run_id", run_dir.name)
    lines = [f"[dualtrack] run {run_id}: {run_dir}"]
    pending = {}
    for name, state in states.items():
        ident = state.get("identity") or {}
        where = ident.get("url") or ident.get("dir") or ident.get("run_id") or "(not created)"
        lines.append(f"[dualtrack]   {name}: {'delivered' if state.get('closed') else 'PENDING'} -> {where}")
        if not state.get("closed"):
            pending[name] = state
        if state.get("failed"):
            lines.append(f"[dualtrack]   {name}: {state['failed']} record(s) rejected, see {run_dir / 'state'}")
    if restarts:
        lines.append(f"[dualtrack]   the delivery process was restarted {restarts} time(s)")
    if pending:
        lines.append(pending_message(run_dir, pending, finalize_timeout))
    return "\n".join(lines)
