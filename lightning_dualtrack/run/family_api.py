"""The logger's parent/child calls: ``child``, ``summarize_children`` and ``log_study_summary``.

A mixin of :class:`~lightning_dualtrack.logger.DualTrackLogger` (it uses the logger's ``_run``, ``_config``,
``_inherited`` and its log calls), so that ``logger.py`` stays the Lightning adapter. What a parent and a child
are, and how the summaries are computed: :mod:`lightning_dualtrack.run.family`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lightning_dualtrack.run import family


class FamilyLogging:
    """Parent and child runs (sweeps, folds)."""

    def child(self, run_name: str | None = None, job_type: str | None = None, tags: Mapping[str, Any] | None = None,
              **overrides: Any) -> Any:
        """A new logger whose run is a child of this one: same experiment, ``save_dir``, backends and settings as this
        logger was given (``overrides`` change any of them), the process's one delivery service.

        MLflow nests it under this run (``mlflow.parentRunId``); W&B puts it in the group named after this run, with
        ``job_type`` (``"trial"``, ``"fold"``). This run is started first, if it was not.

        Example:
            >>> with DualTrackLogger(experiment_name="cv", run_name="5-fold") as parent:  # doctest: +SKIP
            ...     for k in range(5):
            ...         fold = parent.child(run_name=f"fold-{k}", job_type="fold")
            ...         Trainer(logger=fold).fit(model, datamodule=FoldData(k))
            ...     parent.summarize_children(["val/acc"])
        """
        if job_type is not None and not isinstance(job_type, str):
            raise TypeError(f"Expected argument `job_type` to be a string or None, but got {type(job_type).__name__}")
        kwargs = {**self._inherited, "run_name": run_name, "tags": tags, **overrides, "parent": self}
        kid = type(self)(**kwargs)
        kid._set_job_type(job_type)
        return kid

    def summarize_children(self, keys: Iterable[str] | None = None, *, prefix: str = "summary/",
                           step: int | None = None) -> dict[str, float]:
        """Log each metric's mean and standard deviation over the children's last values into this run:
        ``<prefix><key>/mean``, ``<prefix><key>/std`` and ``<prefix>children`` (how many). ``keys``: None means
        every metric every child logged (but ``epoch``). Returns what was logged."""
        if isinstance(keys, str):
            keys = [keys]
        self._ensure_started()
        kids = family.children(self.run_dir)
        values = [family.last_values(k["run_dir"]) for k in kids]
        summary = family.fold_summary(values, keys)
        metrics: dict[str, float] = {f"{prefix}children": float(len(kids))}
        for key, figures in summary.items():
            metrics[f"{prefix}{key}/mean"] = figures["mean"]
            metrics[f"{prefix}{key}/std"] = figures["std"]
        missing = sorted(set(keys or ()) - set(summary))
        if missing:
            logged = sorted(set().union(*values))[:20]
            self._run.messages.warn(f"summarize_children: no child of run {self.run_id} logged {missing}; "
                                    f"the children logged {logged}")
        self.log_metrics(metrics, step=step)
        return metrics

    def log_study_summary(self, study: Any, *, prefix: str = "study/", step: int | None = None) -> dict[str, float]:
        """Log an Optuna study's summary into this run: trial counts by state (``<prefix>n_trials``,
        ``n_complete``, ``n_pruned``, ``n_failed``...), ``<prefix>best_value`` and ``<prefix>best_trial`` as metrics,
        the best params as ``<prefix>best_params/<name>`` params, and the tags ``dualtrack.best_trial`` and
        ``dualtrack.best_run_id`` (the best trial's child run, when the objective set the trial's
        ``dualtrack_run_id`` user attribute). Call it once, at the end of the study. Returns the metrics."""
        if not hasattr(study, "trials"):
            raise TypeError(f"Expected argument `study` to be an optuna.Study, but got {type(study).__name__}")
        metrics, params, tags = family.study_summary(study, prefix)
        if not params:
            self._run.messages.warn(f"log_study_summary: the study has no complete trial of a single objective; "
                                    f"logged the trial counts only ({int(metrics[f'{prefix}n_trials'])} trials)")
        self.log_metrics(metrics, step=step)
        if params:
            self.log_params(params)
        if tags:
            self.set_tags(tags)
        return metrics
