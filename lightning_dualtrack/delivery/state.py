"""Ack state: how far each sink has delivered a run, and what it set aside. One module, read by the
logger (health, final report), the CLI (status, sync) and written by delivery.

Per sink, in the run directory's ``state/``:

* ``<sink>.json``: ``offset`` (the journal byte offset up to which the sink has stored every record,
  written atomically after each request that succeeds), the backend run's identity, counters, the last
  error, and ``blocked`` (what a person must do) while the backend refuses everything.
* ``<sink>.rejected.jsonl``: records the backend rejected (or the sink could not convert), one JSON line
  each: offset, kind, key, reason, error, code, and whether a later ``dualtrack sync`` retries it by
  default. ``dualtrack sync`` rewrites the file with what is still rejected after retrying.
* ``delivery.lock``: held (``flock``) by the process delivering the run; holds its pid.
* ``delivery.handover``: ``dualtrack sync`` asks the delivery service holding the run to let go of it (done once
  the run's current session has ended: a session still training is never taken from its process).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from lightning_dualtrack.core.io import STATE_DIR, read_json, write_json_atomic

LOCK_FILE = "delivery.lock"
HANDOVER_FILE = "delivery.handover"  # written by `dualtrack sync` waiting for a run a delivery service holds


def state_path(run_dir: str | os.PathLike, sink: str) -> Path:
    return Path(run_dir) / STATE_DIR / f"{sink}.json"


def rejected_path(run_dir: str | os.PathLike, sink: str) -> Path:
    return Path(run_dir) / STATE_DIR / f"{sink}.rejected.jsonl"


def load_state(run_dir: str | os.PathLike, sink: str) -> dict[str, Any]:
    return read_json(state_path(run_dir, sink), default={}) or {}


def save_state(run_dir: str | os.PathLike, sink: str, state: dict[str, Any]) -> None:
    write_json_atomic(state_path(run_dir, sink), state)


def sink_states(run_dir: str | os.PathLike, names: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    return {n: load_state(run_dir, n) for n in names}


def load_rejected(run_dir: str | os.PathLike, sink: str) -> list[dict[str, Any]]:
    """The records ``sink`` has set aside (latest verdict per journal offset)."""
    out: dict[int, dict[str, Any]] = {}
    try:
        with open(rejected_path(run_dir, sink), encoding="utf-8") as fh:
            for line in fh:
                try:
                    item = json.loads(line)
                    out[int(item["offset"])] = item
                except (ValueError, KeyError, TypeError):
                    continue
    except FileNotFoundError:
        return []
    return [out[k] for k in sorted(out)]


def append_rejected(run_dir: str | os.PathLike, sink: str, item: dict[str, Any]) -> None:
    path = rejected_path(run_dir, sink)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(item, default=repr, ensure_ascii=False) + "\n")


def write_rejected(run_dir: str | os.PathLike, sink: str, items: list[dict[str, Any]]) -> None:
    """Replace the set-aside list (after a retry: what is still rejected)."""
    path = rejected_path(run_dir, sink)
    if not items:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps(item, default=repr, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def rejected_by_reason(items: list[dict[str, Any]]) -> Counter:
    return Counter(str(i.get("reason") or i.get("error") or "?")[:160] for i in items)


def lock_holder(run_dir: str | os.PathLike) -> int | None:
    """The pid written in the lock file (the lock may be stale: check with :func:`lock_is_held`)."""
    try:
        return int((Path(run_dir) / STATE_DIR / LOCK_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def lock_is_held(run_dir: str | os.PathLike) -> bool:
    import fcntl

    path = Path(run_dir) / STATE_DIR / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
