"""Describe the run: model summary, parameter counts, optimizer/scheduler and data settings; learning curves.

At fit start (rank 0), on every logger:

* ``log_hyperparams`` with ``model/class``, ``model/params_total``, ``model/params_trainable``,
  ``model/params_non_trainable``, ``model/size_mb``; ``optimizer/...`` (class and every param-group
  setting but the parameters themselves; ``optimizer/group<i>/...`` when there are several groups,
  ``optimizer<j>/...`` when there are several optimizers); ``lr_scheduler/...`` (class, interval,
  frequency, monitor and the scheduler's own scalar settings); ``data/...`` from
  ``trainer.datamodule.describe()`` when the DataModule has one (a mapping, nested keys joined by ``/``).
* ``log_text(summary, "model_summary.txt")`` on ``DualTrackLogger``-like loggers.

During fit it keeps the scalar ``trainer.callback_metrics`` of each epoch (validation keys -- a
leading ``val``/``valid``/``validation`` segment -- after each validation, the others at the end
of each training epoch; ``*_step`` keys are left out) and at fit end logs a learning-curve figure
(``log_figure(..., name="learning_curves")``, one panel per metric, train and val together) and the
history itself (``log_dict(..., "learning_curves.json")``) on ``DualTrackLogger``-like loggers.
The learning rate per step is Lightning's ``LearningRateMonitor``'s job.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.model_summary import ModelSummary
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from lightning_dualtrack.callbacks._logging import call_rich, is_rich
from lightning_dualtrack.plots import learning_curve_figure

__all__ = ["RunDescription"]

_EVAL_STAGES = {"val", "valid", "validation"}
_SKIPPED_STAGES = {"test", "predict"}
_SPLIT = re.compile(r"[/_]")
_SCHEDULER_SKIP = {"last_epoch", "verbose", "base_lrs", "_last_lr"}


def _scalar(value: Any) -> Any:
    """A param value loggers accept: str/int/float/bool, lists of those, or the value's repr."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float, bool)) for v in value):
        return list(value)
    return repr(value)


def _flatten(data: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}/{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name))
        else:
            flat[name] = _scalar(value)
    return flat


def _group_settings(group: Mapping[str, Any]) -> dict[str, Any]:
    """One param group's settings at their configured values: ``lr`` is the group's ``initial_lr`` when a
    scheduler has set one (the live ``lr`` is already the warm-up's first value); unset (None) options left out."""
    settings: dict[str, Any] = {}
    for key, value in group.items():
        if key in ("params", "name", "initial_lr") or value is None:
            continue
        settings[key] = _scalar(value)
    if group.get("initial_lr") is not None:
        settings["lr"] = _scalar(group["initial_lr"])
    settings["num_params"] = sum(p.numel() for p in group["params"])
    return settings


def optimizer_params(trainer: Trainer) -> dict[str, Any]:
    """The optimizers' and LR schedulers' settings as flat params (see the module docstring).

    Each setting once: a setting every param group shares is ``optimizer/<key>``; one that differs is
    ``optimizer/<group name>/<key>`` (the group's ``name``, else ``group<i>``).
    """
    params: dict[str, Any] = {}
    optimizers = trainer.optimizers
    for j, optimizer in enumerate(optimizers):
        prefix = "optimizer" if len(optimizers) == 1 else f"optimizer{j}"
        params[f"{prefix}/class"] = type(optimizer).__name__
        groups = optimizer.param_groups
        settings = [_group_settings(group) for group in groups]
        if len(groups) == 1:
            params.update({f"{prefix}/{key}": value for key, value in settings[0].items()})
            continue
        params[f"{prefix}/num_params"] = sum(s["num_params"] for s in settings)
        shared = {
            key: value
            for key, value in settings[0].items()
            if key != "num_params" and all(key in s and s[key] == value for s in settings[1:])
        }
        params.update({f"{prefix}/{key}": value for key, value in shared.items()})
        names = [str(group.get("name") or f"group{g}") for g, group in enumerate(groups)]
        if len(set(names)) != len(names):
            names = [f"group{g}" for g in range(len(groups))]
        for name, group_settings in zip(names, settings, strict=True):
            for key, value in group_settings.items():
                if key not in shared:
                    params[f"{prefix}/{name}/{key}"] = value
    configs = trainer.lr_scheduler_configs
    for j, config in enumerate(configs):
        prefix = "lr_scheduler" if len(configs) == 1 else f"lr_scheduler{j}"
        scheduler = config.scheduler
        params[f"{prefix}/class"] = type(scheduler).__name__
        params[f"{prefix}/interval"] = config.interval
        params[f"{prefix}/frequency"] = config.frequency
        if config.monitor is not None:
            params[f"{prefix}/monitor"] = config.monitor
        state = scheduler.state_dict() if hasattr(scheduler, "state_dict") else {}
        for key, value in state.items():
            if key.startswith("_") or key in _SCHEDULER_SKIP or value is None:
                continue
            # scalars only: LambdaLR's `lr_lambdas` is a list of empty dicts (its lambdas do not serialise)
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, (str, int, float, bool)):
                params[f"{prefix}/{key}"] = value
    return params


