"""``DualTrackLogger``: a Lightning logger that records every event once and delivers it to every backend.

This module is the adapter: Lightning's ``Logger`` interface and the tracker API for direct use. A
call validates cheaply (:mod:`lightning_dualtrack.run.policy`), writes any payload file into the run
directory (:mod:`~lightning_dualtrack.run.payloads`) and appends one record to the run's journal
(:mod:`~lightning_dualtrack.run.session`). The process's delivery service delivers the journal to MLflow, W&B
(and any other registered backend) in the background (:mod:`lightning_dualtrack.delivery`); ``dualtrack sync
RUN_DIR`` delivers whatever was not delivered when the process ended. Nothing here imports ``mlflow`` or ``wandb``.

Example:
    >>> from lightning_dualtrack import DualTrackLogger
    >>> with DualTrackLogger(experiment_name="demo", wandb_mode="offline") as run:  # doctest: +SKIP
    ...     run.log_params({"lr": 0.1})
    ...     run.log_metrics({"loss": 0.5}, step=1)
"""

from __future__ import annotations

import inspect
import os
import sys
import weakref
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from lightning.fabric.utilities.logger import _add_prefix
from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lightning_dualtrack.core.journal import JournalWriter
from lightning_dualtrack.core.messages import DualTrackWarning
from lightning_dualtrack.core.values import short
from lightning_dualtrack.run import compat, jobs
from lightning_dualtrack.run.compat import wait_for_identity
from lightning_dualtrack.run.config import backend_docs, backend_parameters, new_run_id, resolve_config
from lightning_dualtrack.run.family import parent_relation
from lightning_dualtrack.run.family_api import FamilyLogging
from lightning_dualtrack.run.media_api import MediaLogging
from lightning_dualtrack.run.model_api import ModelLogging
from lightning_dualtrack.run.resume import resume_target
from lightning_dualtrack.run.session import Run

__all__ = ["DualTrackLogger", "DualTrackWarning", "create_tracker", "new_run_id"]


