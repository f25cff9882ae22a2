"""What every sink shares: the run context, the error classes and the interface the shipper drives."""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The error taxonomy lives in one module; these names stay importable from here.
from lightning_dualtrack.delivery.errors import (  # noqa: F401
    AlreadyExists,
    BlockedError,
    ConversionError,
    DeliveryError,
    PermanentError,
    RejectedError,
    TooLargeError,
    TransientError,
)
from lightning_dualtrack.journal import Entry

RUN_FILE = "run.json"
STATUS_TO_EXIT = {"success": 0, "failed": 1, "aborted": 255}



def read_json(path: Path, default: Any = None) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (FileNotFoundError, ValueError):
        return default


def write_json_atomic(path: Path, data: Any, **dump_kwargs: Any) -> None:
    """Write JSON so that a reader never sees half a file (tmp file + rename); makes the parent dir.

    Defaults suit state files (indented, sorted); pass ``json.dump`` keywords to change them.
    """
    kwargs = {"indent": 1, "sort_keys": True, "default": repr, "ensure_ascii": False, **dump_kwargs}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, **kwargs)
    os.replace(tmp, path)


class ResponseTimes:
    """How long each backend request took (wall clock, failures included: a timeout is what a slow server
    costs), over the last ``window`` requests; :meth:`figures` gives p50 and p95 in milliseconds.

    Example:
        >>> rt = ResponseTimes()
        >>> for ms in (10, 20, 30, 40, 200):
        ...     rt.observe(ms / 1000)
        >>> rt.figures()
        {'response_p50_ms': 30.0, 'response_p95_ms': 200.0, 'response_window': 5.0}
    """

    def __init__(self, window: int = 500) -> None:
        self._seconds: deque[float] = deque(maxlen=window)

    def observe(self, seconds: float) -> None:
        self._seconds.append(seconds)

    def start(self) -> float:
        return time.perf_counter()

    def stop(self, started: float) -> None:
        self._seconds.append(time.perf_counter() - started)

    def figures(self) -> dict[str, float]:
        """``response_p50_ms``, ``response_p95_ms`` (nearest rank) and ``response_window`` (requests counted);
        empty before the first request."""
        if not self._seconds:
            return {}
        ordered = sorted(self._seconds)

        def rank(q: float) -> float:
            return ordered[min(len(ordered) - 1, max(0, -(-len(ordered) * q // 100) - 1))] * 1000.0  # ceil(n q) - 1

        return {"response_p50_ms": round(rank(50), 3), "response_p95_ms": round(rank(95), 3), "response_window": float(len(ordered))}


@dataclass
class RunContext:
    """The static description of a run (``run.json``), shared by the facade, the shipper and the sinks."""

    run_dir: Path
    settings: dict[str, Any]
    links: dict[str, dict[str, Any]] = field(default_factory=dict)  # sink name -> its public identity

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> RunContext:
        run_dir = Path(run_dir)
        settings = read_json(run_dir / RUN_FILE)
        if settings is None:
            raise FileNotFoundError(f"{run_dir} is not a dualtrack run directory (no {RUN_FILE})")
        return cls(run_dir=run_dir, settings=settings)

    @property
    def run_id(self) -> str:
        return self.settings["run_id"]

    def artifact_file(self, rel: str) -> Path:
        return self.run_dir / rel


class Sink:
    """One backend. Only a sink module imports its backend; the shipper calls these in one thread.

    Required: :meth:`open`, :meth:`deliver`, :meth:`close`. Optional hooks (the defaults do nothing):
    :meth:`link`, :meth:`report_health`, :meth:`abandon`, :meth:`durable_offset` (a sink whose backend
    acknowledges before it stores returns what provably is stored), :meth:`hold` (with ``holds_open``), and ``fallback_reason`` (a sentence
    the shipper prints once, e.g. "recording offline"). Errors raised are those of
    :mod:`lightning_dualtrack.delivery.errors` (anything else is classified there).
    """

    name = "base"
    #: a sentence the shipper prints after ``open`` when the sink fell back to something else
    fallback_reason: str | None = None
    #: whether replaying a delivered record stores it twice (W&B appends rows): the worker then acks
    #: partial progress exactly, and the sink must report it through :meth:`stored`
    appends: bool = False
    #: whether the backend run can stay open from one session of a run to the next in one process (Lightning's
    #: fit, then test): the worker then calls :meth:`hold` at a session's end instead of :meth:`close`
    holds_open: bool = False

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._requests = 0
        self.bytes_uploaded = 0
        self.progress = 0  # entries of the current deliver() call already stored (for partial retries)
        self.on_stored: Callable[[int], None] | None = None  # set by the worker: ack as requests succeed
        self.response_times = ResponseTimes()  # each backend request's latency (health: p50/p95 per backend)

    def stored(self, n: int) -> None:
        """The first ``n`` entries of the current :meth:`deliver` call are stored (called after each request)."""
        self.progress = n
        if self.on_stored is not None and n > 0:
            self.on_stored(n)

    @property
    def requests(self) -> int:
        """Backend calls made so far (reported as health and in ``state/<sink>.json``)."""
        return self._requests

    def open(self, state: dict[str, Any]) -> dict[str, Any]:
        """Create or resume the backend run; ``state`` is what a previous ``open`` returned (or {})."""
        raise NotImplementedError

    def deliver(self, entries: list[Entry]) -> None:
        """Deliver records in order, calling :meth:`stored` as requests succeed; replays must be idempotent."""
        raise NotImplementedError

    def close(self, status: str | None) -> None:
        """End the backend run; ``status`` is success | failed | aborted, None for a run that crashed."""
        raise NotImplementedError

    # -- optional hooks --------------------------------------------------------------------------
    def link(self, other: str, identity: dict[str, Any]) -> None:
        """Record the other backend's run identity in this backend's run (cross-linking)."""

    def report_health(self, health: dict[str, float], step: int | None) -> None:
        """Record the shipper's own health figures (where the backend keeps system figures)."""

    def abandon(self) -> None:
        """Release resources without ending the run (the shipper is stopping with work pending)."""

    def durable_offset(self) -> int | None:
        """The journal offset up to which the backend provably stores every record; None: not known."""
        return None

    def hold(self, offset: int, timeout: float = 10.0) -> None:
        """(``holds_open`` sinks) End a session but not the backend run: return once every record up to journal
        byte ``offset`` is provably stored; raise a :class:`TransientError` if that is not seen in ``timeout``."""
        raise NotImplementedError