def model_params(pl_module: LightningModule, summary: ModelSummary) -> dict[str, Any]:
    total, trainable = summary.total_parameters, summary.trainable_parameters
    return {
        "model/class": type(pl_module).__name__,
        "model/params_total": total,
        "model/params_trainable": trainable,
        "model/params_non_trainable": total - trainable,
        "model/size_mb": round(summary.model_size, 3),
    }


class RunDescription(Callback):
    """Log what the run is (model, optimisation, data) at fit start and its learning curves at fit end.

    Args:
        summary_depth: depth of the model summary text (``ModelSummary(max_depth=...)``).
        learning_curves: collect epoch metrics and log the learning-curve figure at fit end.

    Example:
        >>> RunDescription(summary_depth=2).summary_depth
        2
    """

    def __init__(self, summary_depth: int = 2, learning_curves: bool = True) -> None:
        super().__init__()
        self.summary_depth = summary_depth
        self.learning_curves = learning_curves
        #: metric key -> [(epoch, value), ...], gathered during fit
        self.history: dict[str, list[tuple[int, float]]] = {}

    # ----------------------------------------------------------------- fit start
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.history = {}
        if not trainer.is_global_zero:
            return
        summary = ModelSummary(pl_module, max_depth=self.summary_depth)
        params = model_params(pl_module, summary)
        params.update(optimizer_params(trainer))
        params.update(self._data_params(trainer))
        text = str(summary)
        for logger in trainer.loggers:
            logger.log_hyperparams(params)
            if is_rich(logger):
                call_rich("RunDescription", logger, "log_text", text, name="model_summary.txt")

    @staticmethod
    def _data_params(trainer: Trainer) -> dict[str, Any]:
        describe = getattr(getattr(trainer, "datamodule", None), "describe", None)
        if not callable(describe):
            return {}
        try:
            description = describe()
        except Exception as error:  # noqa: BLE001 - a description must never stop training
            rank_zero_warn(f"RunDescription: datamodule.describe() failed: {type(error).__name__}: {error}")
            return {}
        if not isinstance(description, Mapping):
            rank_zero_warn(
                f"RunDescription: expected datamodule.describe() to return a mapping, got "
                f"{type(description).__name__}"
            )
            return {}
        return _flatten(description, "data")

    # ----------------------------------------------------------------- history
    def _record(self, trainer: Trainer, evaluation: bool) -> None:
        if not self.learning_curves or not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch
        for key, value in trainer.callback_metrics.items():
            stage = _SPLIT.split(key, maxsplit=1)[0].lower()
            if key.endswith("_step") or stage in _SKIPPED_STAGES or (stage in _EVAL_STAGES) != evaluation:
                continue
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    continue
                value = value.item()
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.history.setdefault(key, []).append((epoch, float(value)))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._record(trainer, evaluation=True)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record(trainer, evaluation=False)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.learning_curves or not trainer.is_global_zero or not self.history:
            return
        history = {key: [list(point) for point in points] for key, points in self.history.items()}
        for logger in trainer.loggers:
            if is_rich(logger):
                call_rich(
                    "RunDescription",
                    logger,
                    "log_figure",
                    learning_curve_figure(self.history, xlabel="epoch"),
                    name="learning_curves",
                    step=trainer.global_step,
                )
                call_rich("RunDescription", logger, "log_dict", history, name="learning_curves.json")
