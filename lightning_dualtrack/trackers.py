"""The tracker APIs of the CLIP HAR project and the MLflow ExperimentTracker project, as thin entry points over :class:`~lightning_dualtrack.DualTrackLogger`.

Each class *is* a ``DualTrackLogger`` (so it also goes into ``Trainer(logger=...)``): one code path, one journal,
the same delivery. What they add is names and defaults:

* :class:`ExperimentTracker` -- the MLflow ExperimentTracker project's API: ``start_run``, ``log_parameters``, ``log_metrics``,
  ``log_model(model, model_name, input_example=)``, ``log_visualization(fig, name)``, ``end_run``; MLflow only
  unless ``wandb=True``; a typed schema (:class:`~lightning_dualtrack.tracking_config.Schema`); and at the end of
  the run that project's monitoring figures as ``system/`` metrics (run duration, CPU time, peak memory, the run
  directory's storage: journal, payloads).
* :class:`MLflowTracker`, :class:`WandbTracker`, :class:`MultiTracker` -- the CLIP HAR project's trackers: one
  backend each, or both in one run.
* :func:`from_config` -- a logger from a tracking config file (:mod:`lightning_dualtrack.tracking_config`).

Example:
    >>> tracker = ExperimentTracker(experiment_name="demo", run_name="baseline")  # doctest: +SKIP
    >>> tracker.start_run()  # doctest: +SKIP
    >>> tracker.log_parameters({"batch_size": 32})  # doctest: +SKIP
    >>> tracker.log_metrics({"accuracy": 0.9}, step=1)  # doctest: +SKIP
    >>> tracker.end_run()  # doctest: +SKIP
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_dualtrack.core.values import flatten_params
from lightning_dualtrack.logger import DualTrackLogger
from lightning_dualtrack.tracking_config import Schema, load_tracking_config

__all__ = ["ExperimentTracker", "MLflowTracker", "MultiTracker", "WandbTracker", "from_config", "monitoring_metrics"]


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def monitoring_metrics(run_dir: str | os.PathLike, started: float | None) -> dict[str, float]:
    """The ExperimentTracker project's monitoring list, measured here: run duration (this session, s), resource usage (CPU time in s,
    peak resident memory in MB of this process) and storage usage (MB: the journal, payload files, the run
    directory in all). Keys start with ``system/`` so MLflow shows them on the System metrics tab."""
    run_dir = Path(run_dir)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # ru_maxrss: KiB on Linux, bytes on macOS
    peak_mb = usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    journal = sum(p.stat().st_size for p in run_dir.glob("journal*") if p.is_file())
    payload = sum(_dir_bytes(run_dir / sub) for sub in ("artifacts", "models"))
    mb = 1024 * 1024
    out = {
        "system/run/cpu_time_s": usage.ru_utime + usage.ru_stime,
        "system/run/peak_memory_mb": peak_mb,
        "system/storage/journal_mb": journal / mb,
        "system/storage/payload_mb": payload / mb,
        "system/storage/run_dir_mb": _dir_bytes(run_dir) / mb,
    }
    if started is not None:
        out["system/run/duration_s"] = time.monotonic() - started
    return out


class ExperimentTracker(DualTrackLogger):
    """The MLflow ``ExperimentTracker`` API over :class:`~lightning_dualtrack.DualTrackLogger`.

    Args:
        experiment_name: the MLflow experiment (and W&B project when W&B is on).
        tracking_uri: else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``.
        run_name: the run's display name.
        wandb: also log to W&B (off by default: ExperimentTracker is an MLflow API).
        schema: declared types, a :class:`~lightning_dualtrack.tracking_config.Schema` or
            ``{"parameters": {name: type}, "metrics": {name: type}, "strict": bool}``.
        monitoring: log :func:`monitoring_metrics` when the run ends.
        **kwargs: any other ``DualTrackLogger`` argument (``save_dir``, ``wandb_mode``, ``log_model``...).
    """

    def __init__(
        self,
        experiment_name: str = "lightning_dualtrack",
        tracking_uri: str | None = None,
        run_name: str | None = None,
        *,
        wandb: bool = False,
        schema: Schema | Mapping[str, Any] | None = None,
        monitoring: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(experiment_name=experiment_name, run_name=run_name, tracking_uri=tracking_uri, wandb=wandb, **kwargs)
        if schema is not None and not isinstance(schema, Schema):
            schema = Schema(**dict(schema))
        self.schema: Schema | None = schema or None
        self.monitoring = monitoring
        self._session_started: float | None = None
        self._settings_given = {"experiment_name": experiment_name, "tracking_uri": tracking_uri, "run_name": run_name,
                                "wandb": wandb, **kwargs}

    def _touch(self) -> None:
        if self._session_started is None:
            self._session_started = time.monotonic()

    # -- the ExperimentTracker project's names ---------------------------------------------------------------------------------------
    def start_run(self, run_name: str | None = None) -> ExperimentTracker:
        """Start (or resume) the run; returns the tracker."""
        self._touch()
        super().start_run(run_name)
        return self

    def log_parameters(self, params: Mapping[str, Any]) -> None:
        """``log_params`` under ExperimentTracker's name (declared types checked)."""
        self.log_params(params)

    def log_visualization(self, figure: Any, name: str, step: int | None = None) -> None:
        """A matplotlib figure (or image) as a PNG in both backends: ``log_figure`` under ExperimentTracker's name."""
        self.log_figure(figure, name, step=step)

    # -- schema and monitoring on the shared methods ------------------------------------------------------------
    def log_params(self, params: Any) -> None:
        self._touch()
        if self.schema is not None and self.schema.parameters:
            params = self.schema.check_params(flatten_params(params))
        super().log_params(params)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self._touch()
        if self.schema is not None and self.schema.metrics:
            metrics = self.schema.check_metrics(metrics)
        super().log_metrics(metrics, step)

    def finalize(self, status: str = "success") -> None:
        started, self._session_started = self._session_started, None
        if self.monitoring and started is not None:
            try:
                super().log_metrics(monitoring_metrics(self.run_dir, started))
            except OSError:
                pass  # a figure about the run never stops the run from ending
        super().finalize(status)


