"""How the callbacks reach ``trainer.loggers``: plain Lightning API for all, richer methods for some.

A logger is *rich* when it is a ``DualTrackLogger`` or looks like one (has ``log_figure``): only
those get ``log_figure``/``log_table``/``log_text``/``log_dict``/``log_confusion_matrix`` calls, since
stock loggers have methods of the same names with other signatures (``WandbLogger.log_table(key,
columns, data, ...)``, ``WandbLogger.log_text(key, ...)``). A rich call that fails is a warning:
reporting must never stop training.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.utilities.rank_zero import rank_zero_warn


def is_rich(logger: Any) -> bool:
    try:
        from lightning_dualtrack.logger import DualTrackLogger
    except ImportError:  # the facade is optional for the callbacks
        DualTrackLogger = None  # noqa: N806
    if DualTrackLogger is not None and isinstance(logger, DualTrackLogger):
        return True
    return callable(getattr(logger, "log_figure", None))


def call_rich(caller: str, logger: Any, method: str, *args: Any, **kwargs: Any) -> None:
    """``logger.method(*args, **kwargs)`` if the logger has it; a failure becomes a warning."""
    function = getattr(logger, method, None)
    if not callable(function):
        return
    try:
        function(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - reporting must never stop training
        rank_zero_warn(f"{caller}: {type(logger).__name__}.{method} failed: {type(error).__name__}: {error}")
