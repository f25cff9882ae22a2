"""The delivery process's lifetime, seen from the training process: start, supervise, wait, report.

The process itself (spawn, liveness check and restart, bounded wait, signals during the wait) is
:class:`lightning_dualtrack.delivery.process.ShipperProcess`; the final message is
:func:`lightning_dualtrack.delivery.report.final_report`. This module adds what only the training
process knows: the child's environment (the tracking URI and its credentials, never written to a
file) and strict mode's health check.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_dualtrack.delivery.process import ShipperProcess
from lightning_dualtrack.delivery.report import final_report, sync_command
from lightning_dualtrack.delivery.state import sink_states

__all__ = ["ShipperProcess", "StrictHealth", "final_report", "hold_sigterm_in_spawned_worker", "pending_message", "shipper_env",
           "sink_states"]


def shipper_env(tracking_uri: str, user: str | None, password: str | None) -> dict[str, str]:
    """The shipper's environment: ours, plus the tracking URI and its credentials (never written to a file)."""
    env = dict(os.environ)
    # A wandb.init in the training process (a stock WandbLogger beside ours, the user's own) exports the address of
    # its wandb-core service. Inherited, our shipper would write through that process's service: relative paths
    # resolved against its working directory, and the held W&B run ended when that process exits. Our own.
    env.pop("WANDB_SERVICE", None)
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    if user:
        env["MLFLOW_TRACKING_USERNAME"] = user
    if password:
        env["MLFLOW_TRACKING_PASSWORD"] = password
    # the training script's directory, so that pickled models' classes import in the shipper
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*paths[:3], *env.get("PYTHONPATH", "").split(os.pathsep)])).strip(os.pathsep)
    return env


def hold_sigterm_in_spawned_worker() -> None:
    """At exit in a spawned distributed worker (``ddp_spawn``) with its run still open: block SIGTERM from here on.

    When one worker fails, torch's spawn supervisor SIGTERMs the others at once (SIGKILL 30 s later). The failed
    worker's peer usually dies first, so that SIGTERM lands while this worker's ``atexit`` ends the run and cut the
    delivery of its end (the MLflow run stayed RUNNING). Blocked, it is discarded when the process exits.
    """
    if multiprocessing.parent_process() is None or "MASTER_PORT" not in os.environ:
        return
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


class StrictHealth:
    """Strict mode: at most once per ``interval`` s, raise if a backend rejected a record or cannot open."""

    def __init__(self, run_dir: Path, sinks: tuple[str, ...] | list[str], interval: float) -> None:
        self.run_dir, self.sinks, self.interval = Path(run_dir), tuple(sinks), interval
        self._last = 0.0

    def check(self) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        for name, state in sink_states(self.run_dir, self.sinks).items():
            if state.get("failed"):
                raise RuntimeError(f"strict mode: {name} rejected {state['failed']} record(s); see `dualtrack status {self.run_dir}`")
            if state.get("last_error") and not state.get("open") and not state.get("closed"):
                raise RuntimeError(f"strict mode: {name} is failing: {state['last_error']}")


def pending_message(run_dir: Path, pending: Mapping[str, Any], finalize_timeout: float) -> str:
    names = ", ".join(sorted(pending))
    return (
        f"[dualtrack] not everything reached {names} before finalize_timeout={finalize_timeout:g}s; "
        f"it is safe in the journal. Deliver it with:  {sync_command(run_dir)}"
    )
