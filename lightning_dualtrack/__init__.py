"""lightning_dualtrack: one Lightning logger for MLflow and Weights & Biases, journal first.

Names are imported on first use, so that the delivery process (``python -m lightning_dualtrack.delivery``)
starts without importing Lightning and torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "DualTrackLogger": "lightning_dualtrack.logger",
    "DualTrackWarning": "lightning_dualtrack.logger",
    "create_tracker": "lightning_dualtrack.logger",
    "ExperimentTracker": "lightning_dualtrack.trackers",
    "MLflowTracker": "lightning_dualtrack.trackers",
    "MultiTracker": "lightning_dualtrack.trackers",
    "WandbTracker": "lightning_dualtrack.trackers",
    "from_config": "lightning_dualtrack.trackers",
}

__all__ = [
    "DualTrackLogger",
    "DualTrackWarning",
    "ExperimentTracker",
    "MLflowTracker",
    "MultiTracker",
    "WandbTracker",
    "__version__",
    "create_tracker",
    "from_config",
]

if TYPE_CHECKING:  # pragma: no cover
    from lightning_dualtrack.logger import DualTrackLogger, DualTrackWarning, create_tracker
    from lightning_dualtrack.trackers import (
        ExperimentTracker,
        MLflowTracker,
        MultiTracker,
        WandbTracker,
        from_config,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_dualtrack' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
