"""Turning what users log into what the journal stores: flat params, float metrics, safe keys.

Everything here is a pure function or a small stateful map, cheap enough for the training thread.
Policies (also in the README, "What happens when..."):

* **Metric values**: bool, int, float, NumPy scalars and one-element tensors/arrays become floats.
  NaN and +-inf are kept (W&B stores them; MLflow stores NaN natively and +-inf as +-1.797e308).
  Strings, ``None``, multi-element tensors and other objects are dropped from the metrics with a
  warning that names the key and the value's type (once per key).
* **Params**: nested mappings, ``argparse.Namespace``, dataclasses and objects with ``__dict__`` are
  flattened with ``/``; lists and tuples of scalars are kept as lists (W&B config) and shown as their
  JSON text (MLflow); callables and other objects become their ``repr``. Nesting deeper than
  ``max_depth`` is stored as the JSON text of the remaining subtree.
* **MLflow keys**: characters outside ``[/\\w.\\- :]`` become ``_``; ``//``, leading/trailing ``/`` and
  ``.``/``..`` segments are removed; keys over 250 characters are cut and given a hash suffix. When two
  different keys would land on one stored key, the later one gets a ``_2``, ``_3``... suffix. Every key
  whose stored form differs is announced once and recorded (``dualtrack/key_map.json`` in the run).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import posixpath
import re
from collections.abc import Mapping
from enum import Enum
from pathlib import PurePath
from typing import Any

MLFLOW_MAX_KEY = 250
MLFLOW_MAX_PARAM_VALUE = 6000
MLFLOW_MAX_TAG_VALUE = 8000
_MLFLOW_BAD_CHARS = re.compile(r"[^/\w.\- :]")


class DroppedValue(ValueError):
    """A metric value that cannot be stored as a number."""


def to_float(value: Any) -> float:
    """Convert a metric value to a float, or raise :class:`DroppedValue` saying why not."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        return float(value)
    if value is None:
        raise DroppedValue("None is not a number")
    if isinstance(value, (str, bytes)):
        raise DroppedValue(f"a {type(value).__name__} is not a number (log it with set_tags or log_text)")
    numel = getattr(value, "numel", None)  # torch.Tensor
    if callable(numel):
        n = numel()
        if n != 1:
            raise DroppedValue(f"a tensor with {n} elements is not a scalar (shape {tuple(value.shape)})")
        return float(value.detach().float().cpu().item()) if hasattr(value, "detach") else float(value.item())
    size = getattr(value, "size", None)  # numpy scalar / array
    if isinstance(size, int) and hasattr(value, "dtype"):
        if size != 1:
            raise DroppedValue(f"an array with {size} elements is not a scalar (shape {getattr(value, 'shape', '?')})")
        try:
            return float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError) as err:
            raise DroppedValue(f"a {type(value).__name__} of dtype {value.dtype} is not a number") from err
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise DroppedValue(f"a {type(value).__name__} is not a number") from err


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _plain(value: Any) -> Any:
    """A JSON-compatible form of a leaf param value."""
    if _is_scalar(value):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return value
    if isinstance(value, Enum):
        return _plain(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "item") and getattr(value, "size", getattr(value, "numel", lambda: 2)) in (1,):
        return _plain(value.item())
    numel = getattr(value, "numel", None)
    if callable(numel) and numel() == 1:
        return _plain(value.item())
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [_plain(v) for v in items]
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if callable(value):
        name = getattr(value, "__qualname__", None) or type(value).__qualname__
        module = getattr(value, "__module__", None)
        return f"{module}.{name}" if module else name
    return repr(value)


def _as_mapping(value: Any) -> Mapping[str, Any] | None:
    if isinstance(value, Mapping):
        return value
    if isinstance(value, argparse.Namespace):
        return vars(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return None


def flatten_params(params: Any, sep: str = "/", max_depth: int = 8) -> dict[str, Any]:
    """Flatten nested params into ``{"a/b/c": value}`` with JSON-compatible leaf values.

    Example:
        >>> flatten_params({"optim": {"lr": 0.1, "betas": (0.9, 0.99)}, "name": "x"})
        {'optim/lr': 0.1, 'optim/betas': [0.9, 0.99], 'name': 'x'}
    """
    root = _as_mapping(params)
    if root is None:
        raise TypeError(f"Expected `params` to be a mapping, Namespace or dataclass, but got {type(params).__name__}")
    out: dict[str, Any] = {}

    def walk(prefix: str, mapping: Mapping[Any, Any], depth: int) -> None:
        for raw_key, value in mapping.items():
            key = f"{prefix}{sep}{raw_key}" if prefix else str(raw_key)
            sub = _as_mapping(value)
            if sub is not None and len(sub) > 0:
                if depth >= max_depth:
                    out[key] = json.dumps(_jsonable_tree(sub), default=repr, sort_keys=True)
                else:
                    walk(key, sub, depth + 1)
            elif sub is not None:
                out[key] = {}
            else:
                out[key] = _plain(value)

    walk("", root, 1)
    return out


def _jsonable_tree(value: Any) -> Any:
    sub = _as_mapping(value)
    if sub is not None:
        return {str(k): _jsonable_tree(v) for k, v in sub.items()}
    return _plain(value)


def param_text(value: Any) -> str:
    """The string MLflow stores for a param value."""
    if isinstance(value, str):
        return value
    if value is None:
        return "None"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def sanitize_mlflow_key(key: str) -> str:
    """A key MLflow accepts (``^[/\\w.\\- :]*$``, <=250 chars, unchanged by ``posixpath.normpath``)."""
    cleaned = _MLFLOW_BAD_CHARS.sub("_", key)
    segments = [s for s in cleaned.split("/") if s not in ("", ".")]
    segments = ["__" if s == ".." else s for s in segments]
    cleaned = "/".join(segments) or "_"
    if len(cleaned) > MLFLOW_MAX_KEY:
        digest = hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        cleaned = cleaned[: MLFLOW_MAX_KEY - 9].rstrip("/") + "_" + digest
    if posixpath.normpath(cleaned) != cleaned:  # e.g. a trailing "." segment created by the cut
        cleaned = posixpath.normpath(cleaned).lstrip("/") or "_"
    return cleaned


class KeyMap:
    """Original key -> stored key for one backend, collision-free and stable for a run.

    The facade owns one per backend that needs it; new entries are written to the journal so that
    any process replaying the journal (``dualtrack sync``) maps keys exactly as the live run did.
    """

    def __init__(self, sanitize=sanitize_mlflow_key) -> None:
        self._sanitize = sanitize
        self.forward: dict[str, str] = {}
        self._taken: dict[str, str] = {}  # stored -> original

    def get(self, key: str) -> str | None:
        return self.forward.get(key)

    def add(self, key: str) -> tuple[str, bool]:
        """Map ``key``; returns (stored, changed) where changed says the stored form differs."""
        stored = self.forward.get(key)
        if stored is not None:
            return stored, stored != key
        base = self._sanitize(key)
        stored = base
        n = 2
        while stored in self._taken and self._taken[stored] != key:
            suffix = f"_{n}"
            stored = base[: MLFLOW_MAX_KEY - len(suffix)] + suffix
            n += 1
        self.forward[key] = stored
        self._taken[stored] = key
        return stored, stored != key

    def restore(self, key: str, stored: str) -> None:
        """Re-install a mapping read back from a journal."""
        self.forward[key] = stored
        self._taken[stored] = key

    def changed(self) -> dict[str, str]:
        return {k: v for k, v in self.forward.items() if k != v}
