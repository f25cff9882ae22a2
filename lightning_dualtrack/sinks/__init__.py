"""Backends, by name: the registry. A backend is one module with a :class:`~lightning_dualtrack.sinks.base.Sink`
subclass and one line in :data:`SINKS` (or an entry point in the ``lightning_dualtrack.sinks`` group, for a
package of its own).

Everything that names the backends reads them from here: the logger's arguments and ``run.json``
(:mod:`lightning_dualtrack.run.config`), LightningCLI's switches, ``dualtrack status`` and delivery. A sink
module imports its backend's library only inside the methods that deliver, so reading a sink class's
declarations is cheap.
"""

from __future__ import annotations

from functools import cache
from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning_dualtrack.sinks.base import Sink

#: name -> "module:Class"; the order is the order of the logger's arguments, status columns and cross-links
SINKS: dict[str, str] = {
    "mlflow": "lightning_dualtrack.sinks.mlflow.sink:MlflowSink",
    "wandb": "lightning_dualtrack.sinks.wandb.sink:WandbSink",
    "tensorboard": "lightning_dualtrack.sinks.tensorboard:TensorBoardSink",
}
ENTRY_POINT_GROUP = "lightning_dualtrack.sinks"


@cache
def registry() -> dict[str, str]:
    """:data:`SINKS` and the backends other packages register under :data:`ENTRY_POINT_GROUP`."""
    from importlib.metadata import entry_points

    found = dict(SINKS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def sink_names() -> tuple[str, ...]:
    return tuple(registry())


def sink_class(name: str) -> type[Sink]:
    """The class registered as ``name`` (imports its module, not its backend's library)."""
    try:
        module, cls = registry()[name].split(":")
    except KeyError:
        raise KeyError(f"Expected a backend name among {sorted(registry())}, but got {name!r}") from None
    return getattr(import_module(module), cls)


def sink_classes() -> list[type[Sink]]:
    return [sink_class(n) for n in registry()]


def enabled_sinks(settings: dict) -> list[str]:
    """The backends a run's settings (``run.json``) enable, in registry order."""
    return [n for n in registry() if (settings.get(n) or {}).get("enabled")]
