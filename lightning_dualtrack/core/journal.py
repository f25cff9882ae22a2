"""The run's journal: an append-only, line-per-record file that is the durable record of a run.

Each record is one line of JSON (``NaN``/``Infinity`` allowed) written with a single ``os.write`` on an
``O_APPEND`` descriptor, so a record reaches the kernel before the log call returns: a killed process
loses nothing it logged, and a crash during a write loses at most that line (a torn tail, which the
reader skips). Large payloads (figures, tables, checkpoints, models) are files in the run directory;
the journal holds their relative path.

Record kinds (field ``k``), all with ``t`` (wall-clock ms) and, where it applies, ``s`` (step):

=============  =====================================================================
``start``      run settings and metadata (``meta``), written once per process
``metrics``    ``v``: {key: float}
``params``     ``v``: {key: JSON value}
``tags``       ``v``: {key: str}
``keymap``     ``v``: {original key: MLflow key} for keys that had to change
``file``       ``path`` (relative to the run dir), ``ap`` (artifact dir), ``sha256``, ``size``
``image``      ``key``, ``path``, ``caption``
``table``      ``key``, ``path`` (JSON: columns, rows)
``cm``         ``key``, ``path`` (JSON: matrix, class_names, title), ``png``, ``png_norm``
``model``      ``path`` (an MLflow model dir), ``ap``, ``aliases``, ``registered_model_name``...
``register``   ``name``, ``model_uri``, ``ap``, ``description``, ``aliases``
``delete``     ``path``, ``ap``, ``reason``: a logged checkpoint its callback removed (backends remove their copy)
``end``        ``status``: success | failed | aborted
=============  =====================================================================
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JOURNAL_NAME = "journal.jsonl"
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=True, ensure_ascii=False, default=repr).encode


def now_ms() -> int:
    return int(time.time() * 1000)


class JournalError(OSError):
    """The journal could not be written (read-only or full disk)."""


class JournalWriter:
    """Appends records to ``<run_dir>/journal.jsonl``. Not thread-safe by design: one writer thread.

    A record is written whole or not at all: when the disk refuses part of a line (full disk, I/O
    error), the bytes that did reach the file are cut off again (``ftruncate``) before the error is
    raised, so a later record never follows a torn line. Record fields: :mod:`lightning_dualtrack.core.records`.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / JOURNAL_NAME
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # a second descriptor to read the file back if it is deleted while open (see :meth:`recover`)
        self._rfd: int | None = os.open(self.path, os.O_RDONLY)
        self.records_written = 0
        self._torn = False  # a part-written line could not be cut back: end it before the next record

    @property
    def closed(self) -> bool:
        return self._fd is None

    def append(self, record: dict[str, Any]) -> None:
        """Write one record; raises :class:`JournalError` if the disk refuses it (nothing of it is kept)."""
        if self._fd is None:
            raise JournalError("the journal is closed")
        data = (_dumps(record) + "\n").encode("utf-8", "surrogatepass")
        if self._torn:
            data = b"\n" + data
        written = 0
        try:
            written = os.write(self._fd, data)
            while written < len(data):  # short writes only happen on a full disk or a signal
                written += os.write(self._fd, data[written:])
        except OSError as err:
            if written:
                self._cut_back(written)
            raise JournalError(f"cannot append to {self.path}: {err}") from err
        self._torn = False
        self.records_written += 1

    def _cut_back(self, written: int) -> None:
        """Remove the last ``written`` bytes (a part of a record) from the end of the file."""
        try:
            os.ftruncate(self._fd, os.fstat(self._fd).st_size - written)
        except OSError:
            self._torn = True

    def sync(self) -> None:
        """fsync: make the journal survive a power loss, not just a process crash."""
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError:
                pass

    def deleted(self) -> bool:
        """Whether the journal file was removed while open (a user cleaning the disk deleted the run directory):
        records appended since went to a file no other process can see."""
        if self._fd is None:
            return False
        try:
            return os.fstat(self._fd).st_nlink == 0
        except OSError:
            return False

    def recover(self) -> int:
        """Write the deleted journal's content back to :attr:`path` (the directory re-created) and append there
        from now on: the same bytes at the same offsets, so delivery's acks stay valid. Returns the bytes kept."""
        data = b""
        if self._rfd is not None:
            size = os.fstat(self._rfd).st_size
            data = os.pread(self._rfd, size, 0)
            os.close(self._rfd)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, self.path)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._rfd = os.open(self.path, os.O_RDONLY)
        return len(data)

    def close(self) -> None:
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None
        if self._rfd is not None:
            os.close(self._rfd)
            self._rfd = None


@dataclass
class Entry:
    offset: int  # byte offset just after this record
    record: dict[str, Any]


class JournalReader:
    """Reads complete records from a byte offset on.

    A line that is not a JSON object (torn by a crash and followed by a later process's records, or
    garbage) is skipped and counted: ``corrupt_offsets`` holds the byte offset where each such line
    starts, so that delivery reports them instead of skipping them silently. A last line without
    its newline is not read (it may still be being written).
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / JOURNAL_NAME
        self.corrupt_offsets: set[int] = set()

    @property
    def corrupt_lines(self) -> int:
        """How many distinct unreadable lines the reads so far have met."""
        return len(self.corrupt_offsets)

    def read(self, offset: int = 0, max_records: int | None = None) -> tuple[list[Entry], int]:
        """Records after ``offset`` and the offset to resume from (just after the last complete record)."""
        entries: list[Entry] = []
        try:
            with open(self.path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:
            return entries, offset
        pos = 0
        end = len(data)
        while pos < end:
            nl = data.find(b"\n", pos)
            if nl < 0:
                break  # torn tail (or a record still being written): not ours yet
            line = data[pos:nl]
            start = offset + pos
            pos = nl + 1
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                # a line torn by a crash and then followed by a later process's records, or garbage
                self.corrupt_offsets.add(start)
                continue
            entries.append(Entry(offset + pos, record))
            if max_records is not None and len(entries) >= max_records:
                break
        return entries, offset + pos

    def __iter__(self) -> Iterator[dict[str, Any]]:
        entries, _ = self.read(0)
        return (e.record for e in entries)

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0


def repair_torn_tail(run_dir: str | os.PathLike) -> int:
    """Terminate a torn last line (from a crashed writer) so that appended records stay readable.

    Returns the number of bytes of torn record that were set aside (kept in the file, but closed
    with a newline so the reader counts it as one corrupt line instead of merging it with the next).
    """
    path = Path(run_dir) / JOURNAL_NAME
    try:
        with open(path, "rb+") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            if size == 0:
                return 0
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return 0
            fh.seek(max(0, size - 65536))
            tail = fh.read()
            torn = len(tail) - (tail.rfind(b"\n") + 1)
            fh.seek(0, os.SEEK_END)
            fh.write(b"\n")
            return torn
    except FileNotFoundError:
        return 0
