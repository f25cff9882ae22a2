"""How the package tells the user something: a :class:`DualTrackWarning` pointed at the user's own line, once per
subject, and in strict mode an error with the same text."""

from __future__ import annotations

import sys
import warnings

_PACKAGES = ("lightning_dualtrack.", "lightning.", "lightning_utilities.", "pytorch_lightning.")


class DualTrackWarning(UserWarning):
    """A problem the logger handled (and said what it did) without stopping training."""


def user_stacklevel() -> int:
    """The stacklevel that points a warning at the first frame outside this package and Lightning."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_globals.get("__name__", "").startswith(_PACKAGES):
        frame, level = frame.f_back, level + 1
    return level


def warn(message: str) -> None:
    """A :class:`DualTrackWarning` at the user's line (for code that has no :class:`Messages`)."""
    warnings.warn(message, DualTrackWarning, stacklevel=user_stacklevel())


class Messages:
    """Warnings (once per subject) and, in strict mode, errors with the same text."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.warned: set[str] = set()

    def warn(self, message: str) -> None:
        warnings.warn(message, DualTrackWarning, stacklevel=user_stacklevel())

    def warn_once(self, subject: str, message: str) -> None:
        if subject not in self.warned:
            self.warned.add(subject)
            self.warn(message)

    def fail(self, message: str) -> None:
        """A refused input: ``ValueError`` in strict mode, else a warning."""
        if self.strict:
            raise ValueError(message)
        self.warn(message)

    def fail_once(self, subject: str, message: str) -> None:
        if self.strict:
            raise ValueError(message)
        self.warn_once(subject, message)
