"""What a run is, folded from its journal records: the figures a backend's run description is written from.

Delivery folds every record a worker reads (and, when it resumes, those delivered before) into one
:class:`RunSummary`; at each session's end a sink that writes a description (MLflow's ``mlflow.note.content``)
renders it. Folding a record twice changes nothing (a retried batch is read again).

Example:
    >>> s = RunSummary()
    >>> for rec in ({"k": "metrics", "s": 1, "v": {"val/acc": 0.5}}, {"k": "metrics", "s": 2, "v": {"val/acc": 0.75}},
    ...             {"k": "metrics", "s": 3, "v": {"val/acc": 0.625}}):
    ...     s.add(rec)
    >>> s.best("val/acc")
    (0.75, 2, 'max')
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

EVAL_STAGES = ("val", "valid", "validation", "test")
_FIRST_SEGMENT = re.compile(r"[/_.\-]")
# a metric whose name says it is an error goes down as the model gets better; anything else (accuracy, F1...) up
_LOWER_IS_BETTER = re.compile(r"loss|err|mae|mse|rmse|perplexity|ppl|wer|cer|nll|distance|time|latency", re.IGNORECASE)


def stage_of(key: str) -> str | None:
    """The evaluation stage a metric key belongs to (``val/acc``, ``val_loss``, ``test/f1``), else None."""
    first = _FIRST_SEGMENT.split(key, maxsplit=1)[0].lower()
    return first if first in EVAL_STAGES else None


def better(key: str) -> str:
    """``min`` for a metric whose name says lower is better (``loss``, ``error``...), else ``max``."""
    return "min" if _LOWER_IS_BETTER.search(key) else "max"


@dataclass
class _Series:
    low: tuple[float, int] | None = None
    high: tuple[float, int] | None = None
    last: tuple[float, int] | None = None

    def add(self, value: float, step: int) -> None:
        if not math.isfinite(value):
            return
        if self.low is None or value < self.low[0]:
            self.low = (value, step)
        if self.high is None or value > self.high[0]:
            self.high = (value, step)
        if self.last is None or step >= self.last[1]:
            self.last = (value, step)


@dataclass
class RunSummary:
    """Params (latest values), evaluation metrics (lowest, highest, last with their steps), what a
    ``ModelCheckpoint`` monitored, the last session's status and the user's own description tag."""

    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, _Series] = field(default_factory=dict)
    monitor: tuple[str, str] | None = None  # (key, "min" | "max") of the checkpoint callback
    status: str | None = None
    user_description: bool = False  # the user set ``mlflow.note.content`` (never overwritten)

    def add(self, rec: Mapping[str, Any]) -> None:
        kind = rec.get("k")
        values = rec.get("v")
        if kind == "metrics" and isinstance(values, Mapping):
            step = rec.get("s") if isinstance(rec.get("s"), int) else 0
            for key, value in values.items():
                if stage_of(str(key)) and isinstance(value, (int, float)):
                    self.metrics.setdefault(str(key), _Series()).add(float(value), step)
        elif kind == "params" and isinstance(values, Mapping):
            self.params.update(values)
            self.params.update(rec.get("latest") or {})
        elif kind == "tags" and isinstance(values, Mapping):
            if "mlflow.note.content" in values:
                self.user_description = True
        elif kind == "model" and rec.get("checkpoint"):
            for settings in (rec.get("metadata") or {}).values():
                if isinstance(settings, Mapping) and settings.get("monitor"):
                    self.monitor = (str(settings["monitor"]), "min" if settings.get("mode") == "min" else "max")
        elif kind == "end":
            self.status = rec.get("status")
        elif kind == "start":
            self.status = "running"

    def best(self, key: str, mode: str | None = None) -> tuple[float, int, str] | None:
        """The best value of an evaluation metric, its step and the direction (``mode``, else by its name)."""
        series = self.metrics.get(key)
        mode = mode or better(key)
        point = (series.low if mode == "min" else series.high) if series else None
        return (point[0], point[1], mode) if point else None

    def last(self, key: str) -> tuple[float, int] | None:
        series = self.metrics.get(key)
        return series.last if series else None

    def keys(self, stage: str | tuple[str, ...], max_depth: int = 2) -> list[str]:
        """Evaluation metric keys of ``stage`` (e.g. ``("val", "valid", "validation")``) with at most ``max_depth``
        ``/``-separated parts (``val/acc``, not ``val/f1/calling``), sorted."""
        stages = (stage,) if isinstance(stage, str) else stage
        return sorted(k for k in self.metrics if stage_of(k) in stages and len(k.split("/")) <= max_depth)
