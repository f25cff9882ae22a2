"""Typed constructors for every journal record kind: the one place that spells the on-disk fields.

A record is one JSON object per journal line. The field names are short because the journal is
written on every log call; they are fixed (delivery, the sinks and ``dualtrack sync`` of older
runs read them):

=========  ==================================================================================
``k``      the record kind (``metrics``, ``params``, ``tags``, ``keymap``, ``file``, ``image``,
           ``table``, ``cm``, ``model``, ``register``, ``delete``, ``hist``, ``start``, ``end``)
``t``      wall-clock time of the log call, integer milliseconds since the epoch (kept on replay,
           so a resend is de-duplicated by MLflow's SQL store)
``s``      the step (an integer; Lightning's global step or the logger's own counter)
``v``      the values of ``metrics`` / ``params`` / ``tags`` / ``keymap`` records
=========  ==================================================================================

Each constructor documents the rest of its kind's fields. They return plain dicts (what
:class:`~lightning_dualtrack.core.journal.JournalWriter` appends), so a reader needs nothing of this module.

Example:
    >>> rec = metrics(3, {"loss": 0.5}, t=1000)
    >>> rec == {"k": "metrics", "t": 1000, "s": 3, "v": {"loss": 0.5}}
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lightning_dualtrack.core.journal import now_ms


def start(run_id: str, resumed: bool, t: int | None = None) -> dict[str, Any]:
    """``start``: one per process that writes the run. ``run_id``: the run's id; ``resumed``: whether
    the run directory already held a run (a continued run)."""
    return {"k": "start", "t": t or now_ms(), "run_id": run_id, "resumed": bool(resumed)}


def end(status: str, t: int | None = None) -> dict[str, Any]:
    """``end``: ``status`` is ``success``, ``failed`` or ``aborted``; a later ``start`` continues the run."""
    return {"k": "end", "t": t or now_ms(), "status": status}


def metrics(step: int, values: dict[str, float], t: int | None = None) -> dict[str, Any]:
    """``metrics``: ``s`` the step, ``v`` ``{key: float}`` (keys as the user gave them, after the key
    rules; MLflow's stored forms are in ``keymap`` records)."""
    return {"k": "metrics", "t": t or now_ms(), "s": step, "v": values}


def histograms(step: int, values: Mapping[str, tuple[float, float, Sequence[int]]], t: int | None = None) -> dict[str, Any]:
    """``hist``: ``s`` the step, ``v`` ``{key: {"min": lo, "max": hi, "counts": [n, ...]}}``: equal-width bins
    whose edges are ``linspace(min, max, len(counts) + 1)`` (two floats instead of every edge keep the journal
    small). W&B history histograms at the step (``watch``); MLflow has no histograms and skips them.

    Example:
        >>> histograms(2, {"gradients/w": (-1.0, 1.0, [3, 1])}, t=5)["v"]
        {'gradients/w': {'min': -1.0, 'max': 1.0, 'counts': [3, 1]}}
    """
    return {"k": "hist", "t": t or now_ms(), "s": step,
            "v": {k: {"min": float(lo), "max": float(hi), "counts": [int(c) for c in counts]} for k, (lo, hi, counts) in values.items()}}


def params(
    values: dict[str, Any], short_text: Mapping[str, str] | None = None, latest: Mapping[str, Any] | None = None,
    t: int | None = None,
) -> dict[str, Any]:
    """``params``: ``v`` ``{key: JSON value}`` (new keys only; where a backend's params cannot change, a changed value
    comes as ``key.vN``); ``short_text`` (optional) ``{key: text}`` what a backend that limits a param's length
    stores instead (a prefix pointing to the artifact holding the value whole); ``latest`` (optional) ``{key:
    value}`` the latest value of changed params, which backends with changeable params keep under ``key``.
    (Runs of earlier versions wrote these as ``mlflow`` and ``wandb``.)"""
    rec: dict[str, Any] = {"k": "params", "t": t or now_ms(), "v": values}
    if short_text:
        rec["short_text"] = dict(short_text)
    if latest:
        rec["latest"] = dict(latest)
    return rec


def tags(values: dict[str, str], t: int | None = None) -> dict[str, Any]:
    """``tags``: ``v`` ``{key: str}``; MLflow tags and W&B ``key:value`` tags."""
    return {"k": "tags", "t": t or now_ms(), "v": values}


def keymap(mapping: dict[str, str], sink: str = "mlflow", t: int | None = None) -> dict[str, Any]:
    """``keymap``: ``v`` ``{original key: stored key}`` for keys backend ``sink`` stores under another name (its
    key rules); a replay maps keys exactly as the live run did. (Earlier runs' records have no ``sink``: MLflow.)"""
    return {"k": "keymap", "t": t or now_ms(), "sink": sink, "v": mapping}


def file(path: str, t: int | None = None) -> dict[str, Any]:
    """``file``: ``path`` a file or directory relative to the run directory, under ``artifacts/``;
    uploaded to both backends at ``path`` minus the ``artifacts/`` prefix."""
    return {"k": "file", "t": t or now_ms(), "path": path}


def image(key: str, path: str, step: int | None, caption: str | None = None, t: int | None = None) -> dict[str, Any]:
    """``image``: ``key`` the W&B history key, ``path`` the PNG (MLflow artifact), ``s`` the step
    (0 when none was given), ``caption`` (optional, W&B)."""
    return {"k": "image", "t": t or now_ms(), "s": step if step is not None else 0, "key": key, "path": path, "caption": caption}


def table(key: str, path: str, step: int | None, media: Sequence[str] = (), t: int | None = None) -> dict[str, Any]:
    """``table``: ``key`` the W&B key, ``path`` a JSON file ``{"columns": [...], "data": [[...]]}``
    whose image cells are ``{"_image": rel path}``, ``media`` those PNGs, ``s`` the step."""
    return {"k": "table", "t": t or now_ms(), "s": step if step is not None else 0, "key": key, "path": path, "media": list(media)}


def confusion_matrix(key: str, base: str, step: int | None, t: int | None = None) -> dict[str, Any]:
    """``cm``: ``path`` JSON ``{title, class_names, matrix, step}``, ``csv`` the same as CSV, ``png`` and
    ``png_norm`` the counts and row-normalised pictures (drawn in delivery if missing), ``key``."""
    return {
        "k": "cm",
        "t": t or now_ms(),
        "s": step if step is not None else 0,
        "key": key,
        "path": f"{base}.json",
        "csv": f"{base}.csv",
        "png": f"{base}.png",
        "png_norm": f"{base}_normalized.png",
    }


def model(
    path: str,
    ap: str,
    aliases: Sequence[str] = (),
    registered_model_name: str | None = None,
    description: str | None = None,
    registry_aliases: Sequence[str] = (),
    metadata: Mapping[str, Any] | None = None,
    t: int | None = None,
    wandb_name: str | None = None,
) -> dict[str, Any]:
    """``model``: ``path`` an MLflow model directory in the run, ``ap`` its MLflow artifact path,
    ``aliases`` W&B artifact aliases, ``registered_model_name`` / ``description`` /
    ``registry_aliases`` the MLflow Model Registry entry (optional), ``metadata`` W&B artifact metadata,
    ``wandb_name`` the W&B artifact collection (default: the run's ``model-<run id>``)."""
    rec = {
        "k": "model",
        "t": t or now_ms(),
        "path": path,
        "ap": ap,
        "aliases": list(aliases),
        "registered_model_name": registered_model_name,
        "description": description,
        "registry_aliases": list(registry_aliases),
        "metadata": dict(metadata or {}),
    }
    if wandb_name:
        rec["wandb_name"] = wandb_name
    return rec


def checkpoint(path: str, aliases: Sequence[str], wandb_name: str, metadata: Mapping[str, Any], t: int | None = None) -> dict[str, Any]:
    """``model`` with ``checkpoint: true``: ``path`` the uploaded (redacted) copy of a ``.ckpt``,
    ``ap`` ``checkpoints``, ``aliases`` (``latest``, ``best``, ``epoch-N``), ``wandb_name`` the W&B
    model artifact, ``metadata`` ``{score, original_filename}``."""
    return {
        "k": "model",
        "t": t or now_ms(),
        "path": path,
        "ap": "checkpoints",
        "aliases": list(aliases),
        "wandb_name": wandb_name,
        "metadata": dict(metadata),
        "checkpoint": True,
    }


def register(
    name: str, model_uri: str | None, ap: str, description: str | None = None, aliases: Sequence[str] = (), t: int | None = None
) -> dict[str, Any]:
    """``register``: register ``model_uri`` (else this run's ``ap``) as ``name`` in the MLflow Model
    Registry, with ``description`` and ``aliases``."""
    return {"k": "register", "t": t or now_ms(), "name": name, "model_uri": model_uri, "ap": ap, "description": description, "aliases": list(aliases)}


def delete(path: str, ap: str, reason: str, wandb_name: str | None = None, metadata: Mapping[str, Any] | None = None,
           t: int | None = None) -> dict[str, Any]:
    """``delete``: a payload logged by an earlier ``model`` record (``path`` in the run directory, ``ap`` its artifact
    path) is gone where it came from: a ``ModelCheckpoint`` removed the checkpoint from its top k (``reason`` says
    so). Backends remove their copy (MLflow: the artifact ``<ap>/<file name>``; W&B: the version of ``wandb_name``
    whose ``metadata["original_filename"]`` matches, where it can), never one a registered model version points
    to. Removing what is already gone is done: replays are idempotent.

    Example:
        >>> delete("artifacts/checkpoints/epoch=0.ckpt", "checkpoints", "left the top 2", t=5)["k"]
        'delete'
    """
    rec: dict[str, Any] = {"k": "delete", "t": t or now_ms(), "path": path, "ap": ap, "reason": reason,
                           "metadata": dict(metadata or {})}
    if wandb_name:
        rec["wandb_name"] = wandb_name
    return rec
