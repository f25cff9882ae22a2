"""Backends, by name. A third backend is one module beside these and one line in :data:`SINKS`.

The registry holds import paths, not classes, so that naming a backend (the CLI's choices, status
columns) never imports its library.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning_dualtrack.sinks.base import Sink

#: name -> "module:Class"; the order is the order of status columns and cross-links
SINKS: dict[str, str] = {
    "mlflow": "lightning_dualtrack.sinks.mlflow:MlflowSink",
    "wandb": "lightning_dualtrack.sinks.wandb:WandbSink",
}


def sink_names() -> tuple[str, ...]:
    return tuple(SINKS)


def sink_class(name: str) -> type[Sink]:
    """The class registered as ``name`` (imports its module, hence its backend's library, on first use)."""
    try:
        module, cls = SINKS[name].split(":")
    except KeyError:
        raise KeyError(f"Expected a backend name among {sorted(SINKS)}, but got {name!r}") from None
    return getattr(import_module(module), cls)


def enabled_sinks(settings: dict) -> list[str]:
    """The backends a run's settings (``run.json``) enable, in registry order."""
    return [n for n in SINKS if (settings.get(n) or {}).get("enabled")]