class DualTrackLogger(MediaLogging, ModelLogging, FamilyLogging, Logger):
    """Log to MLflow and Weights & Biases (and any other registered backend) at once, without slowing training or
    losing data.

    Args:
        experiment_name: MLflow experiment (created if missing); the default W&B project. Else
            ``MLFLOW_EXPERIMENT_NAME``, else ``lightning_dualtrack``.
        run_name: display name of the run in every backend (else a generated one, the same in all).
        tags: ``{key: value}``; MLflow tags and W&B ``key:value`` tags.
        prefix: joined to every metric key with ``-`` (as Lightning's loggers do).
        save_dir: where run directories are made (``save_dir/<run id>/``).
        log_model: ``False``; ``True`` (best and last checkpoint at the end); ``"all"`` (every checkpoint).
            Uploads are copies with the saved hyperparameters redacted; local checkpoints are untouched.
        run_id: continue this run (its directory under ``save_dir``) or start one with this id.
        resume: continue the most recent run in ``save_dir`` (ignored when ``run_id`` is given).
        flush_interval: seconds between deliveries (records reach the journal at once regardless).
        strict: raise on bad input and backend failures instead of warning.
        finalize_timeout: at most this many seconds in ``finalize`` waiting for delivery; the rest
            stays in the journal for ``dualtrack sync``.
        log_system_info: journal the command line, versions, devices and the package list at the start.
        deliver: deliver in the background (the process's delivery service); False: journal only, deliver
            later with ``dualtrack sync``.
        system_metrics: sample CPU, memory, disk, network and GPU of the training process tree in the delivery
            service (``True``: every 5 s; a number: every that many seconds; ``False``: off): MLflow's own
            ``system/...`` names, and W&B's own system monitor. See docs/anchors.md.
        resume_from: a checkpoint this logger's run wrote: continue that run (see docs/training-life.md).
        resume_job: in a job its scheduler restarts (SLURM requeue, torchelastic), continue the run the job's
            earlier process made; False: a new run each time.
        parent: a parent logger (or its run directory): this run is its child (see :meth:`child`).
{backends}
    """

    def __init__(
        self,
        experiment_name: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        *,
        prefix: str = "",
        save_dir: str | os.PathLike = "dualtrack_runs",
        log_model: bool | Literal["all"] = False,
        run_id: str | None = None,
        resume: bool = False,
        flush_interval: float = 1.0,
        strict: bool = False,
        finalize_timeout: float = 30.0,
        log_system_info: bool = True,
        deliver: bool = True,
        system_metrics: bool | float = True,
        resume_from: str | os.PathLike | None = None,
        resume_job: bool = True,
        parent: Any = None,
        **backends: Any,
    ) -> None:
        super().__init__()
        if experiment_name is None:  # MLflow's own variable, like MLFlowLogger; then the package default
            experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "lightning_dualtrack"
        self._prefix = str(prefix or "")
        # what a child run is made with (``child``): every setting of this logger but its run's identity
        self._inherited = dict(experiment_name=experiment_name, prefix=prefix, save_dir=save_dir, log_model=log_model,
                               flush_interval=flush_interval, strict=strict, finalize_timeout=finalize_timeout,
                               log_system_info=log_system_info, deliver=deliver, system_metrics=system_metrics,
                               resume_job=resume_job, **backends)
        explicit = run_id is not None or resume
        resumed_note = None
        if resume_from is not None:
            run_id, save_dir, resumed_note = resume_target(save_dir, resume_from, run_id, strict)
            explicit = explicit or run_id is not None
        self._config = resolve_config(
            experiment_name, run_name, tags, backends=backends, save_dir=save_dir, log_model=log_model, run_id=run_id,
            resume=resume, flush_interval=flush_interval, strict=strict, finalize_timeout=finalize_timeout,
            log_system_info=log_system_info, deliver=deliver, system_metrics=system_metrics,
        )  # fmt: skip
        if parent is not None:
            self._config.relations["parent"] = parent_relation(parent)
        if not explicit and resume_job and rank_zero_only.rank == 0:
            self._continue_job()
        if resumed_note and rank_zero_only.rank == 0:
            print(f"[dualtrack] {resumed_note}", file=sys.stderr)
        self._run = Run(self._config)
        for backend in self._config.backends.values():
            for message in backend.warnings:  # a value a backend would refuse: what was done instead
                self._run.messages.fail(message)
        self._figure_counts: dict[str, int] = {}
        self._watcher: compat.Watcher | None = None
        # the run ends when this object is gone (a sweep drops each trial's logger); not at exit: the run's own
        # exit handler ends it there, with the right status
        weakref.finalize(self, self._run.owner_gone).atexit = False
        if rank_zero_only.rank == 0:
            self._run.start_delivery()  # its start-up overlaps the model's setup

    # -- Lightning's Logger interface -------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._config.experiment_name

    @property
    def version(self) -> str:
        return self._config.run_id

    @property
    def root_dir(self) -> str:
        return str(self._config.root)

    @property
    def save_dir(self) -> str:
        """The run directory: Lightning saves LightningCLI's config and checkpoints under it."""
        return str(self._run.run_dir or self._config.root / self._config.run_id)

    @property
    def log_dir(self) -> str:
        return self.save_dir

    @property
    def run_dir(self) -> Path:
        return Path(self.save_dir)

    @property
    def run_id(self) -> str:
        return self._config.run_id

    @property
    def tracking_uri(self) -> str | None:
        """MLflow's tracking URI (without credentials); None when MLflow is off."""
        return self._config.setting("mlflow", "tracking_uri") if self._config.enabled("mlflow") else None

    @property
    def backends(self) -> dict[str, dict[str, Any]]:
        """Every registered backend as resolved for this run: ``enabled``, its settings (what ``run.json`` holds; no
        credential) and, for one asked for but turned off by the environment, ``off`` (why)."""
        return {name: b.section() for name, b in self._config.backends.items()}

    @property
    def mlflow_run_id(self) -> str | None:
        """The MLflow run id: waits (bounded, once) while the delivery process is still creating the run.

        None when MLflow is off, the run has not started, or the backend could not be reached in
        ``identity_timeout`` seconds (then it is not waited for again; delivery goes on in the background).
        """
        return self._mlflow_identity().get("run_id")

    @property
    def experiment_id(self) -> str | None:
        """The MLflow experiment id (``MLFlowLogger.experiment_id``); same wait as :attr:`mlflow_run_id`."""
        return self._mlflow_identity().get("experiment_id")

    def _mlflow_identity(self) -> dict[str, Any]:
        return wait_for_identity(self._run, "mlflow") if self._config.enabled("mlflow") else {}

    @property
    def wandb_run_id(self) -> str | None:
        return self._config.run_id if self._config.enabled("wandb") else None

    @property
    def last_report(self) -> dict[str, Any] | None:
        """Each backend's delivery state as of the last ``finalize`` (None before)."""
        return self._run.last_report

    @property
    @rank_zero_experiment
    def experiment(self) -> DualTrackLogger:
        """The run itself (started on first use); on ranks other than zero, a no-op stand-in."""
        self._ensure_started()
        return self

    @rank_zero_only
    @compat.guarded("log_hyperparams")
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        self.log_params(params)

    @rank_zero_only
    @compat.guarded("log_metrics")
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Record metrics at ``step`` (Lightning's global step; an own counter when None)."""
        if self._run.journal is None:
            self._ensure_started()  # also registers the atexit end of the run
        if self._prefix:
            metrics = _add_prefix(metrics, self._prefix, "-")  # Lightning's LOGGER_JOIN_CHAR
        if self._watcher is not None and self._watcher.due(step):
            metrics = {**metrics, **(self._guarded("watch", self._watcher.stats) or {})}
        self._run.log_metrics(metrics, step)

    @rank_zero_only
    def save(self) -> None:
        """Nothing to do: every record is already in the journal when its log call returns."""

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """End the session in every backend (bounded by ``finalize_timeout``); the backend runs stay open for a
        next session of this run (``trainer.test`` after ``fit``) until :meth:`end_run`. Idempotent."""
        self._run.finalize(status)

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Note the checkpoint in the checkpoint index (``resume_from``); with ``log_model="all"`` upload each new
        checkpoint, with True the best and last at the end. A checkpoint the callback removes (top-k eviction) is
        removed from the backends too (a ``delete`` record)."""
        self._run.note_checkpoint(checkpoint_callback)
        if not self._config.log_model:
            return
        if self._config.log_model == "all" or getattr(checkpoint_callback, "save_top_k", None) == -1:
            self._ensure_started()
            for rec in self._run.payloads.checkpoints(checkpoint_callback):
                self._run.append(rec)
        # finalize logs the best and last (log_model=True) and mirrors the callback's last removals (all)
        self._run.checkpoint_callbacks[id(checkpoint_callback)] = checkpoint_callback

    # -- tracker API (direct use) -------------------------------------------------------------------
    def start_run(self, run_name: str | None = None) -> DualTrackLogger:
        """Start (or resume) the run; returns the logger. Called for you on first use."""
        if run_name is not None and self._run.journal is None:
            self._config.run_name = run_name
        self._ensure_started()
        return self

    def end_run(self, status: str = "success") -> None:
        """End the run in both backends now (after Lightning's ``finalize`` the W&B run stays open for a next stage).

        ``status``: ``success``, ``failed``, ``aborted`` or ``pruned`` (a trial a sweep stopped early: MLflow
        ``KILLED`` and the tag ``dualtrack.status=pruned``, W&B exit code 255 and config ``dualtrack/status``). A
        run whose session already ended with success is given the new status by a short session of its own."""
        self._run.ending = True
        try:
            self.finalize(status)
        finally:
            self._run.ending = False

    def __enter__(self) -> DualTrackLogger:
        return self.start_run()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            status = "success"
        elif issubclass(exc_type, KeyboardInterrupt):
            status = "aborted"
        elif compat.is_pruned(exc):
            status = "pruned"
        else:
            status = "failed"
        self.end_run(status)

    @rank_zero_only
    @compat.guarded("log_params")
    def log_params(self, params: Mapping[str, Any] | Namespace | Any) -> None:
        """Record params, flattened with ``/``; secrets redacted; see the README for the policies."""
        self._ensure_started()
        self._guarded("log_params", self._run.log_params, params)

    @rank_zero_only
    @compat.guarded("set_tags")
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._ensure_started()
        self._guarded("set_tags", self._run.set_tags, tags)

    # -- internals ------------------------------------------------------------------------------------
    def _continue_job(self) -> None:
        """In a job a scheduler may restart: the run this logger's slot had in the job's earlier process, if any."""
        config = self._config
        job = jobs.assign(config.root, config.experiment_name, config.run_name, config.run_id)
        if job is None:
            return
        config.run_id, config.job = job.run_id, job
        if job.continued:
            print(f"[dualtrack] {job.job.description} restarted: continuing run {job.run_id} (logger {job.slot} of the "
                  "process); resume_job=False starts a new run instead", file=sys.stderr)

    def _set_job_type(self, job_type: str | None) -> None:
        """A child's kind (``trial``, ``fold``): part of its ``parent`` relation, set before the run starts."""
        if job_type is not None and "parent" in self._config.relations:
            self._config.relations["parent"]["job_type"] = job_type

    def _guarded(self, what: str, fn: Any, *args: Any) -> Any:
        """Run one log call's work; an input it did not foresee is a warning, never an error into training."""
        try:
            return fn(*args)
        except Exception as err:
            if self._config.strict:
                raise
            self._run.messages.warn(f"{what}: could not log this input ({type(err).__name__}: {short(str(err))}); nothing logged")
            return None
    def _append(self, record: dict[str, Any] | None) -> None:
        if record is not None:
            self._run.append(record)

    @rank_zero_only
    def _ensure_started(self) -> JournalWriter:
        return self._run.ensure_started()


DualTrackLogger.__init__.__signature__ = inspect.signature(DualTrackLogger.__init__).replace(  # type: ignore[attr-defined]
    parameters=[
        *(p for p in inspect.signature(DualTrackLogger.__init__).parameters.values() if p.kind != p.VAR_KEYWORD),
        *backend_parameters(),
    ]
)
DualTrackLogger.__doc__ = (DualTrackLogger.__doc__ or "").replace("{backends}", backend_docs())


def create_tracker(
    use_mlflow: bool = True,
    use_wandb: bool = True,
    experiment_name: str = "lightning_dualtrack",
    wandb_project: str | None = None,
    wandb_group: str | None = None,
    **kwargs: Any,
) -> DualTrackLogger:
    """The reference project's factory: a :class:`DualTrackLogger` with the given backends."""
    return DualTrackLogger(
        experiment_name=experiment_name,
        mlflow=use_mlflow,
        wandb=use_wandb,
        wandb_project=wandb_project,
        wandb_group=wandb_group,
        **kwargs,
    )
