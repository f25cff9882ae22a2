"""``python -m lightning_dualtrack.shipper RUN_DIR --follow``: the delivery child process the logger starts.

The code lives in :mod:`lightning_dualtrack.delivery`; these names stay importable from here.
"""

from __future__ import annotations

from lightning_dualtrack.delivery.links import Links
from lightning_dualtrack.delivery.shipper import (
    ShipperBusy,
    acquire_lock,
    main,
    make_sink_factories,
    run_shipper,
)
from lightning_dualtrack.delivery.state import LOCK_FILE, STATE_DIR, load_state, state_path
from lightning_dualtrack.delivery.worker import MAX_BATCH, Backoff, SinkWorker, end_idle_priority
from lightning_dualtrack.sinks.base import (
    PermanentError,
    RunContext,
    Sink,
    TransientError,
    read_json,
    write_json_atomic,
)

__all__ = [
    "LOCK_FILE",
    "MAX_BATCH",
    "STATE_DIR",
    "Backoff",
    "Links",
    "PermanentError",
    "RunContext",
    "ShipperBusy",
    "Sink",
    "SinkWorker",
    "TransientError",
    "acquire_lock",
    "end_idle_priority",
    "load_state",
    "main",
    "make_sink_factories",
    "read_json",
    "run_shipper",
    "state_path",
    "write_json_atomic",
]

if __name__ == "__main__":
    raise SystemExit(main())
