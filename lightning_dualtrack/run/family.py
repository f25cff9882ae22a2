"""Parent and child runs: a sweep's trials or a cross-validation's folds under one parent run.

A child names its parent in ``run.json`` (``parent``: run id, directory, name and the child's job type); each
backend expresses that its own way (MLflow: the ``mlflow.parentRunId`` tag, so its UI shows the children as a
tree; W&B: ``group`` = the parent's run name, ``job_type`` = trial / fold). The parent's directory lists its
children (``children.jsonl``, one line per child; a child that forked is replaced by its fork), so that a parent
can summarise them -- in this process or after a restart -- from their journals:

* :func:`fold_summary`: each metric's mean and standard deviation over the children's last values;
* :func:`study_summary`: an Optuna study's trial counts by state, best value, best trial and best params
  (duck-typed: nothing here imports ``optuna``).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_dualtrack.core.io import RUN_FILE, append_json_line, read_json
from lightning_dualtrack.core.journal import JournalReader, now_ms

CHILDREN_FILE = "children.jsonl"
TRIAL_RUN_ID_ATTR = "dualtrack_run_id"  # an Optuna trial's user attribute naming its child run
_NOT_SUMMARISED = ("epoch",)


def parent_relation(parent: Any) -> dict[str, Any]:
    """The ``parent`` section of a child's ``run.json`` from a parent logger (started here, so that its directory
    and name exist) or a parent's run directory (a parent made by another process)."""
    if isinstance(parent, (str, os.PathLike)):
        run_dir = Path(parent)
        settings = read_json(run_dir / RUN_FILE)
        if not isinstance(settings, dict) or not settings.get("run_id"):
            raise ValueError(f"Expected argument `parent` to be a DualTrackLogger or a run directory (holding {RUN_FILE}), "
                             f"but got {str(parent)!r}, which holds no {RUN_FILE}")
        return {"run_id": settings["run_id"], "run_dir": str(run_dir.resolve()), "run_name": settings.get("run_name")}
    start = getattr(parent, "start_run", None)
    if not callable(start) or not hasattr(parent, "run_dir"):
        raise TypeError(f"Expected argument `parent` to be a DualTrackLogger or a run directory, but got "
                        f"{type(parent).__name__}")
    start()
    return {"run_id": parent.run_id, "run_dir": str(Path(parent.run_dir).resolve()),
            "run_name": parent._config.run_name}


def add_child(parent_dir: str | os.PathLike, run_id: str, run_dir: str | os.PathLike, run_name: str | None,
              job_type: str | None, replaces: str | None = None) -> None:
    """One line in the parent's ``children.jsonl``."""
    entry = {"run_id": run_id, "run_dir": os.path.abspath(run_dir), "run_name": run_name, "job_type": job_type,
             "t": now_ms()}
    if replaces:
        entry["replaces"] = replaces
    append_json_line(Path(parent_dir) / CHILDREN_FILE, entry)


def children(parent_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The parent's children in the order they were made; a child that forked is replaced by its fork."""
    entries: dict[str, dict[str, Any]] = {}
    try:
        with open(Path(parent_dir) / CHILDREN_FILE, encoding="utf-8") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("run_id"), str):
                    entries.pop(entry.get("replaces") or "", None)
                    entries[entry["run_id"]] = entry
    except OSError:
        return []
    return list(entries.values())


def last_values(run_dir: str | os.PathLike) -> dict[str, float]:
    """Each metric's last logged value in a run's journal."""
    out: dict[str, float] = {}
    for rec in JournalReader(run_dir):
        if rec.get("k") == "metrics" and isinstance(rec.get("v"), dict):
            out.update(rec["v"])
    return out


def fold_summary(values: Sequence[Mapping[str, float]], keys: Iterable[str] | None = None) -> dict[str, dict[str, float]]:
    """``{key: {"mean", "std", "n"}}`` over the children's values (``std``: population, numpy's default). ``keys``:
    None means every metric all children logged (but ``epoch``); a child without a key is left out of it.

    Example:
        >>> fold_summary([{"acc": 0.8}, {"acc": 0.9}, {"acc": 1.0}])
        {'acc': {'mean': 0.9, 'std': 0.08164965809277258, 'n': 3.0}}
    """
    present = [v for v in values if v]
    if keys is None:
        common = set.intersection(*(set(v) for v in present)) if present else set()
        keys = sorted(k for k in common if k not in _NOT_SUMMARISED)
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        xs = [float(v[key]) for v in present if key in v and isinstance(v[key], (int, float)) and math.isfinite(v[key])]
        if not xs:
            continue
        mean = math.fsum(xs) / len(xs)
        std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / len(xs))
        out[key] = {"mean": mean, "std": std, "n": float(len(xs))}
    return out


def study_summary(study: Any, prefix: str = "study/") -> tuple[dict[str, float], dict[str, Any], dict[str, str]]:
    """An Optuna study as the parent's ``(metrics, params, tags)``: ``<prefix>n_trials`` and one count per state
    (``n_complete``, ``n_pruned``, ``n_failed``, ``n_running``...); for a single-objective study with a complete
    trial, ``<prefix>best_value`` and ``<prefix>best_trial``, the best params as ``<prefix>best_params/<name>``,
    and the best trial's child run (its ``dualtrack_run_id`` user attribute) as the tag ``dualtrack.best_run_id``."""
    trials = list(study.get_trials(deepcopy=False) if hasattr(study, "get_trials") else study.trials)
    states = Counter(getattr(t.state, "name", str(t.state)).lower() for t in trials)
    metrics: dict[str, float] = {f"{prefix}n_trials": float(len(trials))}
    for state in ("complete", "pruned", "fail", "running", "waiting"):
        name = "failed" if state == "fail" else state
        metrics[f"{prefix}n_{name}"] = float(states.get(state, 0))
    params: dict[str, Any] = {}
    tags: dict[str, str] = {}
    directions = getattr(study, "directions", None) or [None]
    if len(directions) == 1 and states.get("complete"):
        best = study.best_trial
        metrics[f"{prefix}best_value"] = float(best.value)
        metrics[f"{prefix}best_trial"] = float(best.number)
        params = {f"{prefix}best_params/{k}": v for k, v in best.params.items()}
        tags["dualtrack.best_trial"] = str(best.number)
        run_id = (getattr(best, "user_attrs", None) or {}).get(TRIAL_RUN_ID_ATTR)
        if run_id:
            tags["dualtrack.best_run_id"] = str(run_id)
    return metrics, params, tags
