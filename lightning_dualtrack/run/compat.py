"""What users of Lightning's ``MLFlowLogger`` and ``WandbLogger`` call, mapped onto the run.

Kept out of the facade so that ``logger.py`` stays the Lightning adapter: the identity wait behind
``mlflow_run_id`` / ``experiment_id``, the status an unfinished run ends with at interpreter exit,
WandbLogger's ``log_image`` / ``log_table`` / ``log_text`` argument forms, ``watch`` statistics and
``register_model``'s answer.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

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
    if identity.get("run_id") or run.shipper is None or getattr(run, "identity_wait_done", False):
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


class Watcher:
    """``watch(model, log=, log_freq=)``: every ``log_freq`` logging steps, per-parameter statistics as
    metrics (``gradients/<name>/norm|mean|std``, ``parameters/<name>/...``). One device-to-host copy per
    ``log_freq`` steps (the statistics are stacked on the device first), never one per step."""

    def __init__(self, model: Any, log: str | None, log_freq: int) -> None:
        if log not in ("gradients", "parameters", "all", None):
            raise ValueError(f"Expected argument `log` to be 'gradients', 'parameters', 'all' or None, but got {log!r}")
        if not isinstance(log_freq, int) or log_freq < 1:
            raise ValueError(f"Expected argument `log_freq` to be a positive integer, but got {log_freq!r}")
        self.model, self.log, self.log_freq = model, log, log_freq
        self._last: int | None = None

    def due(self, step: int | None) -> bool:
        if self.log is None or step is None or step == self._last or step % self.log_freq:
            return False
        self._last = step
        return True

    def stats(self) -> dict[str, float]:
        import torch

        names, rows = [], []
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                for kind, t in (("gradients", p.grad), ("parameters", p)):
                    if t is None or (self.log != "all" and self.log != kind):
                        continue
                    t = t.detach().float()
                    rows.append(torch.stack([t.norm(), t.mean(), t.std() if t.numel() > 1 else torch.zeros((), device=t.device)]))
                    names.append(f"{kind}/{name.replace('.', '/')}")
            if not rows:
                return {}
            values = torch.stack([r.to(rows[0].device) for r in rows]).cpu().tolist()
        return {f"{n}/{s}": v for n, row in zip(names, values, strict=True) for s, v in zip(("norm", "mean", "std"), row, strict=True)}

