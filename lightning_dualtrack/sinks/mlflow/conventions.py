"""MLflow's own conventions, which its UI reads: standard tags and the run's description.

* **Standard tags.** The run page's "Created by" is ``mlflow.user``; "Source" is ``mlflow.source.name`` and
  ``mlflow.source.type`` (with ``mlflow.source.git.commit``). The journal keeps the run's metadata generic
  (``dualtrack.user``, ``dualtrack.entry_point``, ``dualtrack.git_commit``: :mod:`lightning_dualtrack.run.metadata`);
  :func:`standard_tags` adds MLflow's names beside them.
* **The description** (``mlflow.note.content``, markdown, shown on the run page): :func:`description` sums the run
  up from what delivery folded out of the journal (:class:`~lightning_dualtrack.core.summary.RunSummary`) and the
  other backends' identities: the model, the data, the best validation metric, the test metrics, where the other
  backends hold the run. Written at each session's end; never over a description the user set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from lightning_dualtrack.core.redact import redact_string
from lightning_dualtrack.core.summary import RunSummary
from lightning_dualtrack.sinks.mlflow.keys import key_change_reason, sanitize_mlflow_key

NOTE_TAG = "mlflow.note.content"
#: journal metadata tag -> MLflow's standard tag
STANDARD_TAGS = {
    "dualtrack.user": "mlflow.user",
    "dualtrack.entry_point": "mlflow.source.name",
    "dualtrack.git_commit": "mlflow.source.git.commit",
}
_EVAL = ("val", "valid", "validation")
_PRIMARY = ("acc", "accuracy", "f1_macro", "f1", "auroc", "map", "loss")  # which metric to show when none is monitored
_MAX_NOTE = 8000  # MLflow's tag value limit
_AFTER_STAGE = re.compile(r"[/_.\-]")  # val/acc, val_acc -> acc


def standard_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """MLflow's standard tags for the metadata in ``tags`` (empty when there is none).

    Example:
        >>> standard_tags({"dualtrack.user": "ana", "dualtrack.entry_point": "/src/train.py", "lr": "0.1"})
        {'mlflow.user': 'ana', 'mlflow.source.name': '/src/train.py', 'mlflow.source.type': 'LOCAL'}
    """
    out = {STANDARD_TAGS[k]: str(v) for k, v in tags.items() if k in STANDARD_TAGS and v not in (None, "")}
    if "mlflow.source.name" in out:
        out["mlflow.source.type"] = "LOCAL"  # a script or command run on this machine (MLflow's SourceType)
    return out


def experiment_tags(value: Any, warnings: list[str]) -> dict[str, str]:
    """The ``mlflow_experiment_tags`` argument as ``{key: value}`` strings MLflow takes; a key MLflow refuses is stored
    in the form it accepts, with a warning naming both (as for metric keys); secrets in values are masked.

    Example:
        >>> experiment_tags({"task": "classification", "team/../x": 1}, notes := [])
        {'task': 'classification', 'team/__/x': '1'}
        >>> notes[0].split(":")[0]
        "mlflow_experiment_tags 'team/../x' is stored as 'team/__/x'"
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"Expected argument `mlflow_experiment_tags` to be a mapping of tag names to values, but got {value!r}")
    out = {}
    for key, tag in value.items():
        stored = sanitize_mlflow_key(str(key))
        if stored != str(key):
            warnings.append(f"mlflow_experiment_tags {str(key)!r} is stored as {stored!r}: {key_change_reason(str(key), stored)}")
        out[stored] = redact_string(str(tag))[:_MAX_NOTE]
    return out


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _count(n: Any) -> str:
    try:
        n = float(n)
    except (TypeError, ValueError):
        return str(n)
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f}"


def _model_line(p: Mapping[str, Any]) -> str | None:
    cls = p.get("model/class") or str(p.get("model/class_path") or "").rsplit(".", 1)[-1] or None
    name = p.get("model/model_name") or p.get("model_name")
    size = p.get("model/params_total")
    parts = [f"**{cls}**" if cls else None, f"`{name}`" if name else None,
             f"{_count(size)} parameters" if size is not None else None]
    parts = [x for x in parts if x]
    return ", ".join(parts) if parts else None


def _data_line(p: Mapping[str, Any]) -> str | None:
    parts = []
    if p.get("data/source"):
        parts.append(f"{p['data/source']}")
    if p.get("data/num_classes") is not None:
        parts.append(f"{p['data/num_classes']} classes")
    splits = [(s, p.get(f"data/num_samples/{s}")) for s in ("train", "val", "test")]
    total = p.get("data/num_samples/total")
    if total is not None:
        shown = " · ".join(f"{s} {n}" for s, n in splits if n is not None)
        parts.append(f"{total} samples" + (f" ({shown})" if shown else ""))
    batch = p.get("data/batch_size") or p.get("batch_size")
    if batch is not None:
        parts.append(f"batch {batch}")
    return ", ".join(map(str, parts)) if parts else None


def _primary(keys: Sequence[str]) -> list[str]:
    """Evaluation keys in the order a person looks for them: accuracy-like first, then F1..., loss, the others."""

    def rank(key: str) -> tuple[int, str]:
        name = _AFTER_STAGE.split(key, maxsplit=1)[-1].lower()
        return (_PRIMARY.index(name) if name in _PRIMARY else len(_PRIMARY), key)

    return sorted(keys, key=rank)


def description(summary: RunSummary, *, run_name: str | None, run_dir: str, others: Sequence[Mapping[str, Any]] = ()) -> str:
    """The run's description, markdown: what ``mlflow.note.content`` shows on the run page.

    ``others``: per other backend ``{"title", "url", "where", "upload"}`` (its identity as delivery knows it, and
    the command that uploads what it recorded locally, if any).
    """
    p = summary.params
    lines = []
    model = _model_line(p)
    if model:
        lines.append(f"- **Model**: {model}")
    data = _data_line(p)
    if data:
        lines.append(f"- **Data**: {data}")
    if summary.monitor and summary.best(*summary.monitor):
        key, mode = summary.monitor
        value, step, _ = summary.best(key, mode)
        lines.append(f"- **Best {key}**: {_num(value)} at step {step} ({mode}; the checkpoint callback's monitor)")
    else:
        for key in _primary(summary.keys(_EVAL))[:2]:
            value, step, mode = summary.best(key)
            lines.append(f"- **Best {key}**: {_num(value)} at step {step} ({mode})")
    tests = _primary(summary.keys("test"))[:4]
    if tests:
        lines.append("- **Test**: " + " · ".join(f"{k} {_num(summary.last(k)[0])}" for k in tests))
    for other in others:
        title = other.get("title") or "backend"
        if other.get("url"):
            where = f"[{other['url']}]({other['url']})"
        else:
            where = f"`{other.get('where')}`"
        upload = f" (to upload: `{other['upload']}`)" if other.get("upload") else ""
        lines.append(f"- **{title}**: {where}{upload}")
    status = f", last session: {summary.status}" if summary.status and summary.status != "running" else ""
    lines.append(f"- **Run directory**: `{run_dir}`{status}")
    head = f"**{run_name}**\n\n" if run_name else ""
    note = head + "\n".join(lines) + "\n\n_Written by lightning_dualtrack at each session's end; a `mlflow.note.content` tag you set is kept instead._"
    return note[:_MAX_NOTE]
