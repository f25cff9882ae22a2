"""The cross-link exchange: each backend's run names the other's (MLflow tags ``wandb.*``, W&B config
``mlflow/*``). Workers publish their run's identity once open; a worker that cannot open gives up, so
that nobody waits for it. Before closing, a worker waits once (bounded) for the others.
"""

from __future__ import annotations

import threading
from typing import Any


class Links:
    """Each sink's public identity, shared between the workers of one run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._identities: dict[str, dict[str, Any]] = {}
        self._pending: set[str] = set()  # sinks that may still publish an identity

    def expect(self, names: set[str]) -> None:
        with self._lock:
            self._pending = set(names) - set(self._identities)

    def publish(self, name: str, identity: dict[str, Any]) -> None:
        with self._lock:
            self._identities[name] = dict(identity)
            self._pending.discard(name)
            self._changed.notify_all()

    def give_up(self, name: str) -> None:
        """``name`` will publish nothing now (it could not open its run, or it is done)."""
        with self._lock:
            self._pending.discard(name)
            self._changed.notify_all()

    def wait_for_others(self, name: str, timeout: float, stop: threading.Event | None = None) -> bool:
        """Wait until every other sink has published or given up; False on timeout or stop."""
        import time

        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending - {name}:
                left = deadline - time.monotonic()
                if left <= 0 or (stop is not None and stop.is_set()):
                    return False
                self._changed.wait(min(left, 0.2))
            return True

    def others(self, name: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {k: dict(v) for k, v in self._identities.items() if k != name}
