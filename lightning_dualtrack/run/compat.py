"""What users of Lightning's ``MLFlowLogger`` and ``WandbLogger`` call, mapped onto the run.

Kept out of the facade so that ``logger.py`` stays the Lightning adapter: the identity wait behind
``mlflow_run_id`` / ``experiment_id``, the status an unfinished run ends with at interpreter exit,
WandbLogger's ``log_image`` / ``log_table`` / ``log_text`` argument forms, ``watch`` statistics and
``register_model``'s answer.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from lightning_dualtrack.core import records
from lightning_dualtrack.delivery.state import load_state

IDENTITY_TIMEOUT_S = 15.0
REGISTER_TIMEOUT_S = 60.0
_MLFLOW_RUN_ID = re.compile(r"[0-9a-f]{32}")
_URI_SCHEMES = ("runs:/", "models:/", "file:", "s3://", "gs://", "wasbs://", "abfss://", "dbfs:/", "hdfs://",
                "mlflow-artifacts:/", "http://", "https://", "/")


def is_mlflow_run_id(run_id: str | None) -> bool:
    """An MLflow run id (32 hex digits) rather than one of our 8-character journal ids."""
    return bool(run_id) and bool(_MLFLOW_RUN_ID.fullmatch(str(run_id)))


def wait_for_identity(run: Any, sink: str, timeout: float = IDENTITY_TIMEOUT_S) -> dict[str, Any]:
    """The sink's run identity from ``state/<sink>.json``; waits (at most ``timeout`` s, once per run) while
    the delivery process is alive and still opening the backend run. A failing backend is not waited for."""
    if run.run_dir is None:
        return {}
    identity = load_state(run.run_dir, sink).get("identity") or {}
    if identity.get("run_id") or run.delivery is None or getattr(run, "identity_wait_done", False):
        return identity
    run.identity_wait_done = True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = load_state(run.run_dir, sink)
        identity = state.get("identity") or {}
        if identity.get("run_id") or (state.get("last_error") and not state.get("open")):
            break
        time.sleep(0.05)
    return identity


def exit_status() -> str:
    """How a run still open at interpreter exit ended: ``failed`` after an uncaught exception, and in a
    spawned distributed worker (ddp_spawn: Lightning finalizes a worker's loggers with "success" itself when
    training succeeds, so a worker that exits with its run open is one whose training raised)."""
    if getattr(sys, "last_value", None) is not None or getattr(sys, "last_exc", None) is not None:
        return "failed"
    if multiprocessing.parent_process() is not None and "MASTER_PORT" in os.environ:  # a distributed worker
        return "failed"
    return "success"


def calling_trainer_stage(max_depth: int = 40) -> str | None:
    """The stage (``fit``, ``validate``, ``test``, ``predict``) of the Lightning ``Trainer`` whose logger connector is
    calling this logger, found on the call stack (the connector holds ``trainer``); None outside a Trainer. Called
    once per continued session, at its first metrics: not on the log path."""
    frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if type(owner).__name__ == "_LoggerConnector":
            fn = getattr(getattr(getattr(owner, "trainer", None), "state", None), "fn", None)
            return str(getattr(fn, "value", fn)) if fn is not None else None
        frame = frame.f_back
    return None


def is_pruned(exc: BaseException | None) -> bool:
    """An Optuna ``TrialPruned`` (named by its class, so that this needs no ``optuna``): a sweep stopped the trial."""
    return exc is not None and any(cls.__name__ == "TrialPruned" for cls in type(exc).__mro__)


def hold_sigterm_in_spawned_worker() -> None:
    """At exit in a spawned distributed worker (``ddp_spawn``) with its run still open: block SIGTERM from here on.

    When one worker fails, torch's spawn supervisor SIGTERMs the others at once (SIGKILL 30 s later). The failed
    worker's peer usually dies first, so that SIGTERM lands while this worker's exit handler ends the run and cut
    the delivery of its end (the MLflow run stayed RUNNING). Blocked, it is discarded when the process exits.
    """
    if multiprocessing.parent_process() is None or "MASTER_PORT" not in os.environ:
        return
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def guarded(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A log call of the logger that never raises into training: an input (or a fault) it did not foresee is a
    warning naming the call, the error and that nothing was logged; in strict mode the error itself."""

    def decorate(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except Exception as err:
                if self._config.strict:
                    raise
                from lightning_dualtrack.core.values import short

                self._run.messages.warn(f"{what}: could not log this input ({type(err).__name__}: {short(str(err))}); "
                                        "nothing of it was logged, training goes on")
                return None

        return wrapper

    return decorate


def table_rows(columns: Sequence[Any] | None, rows: Any, data: Any, dataframe: Any) -> tuple[list[Any], Any]:
    """WandbLogger's ``columns=/data=/dataframe=`` forms (pandas: its columns and rows) -> (columns, rows)."""
    if dataframe is not None:
        return [str(c) for c in dataframe.columns], dataframe.itertuples(index=False, name=None)
    rows = data if rows is None else rows
    if columns is None or rows is None:
        raise ValueError("expected `columns` with `rows`/`data`, or a `dataframe`")
    return list(columns), rows


def split_images(key: str, images: Any, caption: Any) -> list[tuple[str, Any, Any]]:
    """``log_image(key=, images=[...], caption=[...])``: one ``(key, image, caption)`` per image."""
    images = list(images) if isinstance(images, (list, tuple)) else [images]
    captions = list(caption) if isinstance(caption, (list, tuple)) else [caption] * len(images)
    captions += [None] * (len(images) - len(captions))
    keys = [key] if len(images) == 1 else [f"{key}_{i}" for i in range(len(images))]
    return list(zip(keys, images, captions, strict=False))


def check_model_uri(uri: str | None) -> None:
    """A registry source MLflow can resolve: ``runs:/<id or last>/<path>``, ``models:/...`` or a storage URI."""
    if uri is None:
        return
    if not isinstance(uri, str) or not uri.startswith(_URI_SCHEMES):
        raise ValueError(f"Expected argument `model_uri` to be runs:/<run id or last>/<path>, models:/... or a storage URI, but got {uri!r}")
    if uri.startswith("runs:/"):
        run_part, _, path = uri[len("runs:/"):].partition("/")
        if not path or not (run_part == "last" or is_mlflow_run_id(run_part)):
            raise ValueError(f"Expected argument `model_uri` runs:/<run id or last>/<artifact path>, but got {uri!r}")


def wait_for_version(tracking_uri: str, name: str, mlflow_run_id: str | None, timeout: float = REGISTER_TIMEOUT_S) -> str | None:
    """The version of ``name`` this run registered, once the delivery process has made it (blocking, bounded)."""
    if not mlflow_run_id:
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            versions = client.search_model_versions(f"name='{name}' and run_id='{mlflow_run_id}'")
        except Exception:  # noqa: BLE001 - not created yet, or the server is away for a moment
            versions = []
        if versions:
            return str(max(int(v.version) for v in versions))
        time.sleep(0.25)
    return None


HISTOGRAM_BINS = 64


class Watcher:
    """``watch(model, log=, log_freq=)``: every ``log_freq`` logging steps, per-parameter statistics as
    metrics (``gradients/<name>/norm|mean|std``, ``parameters/<name>/...``: both backends) and, through
    ``emit``, one ``hist`` record of 64-bin histograms (``gradients/<name>``, W&B's own ``watch`` keys: W&B only).

    Cheap on a GPU: nothing happens on the other steps; on a logging step, two device-to-host copies in all
    (the statistics with each tensor's min/max, stacked on the device; then every ``torch.histc`` count, stacked),
    never one per parameter. ``histc`` is given those bounds, so it does not read them back itself.
    """

    def __init__(self, model: Any, log: str | None, log_freq: int, emit: Callable[[dict[str, Any]], None] | None = None,
                 bins: int = HISTOGRAM_BINS) -> None:
        if log not in ("gradients", "parameters", "all", None):
            raise ValueError(f"Expected argument `log` to be 'gradients', 'parameters', 'all' or None, but got {log!r}")
        if not isinstance(log_freq, int) or log_freq < 1:
            raise ValueError(f"Expected argument `log_freq` to be a positive integer, but got {log_freq!r}")
        self.model, self.log, self.log_freq = model, log, log_freq
        self.emit, self.bins = emit, bins
        self._last: int | None = None

    def due(self, step: int | None) -> bool:
        if self.log is None or step is None or step == self._last or step % self.log_freq:
            return False
        self._last = step
        return True

    def _tensors(self) -> list[tuple[str, str, Any]]:
        out = []
        for name, p in self.model.named_parameters():
            for kind, t in (("gradients", p.grad), ("parameters", p)):
                if t is not None and t.numel() and (self.log == "all" or self.log == kind):
                    out.append((kind, name, t.detach()))
        return out

    def stats(self) -> dict[str, float]:
        """The statistics of this logging step; the histograms go to ``emit`` (at the step of the last ``due``)."""
        import torch

        tensors = self._tensors()
        if not tensors:
            return {}
        out: dict[str, float] = {}
        with torch.no_grad():
            rows = []
            for _kind, _name, t in tensors:
                f = t.float()
                std = f.std() if f.numel() > 1 else torch.zeros((), device=f.device)
                rows.append(torch.stack([f.norm(), f.mean(), std, f.min(), f.max()]))
            device = rows[0].device
            values = torch.stack([r.to(device) for r in rows]).cpu().tolist()  # device -> host copy 1
            keys, bounds, counts = [], [], []
            for (kind, name, t), (norm, mean, std, lo, hi) in zip(tensors, values, strict=True):
                base = f"{kind}/{name.replace('.', '/')}"
                out[f"{base}/norm"], out[f"{base}/mean"], out[f"{base}/std"] = norm, mean, std
                if self.emit is None or not (math.isfinite(lo) and math.isfinite(hi)):
                    continue  # histc refuses a non-finite range; the statistics say the rest
                if hi <= lo:  # a constant tensor: one bar around its value
                    pad = max(abs(lo) * 1e-3, 1e-8)
                    lo, hi = lo - pad, hi + pad
                keys.append(f"{kind}/{name}")
                bounds.append((lo, hi))
                counts.append(torch.histc(t.float(), bins=self.bins, min=lo, max=hi).to(device))
            if counts:
                table = torch.stack(counts).cpu().tolist()  # device -> host copy 2
                self.emit(records.histograms(self._last or 0, {
                    k: (lo, hi, c) for k, (lo, hi), c in zip(keys, bounds, table, strict=True)}))
        return out