class MLflowTracker(ExperimentTracker):
    """The CLIP HAR project's MLflow tracker: a run in MLflow only."""

    def __init__(self, experiment_name: str = "lightning_dualtrack", tracking_uri: str | None = None,
                 run_name: str | None = None, **kwargs: Any) -> None:
        kwargs.pop("wandb", None)
        super().__init__(experiment_name, tracking_uri, run_name, wandb=False, mlflow=True, **kwargs)


class WandbTracker(ExperimentTracker):
    """The CLIP HAR project's W&B tracker: a run in W&B only (``mode``: else ``WANDB_MODE``, else online with
    credentials, offline without)."""

    def __init__(self, project: str = "lightning_dualtrack", entity: str | None = None, run_name: str | None = None,
                 mode: str | None = None, group: str | None = None, **kwargs: Any) -> None:
        kwargs.pop("mlflow", None)
        super().__init__(project, None, run_name, wandb=True, mlflow=False, wandb_project=project,
                         wandb_entity=entity, wandb_mode=mode, wandb_group=group, **kwargs)


class MultiTracker(ExperimentTracker):
    """Both backends in one run: from an ``MLflowTracker`` and a ``WandbTracker`` (their settings are combined
    into this one logger; the parts themselves never start a run), or from keyword arguments.

    Example:
        >>> tracker = MultiTracker([MLflowTracker("har"), WandbTracker("har", mode="offline")])  # doctest: +SKIP
    """

    def __init__(self, trackers: Sequence[ExperimentTracker] = (), **kwargs: Any) -> None:
        settings: dict[str, Any] = {}
        for part in trackers:
            if not isinstance(part, ExperimentTracker):
                raise TypeError(f"Expected MLflowTracker/WandbTracker instances in `trackers`, but got {type(part).__name__}")
            given = {k: v for k, v in part._settings_given.items() if v is not None}
            if isinstance(part, WandbTracker):
                given.pop("experiment_name", None)  # the MLflow part names the experiment, if there is one
                settings.setdefault("experiment_name", part.name)
            settings.update({k: v for k, v in given.items() if k not in ("mlflow", "wandb")})
        if any(isinstance(p, MLflowTracker) for p in trackers) and not any(isinstance(p, WandbTracker) for p in trackers):
            settings["wandb"] = False
        settings.update(kwargs)
        settings.setdefault("wandb", not trackers or any(isinstance(p, WandbTracker) for p in trackers))
        settings["mlflow"] = settings.get("mlflow", not trackers or any(isinstance(p, MLflowTracker) for p in trackers))
        super().__init__(**settings)


def from_config(path: str | os.PathLike, **overrides: Any) -> ExperimentTracker:
    """A logger from a tracking config file; ``overrides`` (any logger argument) win over the file.

    Precedence: ``overrides`` > the environment > the file > the logger's defaults.
    """
    config = load_tracking_config(path)
    kwargs = {**config.logger_kwargs, **overrides}
    kwargs.setdefault("schema", config.schema)
    return ExperimentTracker(**kwargs)
