"""File I/O every layer shares: a run directory's fixed names, JSON read without surprises and written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"  # the run's settings (never a credential): what every process delivering it reads
STATE_DIR = "state"  # per backend: the acknowledged journal offset, identity, counters, set-aside records


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """The JSON in ``path``, or ``default`` when the file is missing or not JSON (a torn write of an older version)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return default


def write_json_atomic(path: str | os.PathLike, data: Any, **dump_kwargs: Any) -> None:
    """Write JSON so that a reader never sees half a file (tmp file + rename); makes the parent dir.

    Defaults suit state files (indented, sorted); pass ``json.dump`` keywords to change them.
    """
    path = Path(path)
    kwargs = {"indent": 1, "sort_keys": True, "default": repr, "ensure_ascii": False, **dump_kwargs}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, **kwargs)
    os.replace(tmp, path)


def append_json_line(path: str | os.PathLike, data: Any) -> None:
    """Append one JSON line to an index file with a single ``write`` on an ``O_APPEND`` descriptor (lines of
    concurrent writers do not interleave); a torn last line left by a crash is ended first, so it does not swallow
    this one. Makes the parent dir."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(data, default=repr, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
    finally:
        os.close(fd)
