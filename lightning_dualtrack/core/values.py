"""Turning what users log into what the journal stores: flat params and float metrics.

Everything here is a pure function, cheap enough for the training thread. Backend rules (a key MLflow
refuses, its param length limit) are the sinks' own (``sinks/<name>``); these are the rules every backend shares:

* **Metric values**: bool, int, float, NumPy scalars and one-element tensors/arrays become floats.
  NaN and +-inf are kept. Strings, ``None``, multi-element tensors, ints beyond the float range and other
  objects are not numbers a backend can store: :func:`to_float` raises :class:`DroppedValue` saying why,
  and the run drops that value with a warning naming the key and the value's type.
* **Params**: nested mappings, ``argparse.Namespace``, dataclasses and objects with ``__dict__`` are
  flattened with ``/``; lists and tuples of scalars are kept as lists and shown as their JSON text
  (:func:`param_text`); callables and other objects become their ``repr``. Nesting deeper than
  ``max_depth`` (8) is stored as the JSON text of the remaining subtree; a cycle, or nesting 32 levels
  past that (or 32 levels of lists), is cut (``"<cycle>"``, ``"<too deep>"``) and reported. Two inputs
  that flatten to one key are both kept (``key``, ``key_2``) and reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import reprlib
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from enum import Enum
from pathlib import PurePath
from typing import Any

MAX_FLAT_DEPTH = 8  # mappings flattened into `a/b/...` keys; deeper subtrees are stored as JSON text
MAX_VALUE_DEPTH = 32  # levels of lists / JSON subtree kept inside one value; deeper is cut
CYCLE_MARK = "<cycle>"
DEPTH_MARK = "<too deep>"
PREVIEW_CHARS = 200
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = PREVIEW_CHARS
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8
_REPR.maxlevel = 3


class DroppedValue(ValueError):
    """A metric value that cannot be stored as a number."""


def to_float(value: Any) -> float:
    """Convert a metric value to a float, or raise :class:`DroppedValue` saying why not."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            raise DroppedValue(f"an int of {value.bit_length()} bits is beyond the float range (|x| < 1.8e308)") from None
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
        except (TypeError, ValueError, OverflowError) as err:
            raise DroppedValue(f"a {type(value).__name__} of dtype {value.dtype} is not a number") from err
    try:
        return float(value)
    except OverflowError as err:
        raise DroppedValue(f"a {type(value).__name__} beyond the float range") from err
    except (TypeError, ValueError) as err:
        raise DroppedValue(f"a {type(value).__name__} is not a number") from err


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def preview(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """``<type> <repr>`` cut to ``limit`` characters: what warnings quote of a value, never the whole.

    Example:
        >>> preview("x" * 1000, limit=20)
        "str 'xxxxxxxxxxxx..."
    """
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not break a warning
        text = "<repr failed>"
    text = f"{type(value).__name__} {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short(text: str, limit: int = PREVIEW_CHARS) -> str:
    """``text`` cut to ``limit`` characters (a key or path quoted in a warning)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Walk:
    """State of one flatten: the problems seen (cycles, depth) and the containers on the current path."""

    def __init__(self, on_problem: Callable[[str], None] | None) -> None:
        self.on_problem = on_problem
        self.active: set[int] = set()

    def problem(self, message: str) -> None:
        if self.on_problem is not None:
            self.on_problem(message)


def _plain(value: Any, walk: _Walk | None = None, path: str = "", depth: int = 0) -> Any:
    """A JSON-compatible form of a leaf param value (lists may nest; cycles and depth are cut)."""
    if _is_scalar(value):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return value
    if isinstance(value, Enum):
        return _plain(value.value, walk, path, depth)
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "item") and getattr(value, "size", getattr(value, "numel", lambda: 2)) in (1,):
        return _plain(value.item(), walk, path, depth)
    numel = getattr(value, "numel", None)
    if callable(numel) and numel() == 1:
        return _plain(value.item(), walk, path, depth)
    if isinstance(value, (list, tuple, set, frozenset)) or (
        isinstance(value, (Sequence, AbstractSet)) and not isinstance(value, (str, bytes, bytearray))
    ):  # also sequences that are not lists, e.g. OmegaConf's ListConfig (a Hydra config's list)
        walk = walk or _Walk(None)
        stop = _cut(walk, value, path, depth, f"nests lists deeper than {MAX_VALUE_DEPTH} levels")
        if stop is not None:
            return stop
        items = sorted(value, key=repr) if isinstance(value, AbstractSet) else value
        walk.active.add(id(value))
        try:
            return [_plain(v, walk, path, depth + 1) for v in items]
        finally:
            walk.active.discard(id(value))
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if callable(value):
        name = getattr(value, "__qualname__", None) or type(value).__qualname__
        module = getattr(value, "__module__", None)
        return f"{module}.{name}" if module else name
    try:
        return repr(value)
    except Exception as err:  # noqa: BLE001 - a broken __repr__ must not stop training
        return f"<{type(value).__name__} (repr failed: {type(err).__name__})>"


def _as_mapping(value: Any) -> Mapping[str, Any] | None:
    if isinstance(value, Mapping):
        return value
    if isinstance(value, argparse.Namespace):
        return vars(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return None


def flatten_params(
    params: Any, sep: str = "/", max_depth: int = MAX_FLAT_DEPTH, on_problem: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Flatten nested params into ``{"a/b/c": value}`` with JSON-compatible leaf values.

    Never raises on the *content* (only when ``params`` itself is not a mapping):

    * a mapping or list that contains itself (a cycle) stops there: the inner reference is stored as
      ``"<cycle>"`` and ``on_problem`` is told the path;
    * nesting deeper than ``max_depth`` mappings (8) is stored as the JSON text of the remaining subtree,
      and inside that text (or a list) nesting past 32 more levels is cut to ``"<too deep>"`` (reported);
    * two inputs that flatten to one key (``{"a/b": 1, "a": {"b": 2}}``) are both kept: the first under
      the key, the next under ``key_2`` (``_3``... skipping any key the input already has), reported
      naming both.

    Example:
        >>> flatten_params({"optim": {"lr": 0.1, "betas": (0.9, 0.99)}, "name": "x"})
        {'optim/lr': 0.1, 'optim/betas': [0.9, 0.99], 'name': 'x'}
    """
    root = _as_mapping(params)
    if root is None:
        raise TypeError(f"Expected `params` to be a mapping, Namespace or dataclass, but got {type(params).__name__}")
    walk = _Walk(on_problem)
    entries: list[tuple[str, Any, tuple[str, ...]]] = []  # flat key, value, the path as given

    def visit(prefix: str, parts: tuple[str, ...], mapping: Mapping[Any, Any], depth: int) -> None:
        walk.active.add(id(mapping))
        try:
            for raw_key, value in mapping.items():
                key = f"{prefix}{sep}{raw_key}" if prefix else str(raw_key)
                here = (*parts, str(raw_key))
                sub = _as_mapping(value)
                if sub is not None and id(sub) in walk.active:
                    walk.problem(f"param {short(key)!r} refers back to a mapping that contains it (a cycle); stored as {CYCLE_MARK!r}")
                    entries.append((key, CYCLE_MARK, here))
                elif sub is not None and len(sub) > 0:
                    if depth >= max_depth:
                        tree = _jsonable_tree(sub, walk, key, 0)
                        entries.append((key, json.dumps(tree, default=repr, sort_keys=True), here))
                    else:
                        visit(key, here, sub, depth + 1)
                elif sub is not None:
                    entries.append((key, {}, here))
                else:
                    entries.append((key, _plain(value, walk, key), here))
        finally:
            walk.active.discard(id(mapping))

    visit("", (), root, 1)
    out: dict[str, Any] = {}
    given: dict[str, tuple[str, ...]] = {}
    taken = {key for key, _, _ in entries}
    for key, value, parts in entries:
        if key not in out:
            out[key] = value
            given[key] = parts
            continue
        n = 2
        while f"{key}_{n}" in taken:
            n += 1
        stored = f"{key}_{n}"
        taken.add(stored)
        out[stored] = value
        given[stored] = parts
        walk.problem(
            f"params {_describe(given[key])} and {_describe(parts)} both flatten to {short(key)!r}; "
            f"the first is stored as {short(key)!r}, the second as {short(stored)!r}"
        )
    return out


def _describe(parts: tuple[str, ...]) -> str:
    return repr(short(parts[0])) if len(parts) == 1 else short(" -> ".join(repr(p) for p in parts))


def _cut(walk: _Walk, container: Any, path: str, depth: int, too_deep: str) -> str | None:
    """The marker that replaces ``container`` when it is already being walked (a cycle) or too deep; else None."""
    if id(container) in walk.active:
        walk.problem(f"param {short(path)!r} contains itself (a cycle); the inner reference is stored as {CYCLE_MARK!r}")
        return CYCLE_MARK
    if depth >= MAX_VALUE_DEPTH:
        walk.problem(f"param {short(path)!r} {too_deep}; the rest is stored as {DEPTH_MARK!r}")
        return DEPTH_MARK
    return None


def _jsonable_tree(value: Any, walk: _Walk | None = None, path: str = "", depth: int = 0) -> Any:
    walk = walk or _Walk(None)
    sub = _as_mapping(value)
    if sub is None:
        return _plain(value, walk, path, depth)
    stop = _cut(walk, sub, path, depth, f"nests deeper than {MAX_FLAT_DEPTH + MAX_VALUE_DEPTH} levels")
    if stop is not None:
        return stop
    walk.active.add(id(sub))
    try:
        return {str(k): _jsonable_tree(v, walk, f"{path}/{k}", depth + 1) for k, v in sub.items()}
    finally:
        walk.active.discard(id(sub))


def param_text(value: Any) -> str:
    """A param value as text (JSON for lists and mappings): what a backend that keeps params as strings stores."""
    if isinstance(value, str):
        return value
    if value is None:
        return "None"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)
