"""Delivery-core unit tests: no servers, no backends; the Backoff is made instant."""

from __future__ import annotations

import pytest

from lightning_dualtrack.delivery import worker


@pytest.fixture(autouse=True)
def instant_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker.Backoff, "next", lambda self: 0.01)
