"""A tracking config file in the MLflow ExperimentTracker project's layout, and the typed schema it declares.

The file is read as that project writes its ``config/mlflow_config.yaml``,
with a section per other backend beside it (a backend's section holds its settings, by their ``run.json`` keys;
absent: that backend is not used, except MLflow, that project's own)::

    mlflow:
      tracking_uri: http://127.0.0.1:5000
      experiment_name: har
      run_name: baseline
      logging:
        metrics:    [{name: accuracy, type: float}, {name: epoch, type: int}]
        parameters: [{name: batch_size, type: int}, {name: optimizer, type: str}]
    wandb:              # absent: W&B is not used
      project: har      # else WANDB_PROJECT, else experiment_name
      entity: my-team
      mode: offline     # else WANDB_MODE, else online with credentials / offline without
    strict: false       # true: a declared key of the wrong type is an error instead of a warning

Precedence, as everywhere in this package: an explicit argument > the environment (``MLFLOW_EXPERIMENT_NAME`` and
each backend setting's variable: ``MLFLOW_TRACKING_URI``, ``WANDB_MODE``, ``WANDB_PROJECT``...) > this file > the
logger's defaults.

Schema: a declared parameter or metric given a value of another type is warned about, naming the key, the expected
type, the value and what was stored -- a value that converts cleanly (``"32"`` for an ``int``) is stored
converted, a parameter that does not is stored as given, a metric that is not a number is not stored. In strict
mode each of these is a :class:`SchemaError` instead. Undeclared keys are stored as they are.

Example:
    >>> schema = Schema(parameters={"batch_size": "int"})
    >>> schema.check_params({"batch_size": "32", "lr": 0.1}, warn=lambda message: None)
    {'batch_size': 32, 'lr': 0.1}
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["Schema", "SchemaError", "TrackingConfig", "load_tracking_config"]

_TYPES = {"int": "int", "integer": "int", "float": "float", "double": "float", "number": "float",
          "str": "str", "string": "str", "text": "str", "bool": "bool", "boolean": "bool"}
_SHARED_KEYS = {"experiment_name", "run_name", "logging", "tags"}  # the run's own, in the `mlflow:` section
_HOME_BACKEND = "mlflow"  # the file is an MLflow config: that section is always on


class SchemaError(ValueError):
    """A declared parameter or metric got a value of another type (strict mode)."""


def _warn(message: str) -> None:
    from lightning_dualtrack.core.messages import DualTrackWarning

    warnings.warn(message, DualTrackWarning, stacklevel=4)


def _convert(value: Any, expected: str) -> tuple[bool, Any]:
    """``(ok, converted)``: ``ok`` when ``value`` already is ``expected``; else the clean conversion, or
    ``(False, _NO)`` when there is none."""
    if expected == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return True, value
        if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
            value = value.item()
            if isinstance(value, int) and not isinstance(value, bool):
                return True, value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return False, int(value)
        if isinstance(value, str):
            try:
                return False, int(value.strip())
            except ValueError:
                pass
        return False, _NO
    if expected == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value) if isinstance(value, int) else value
        if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
            item = value.item()
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                return True, float(item)
        if isinstance(value, str):
            try:
                return False, float(value.strip())
            except ValueError:
                pass
        return False, _NO
    if expected == "bool":
        if isinstance(value, bool):
            return True, value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return False, value.strip().lower() == "true"
        return False, _NO
    if isinstance(value, str):
        return True, value
    return False, str(value)


_NO = object()


class Schema:
    """Declared types of parameters and metrics (``int``, ``float``, ``str``, ``bool``); see the module docstring.

    Args:
        parameters: ``{name: type}``.
        metrics: ``{name: type}``.
        strict: raise :class:`SchemaError` instead of warning.
    """

    def __init__(self, parameters: Mapping[str, str] | None = None, metrics: Mapping[str, str] | None = None,
                 strict: bool = False) -> None:
        self.parameters = {str(k): self._type(k, t) for k, t in (parameters or {}).items()}
        self.metrics = {str(k): self._type(k, t) for k, t in (metrics or {}).items()}
        self.strict = bool(strict)

    @staticmethod
    def _type(name: Any, declared: Any) -> str:
        kind = _TYPES.get(str(declared).strip().lower())
        if kind is None:
            raise ValueError(f"Expected the type of {name!r} to be one of {sorted(set(_TYPES))}, but got {declared!r}")
        return kind

    def __bool__(self) -> bool:
        return bool(self.parameters or self.metrics)

    def _problem(self, what: str, key: str, expected: str, value: Any, stored: str,
                 warn: Callable[[str], None]) -> None:
        message = f"{what} {key!r}: expected {expected}, got {type(value).__name__} {value!r}; {stored}"
        if self.strict:
            raise SchemaError(message)
        warn(message)

    def check_params(self, params: Mapping[str, Any], warn: Callable[[str], None] = _warn) -> dict[str, Any]:
        """The params to store: declared ones checked (and cleanly converted where they can be)."""
        out = dict(params)
        for key, expected in self.parameters.items():
            if key not in out:
                continue
            value = out[key]
            ok, converted = _convert(value, expected)
            if ok:
                continue
            if converted is _NO:
                self._problem("param", key, expected, value, f"stored as given ({value!r})", warn)
            else:
                out[key] = converted
                self._problem("param", key, expected, value, f"stored as {expected} {converted!r}", warn)
        return out

    def check_metrics(self, metrics: Mapping[str, Any], warn: Callable[[str], None] = _warn) -> dict[str, Any]:
        """The metrics to store: declared ones checked; a declared metric that is not a number is left out."""
        out = dict(metrics)
        for key, expected in self.metrics.items():
            if key not in out:
                continue
            value = out[key]
            ok, converted = _convert(value, expected)
            if ok or (expected == "int" and isinstance(value, float) and converted is not _NO):
                continue  # backends store every metric as a float: 3.0 is an int metric's value
            numeric = converted is not _NO and expected != "str"
            if expected == "int" and converted is _NO and isinstance(value, float):
                # a fractional value for an int metric: still a number, kept as is
                self._problem("metric", key, expected, value, f"stored as given ({value!r})", warn)
            elif numeric:
                out[key] = float(converted)
                self._problem("metric", key, expected, value, f"stored as {float(converted)!r}", warn)
            else:
                del out[key]
                self._problem("metric", key, expected, value, "not stored (metrics are numbers)", warn)
        return out


class TrackingConfig:
    """A parsed tracking config file: :attr:`logger_kwargs` for ``DualTrackLogger`` and its :attr:`schema`."""

    def __init__(self, logger_kwargs: dict[str, Any], schema: Schema, path: str | None = None) -> None:
        self.logger_kwargs = logger_kwargs
        self.schema = schema
        self.path = path


def _declared(entries: Any, what: str, path: str) -> dict[str, str]:
    if entries is None:
        return {}
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected `mlflow.logging.{what}` to be a list of {{name, type}}, but got {entries!r}")
    out: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise ValueError(f"{path}: expected each `mlflow.logging.{what}` entry to be {{name, type}}, but got {entry!r}")
        out[str(entry["name"])] = str(entry.get("type", "str"))
    return out


def load_tracking_config(path: str | os.PathLike, env: Mapping[str, str] | None = None) -> TrackingConfig:
    """Read a tracking config file (see the module docstring); unknown keys are warned about and ignored.

    Values the environment decides (``MLFLOW_TRACKING_URI`` ...) are left out of :attr:`TrackingConfig.logger_kwargs`
    when the variable is set, so that the logger takes them from the environment.
    """
    import yaml

    env = os.environ if env is None else env
    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    where = str(path)
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping with an `mlflow:` section, but got {type(data).__name__}")
    from lightning_dualtrack.sinks import sink_classes

    backends = {cls.name: cls for cls in sink_classes()}
    for key in set(data) - {*backends, "strict"}:
        _warn(f"{where}: unknown top-level key {key!r} ignored (expected one of {sorted({*backends, 'strict'})})")
    sections: dict[str, Mapping[str, Any] | None] = {}
    for name, cls in backends.items():
        section = data.get(name)
        if section is not None and not isinstance(section, Mapping):
            raise ValueError(f"{where}: expected `{name}:` to be a mapping, but got {type(section).__name__}")
        known = {s.key for s in cls.settings} | {"enabled"} | (_SHARED_KEYS if name == _HOME_BACKEND else set())
        for key in set(section or {}) - known:
            _warn(f"{where}: unknown key {name}.{key} ignored (known: {sorted(known)})")
        sections[name] = section
    shared = sections.get(_HOME_BACKEND) or {}
    logging = shared.get("logging") or {}
    schema = Schema(
        parameters=_declared(logging.get("parameters"), "parameters", where),
        metrics=_declared(logging.get("metrics"), "metrics", where),
        strict=bool(data.get("strict", False)),
    )
    kwargs: dict[str, Any] = {}
    for key in ("experiment_name", "run_name"):
        if shared.get(key) is not None:
            kwargs[key] = str(shared[key])
    if isinstance(shared.get("tags"), Mapping):
        kwargs["tags"] = dict(shared["tags"])
    for name, cls in backends.items():
        section = sections[name]
        kwargs[name] = (name == _HOME_BACKEND or section is not None) and (section or {}).get("enabled", True) is not False
        for setting in cls.settings:
            value = (section or {}).get(setting.key)
            if value is None:
                continue
            if setting.env and env.get(setting.env):
                continue  # the environment beats the file
            kwargs[setting.arg] = str(value)
    if env.get("MLFLOW_EXPERIMENT_NAME"):
        kwargs["experiment_name"] = env["MLFLOW_EXPERIMENT_NAME"]
    return TrackingConfig(kwargs, schema, where)
