"""Reader for Weights & Biases offline run files (``run-<id>.wandb``).

wandb 0.31 no longer ships a reader, so tests and benchmarks use this one to check what W&B
actually stored. The file is a LevelDB-style log written by wandb-core
(``core/pkg/leveldb/record.go``):

- a 7-byte file header: ``b":W&B"``, magic ``0xBEE1`` (little-endian u16), version ``0`` (u8);
- the file is cut into 32 KiB blocks, counted from the start of the file (the header sits in
  block 0); a chunk never crosses a block boundary and a block tail shorter than a chunk header
  is zero padding;
- each chunk is ``<crc32:u32 LE, length:u16 LE, type:u8>`` then ``length`` payload bytes, where
  the checksum is the standard (IEEE, zlib) CRC-32 of the type byte and the payload, unmasked;
- chunk types FULL=1, FIRST=2, MIDDLE=3, LAST=4; the payloads of one FULL or of a
  FIRST, MIDDLE..., LAST run form one serialized ``wandb_internal_pb2.Record``.

Reading stops quietly at the first incomplete or corrupt chunk (a torn tail from a crash or a
file still being written) and sets ``WandbRunData.truncated``.

``wandb`` is imported inside the functions that decode records, so this module imports without it.

Example:
    >>> from lightning_dualtrack.sinks.wandb.runfile import read_runs
    >>> run = read_runs("wandb_dir", "abc123")  # doctest: +SKIP
    >>> [row["loss"] for row in run.history if "loss" in row]  # doctest: +SKIP
    [0.9, 0.7]
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["WandbRunData", "find_run_files", "last_history_value", "read_run_file", "read_runs", "split_records"]

FILE_HEADER = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
_WANDB_KEY = "_wandb"


@dataclass
class WandbRunData:
    """What one W&B run stored in its run file(s).

    Keys are stored the way W&B stores them: a one-part key stays flat (``"trainer/global_step"``),
    a multi-part ``nested_key`` becomes nested dicts (``{"a": {"b": 1}}``). Values are decoded
    from W&B's JSON, where ``NaN``, ``Infinity`` and ``-Infinity`` become Python floats.

    Attributes:
        paths: the run files read, in order.
        run_id: the run id, from the run record (``None`` if it was not reached).
        project: project name. entity, name, notes, group, job_type: as given to ``wandb.init``.
        tags: run tags.
        config: the run config without W&B's internal ``_wandb`` key.
        wandb_config: the config's ``_wandb`` value.
        summary: the run summary without W&B's internal ``_wandb`` key.
        wandb_summary: the summary's ``_wandb`` value.
        history: one dict per history record (``wandb.log`` row), in file order; W&B adds
            ``_step``, ``_runtime`` and ``_timestamp`` to each row.
        metrics: ``define_metric`` records, as dicts of their proto fields.
        exit_code: the exit code of the last exit record, ``None`` if the run never finished.
        artifacts: one dict per logged artifact: ``name``, ``type``, ``aliases``, ``digest``,
            ``metadata`` and ``paths`` (the manifest entries' paths).
        files: paths (relative to the run's ``files/`` directory) of files saved with the run.
        telemetry: the last telemetry record, as a dict.
        record_counts: how many records of each type were read.
        truncated: whether reading stopped at an incomplete or corrupt chunk.
    """

    paths: list[Path] = field(default_factory=list)
    run_id: str | None = None
    project: str | None = None
    entity: str | None = None
    name: str | None = None
    notes: str | None = None
    group: str | None = None
    job_type: str | None = None
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    wandb_config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    wandb_summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    telemetry: dict[str, Any] = field(default_factory=dict)
    record_counts: Counter[str] = field(default_factory=Counter)
    truncated: bool = False


# --------------------------------------------------------------------------- framing


def split_records(data: bytes) -> tuple[list[bytes], bool]:
    """Split a run file's bytes into serialized records, stopping at a torn tail.

    Args:
        data: the whole file content, header included.

    Returns:
        ``(payloads, truncated)``: the complete records in file order, and whether reading stopped
        before the end of ``data`` (an incomplete or corrupt chunk, or a record cut short).

    Raises:
        ValueError: if ``data`` does not start with the W&B run file header.
    """
    _check_header(data)
    pos, payloads, parts = len(FILE_HEADER), [], []
    while (chunk := _read_chunk(data, pos)) is not None:
        pos, chunk_type, payload = chunk
        if chunk_type == FULL and not parts:
            payloads.append(payload)
        elif chunk_type == FIRST and not parts:
            parts = [payload]
        elif chunk_type == MIDDLE and parts:
            parts.append(payload)
        elif chunk_type == LAST and parts:
            payloads.append(b"".join([*parts, payload]))
            parts = []
        else:  # a chunk out of sequence: what follows cannot be trusted
            return payloads, True
    return payloads, pos < len(data) or bool(parts)


def _check_header(data: bytes) -> None:
    """Raise ``ValueError`` unless ``data`` starts with (a prefix of) the run file header."""
    head = data[: len(FILE_HEADER)]
    if head != FILE_HEADER[: len(head)]:
        raise ValueError(f"Expected a W&B run file starting with {FILE_HEADER!r}, but got {head!r}")


def _read_chunk(data: bytes, pos: int) -> tuple[int, int, bytes] | None:
    """Read the chunk at ``pos``; return ``(next_pos, type, payload)`` or ``None`` if there is none."""
    left_in_block = BLOCK_SIZE - pos % BLOCK_SIZE
    if left_in_block < CHUNK_HEADER.size:  # zero trailer: the next chunk starts the next block
        pos += left_in_block
    end_of_header = pos + CHUNK_HEADER.size
    if end_of_header > len(data):
        return None
    checksum, length, chunk_type = CHUNK_HEADER.unpack_from(data, pos)
    end = end_of_header + length
    if chunk_type not in (FULL, FIRST, MIDDLE, LAST) or end > len(data):
        return None
    if end > pos - pos % BLOCK_SIZE + BLOCK_SIZE:
        return None  # a chunk never crosses a block boundary
    if zlib.crc32(data[end_of_header - 1 : end]) != checksum:
        return None
    return end, chunk_type, data[end_of_header:end]


# --------------------------------------------------------------------------- decoding


def _decode_json(text: str) -> Any:
    """Decode one W&B ``value_json``; ``json`` already maps ``NaN``/``Infinity`` to floats."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _item_path(item: Any) -> list[str]:
    """The key path of a history/config/summary item (``key`` or ``nested_key``)."""
    return list(item.nested_key) if item.nested_key else [item.key]


def _item_value(item: Any) -> Any:
    """The decoded value of an item: ``value_json``, or a typed history value if one is set."""
    if item.value_json:
        return _decode_json(item.value_json)
    oneof = item.WhichOneof("value") if "value" in item.DESCRIPTOR.oneofs_by_name else None
    if oneof is None or oneof == "none":
        return None
    value = getattr(item, oneof)
    return _decode_json(value) if oneof == "json" else value


def _set_path(target: dict[str, Any], path: Sequence[str], value: Any) -> None:
    """Set ``target[path[0]]...[path[-1]] = value``, creating (or replacing non-dict) parents."""
    for key in path[:-1]:
        child = target.get(key)
        if not isinstance(child, dict):
            child = target[key] = {}
        target = child
    target[path[-1]] = value


def _remove_path(target: dict[str, Any], path: Sequence[str]) -> None:
    """Delete ``target[path[0]]...[path[-1]]`` if it exists."""
    for key in path[:-1]:
        target = target.get(key)
        if not isinstance(target, dict):
            return
    target.pop(path[-1], None)


def _apply_updates(target: dict[str, Any], record: Any) -> None:
    """Apply a ConfigRecord or SummaryRecord (``update`` then ``remove``) to ``target``."""
    for item in record.update:
        _set_path(target, _item_path(item), _item_value(item))
    for item in record.remove:
        _remove_path(target, _item_path(item))


def _history_row(record: Any) -> dict[str, Any]:
    """Turn a HistoryRecord into a dict."""
    row: dict[str, Any] = {}
    for item in record.item:
        _set_path(row, _item_path(item), _item_value(item))
    return row


def _artifact(record: Any) -> dict[str, Any]:
    """Turn an ArtifactRecord into a dict with the manifest entries' paths."""
    manifest = record.manifest
    paths = [entry.path for entry in manifest.contents]
    if not paths and manifest.manifest_file_path:
        paths = _manifest_file_paths(Path(manifest.manifest_file_path))
    return {
        "name": record.name,
        "type": record.type,
        "aliases": list(record.aliases),
        "digest": record.digest,
        "metadata": _decode_json(record.metadata) if record.metadata else {},
        "paths": paths,
    }


def _manifest_file_paths(path: Path) -> list[str]:
    """Entry paths of a large manifest that W&B wrote beside the record (gzipped JSON lines)."""
    try:
        with gzip.open(path, "rt") as lines:
            return [json.loads(line)["path"] for line in lines if line.strip()]
    except (OSError, ValueError, KeyError):
        return []  # the staging file is temporary: it may be gone


def _message_dict(message: Any) -> dict[str, Any]:
    """A proto message as a dict keyed by proto field names."""
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True)


def _apply_run(run: WandbRunData, record: Any) -> None:
    """Apply a RunRecord: identity, names, tags and the initial config and summary."""
    run.run_id = record.run_id or run.run_id
    for attr, value in (
        ("project", record.project),
        ("entity", record.entity),
        ("name", record.display_name),
        ("notes", record.notes),
        ("group", record.run_group),
        ("job_type", record.job_type),
    ):
        if value:
            setattr(run, attr, value)
    if record.tags:
        run.tags = list(record.tags)
    _apply_updates(run.config, record.config)
    _apply_updates(run.summary, record.summary)


def _apply_record(run: WandbRunData, record: Any) -> None:
    """Fold one decoded ``Record`` into ``run``."""
    kind = record.WhichOneof("record_type")
    if kind is None:
        return
    run.record_counts[kind] += 1
    body = getattr(record, kind)
    if kind == "run":
        _apply_run(run, body)
    elif kind == "history":
        run.history.append(_history_row(body))
    elif kind == "config":
        _apply_updates(run.config, body)
    elif kind == "summary":
        _apply_updates(run.summary, body)
    elif kind == "exit":
        run.exit_code = body.exit_code
    elif kind == "artifact":
        run.artifacts.append(_artifact(body))
    elif kind == "files":
        run.files.extend(item.path for item in body.files)
    elif kind == "metric":
        run.metrics.append(_message_dict(body))
    elif kind == "telemetry":
        run.telemetry = _message_dict(body)


def _split_internal(run: WandbRunData) -> WandbRunData:
    """Move the ``_wandb`` keys of config and summary to their own attributes."""
    run.wandb_config = run.config.pop(_WANDB_KEY, None) or {}
    run.wandb_summary = run.summary.pop(_WANDB_KEY, None) or {}
    return run


def _read_into(run: WandbRunData, path: Path) -> None:
    """Read one run file into ``run``."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    payloads, truncated = split_records(path.read_bytes())
    run.paths.append(path)
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(payload)
        except DecodeError:
            truncated = True
            break
        _apply_record(run, record)
    run.truncated = run.truncated or truncated


# --------------------------------------------------------------------------- public API


def read_run_file(path: str | os.PathLike[str]) -> WandbRunData:
    """Read one W&B run file.

    Args:
        path: a ``run-<id>.wandb`` file.

    Returns:
        The decoded run. A torn tail is not an error: ``truncated`` is set instead.

    Raises:
        ValueError: if the file is not a W&B run file.

    Example:
        >>> run = read_run_file("wandb/offline-run-20260101_000000-abc123/run-abc123.wandb")  # doctest: +SKIP
        >>> run.exit_code  # doctest: +SKIP
        0
    """
    return _read_files([Path(path)])


def find_run_files(root: str | os.PathLike[str], run_id: str | None = None) -> list[Path]:
    """Find W&B run files under ``root``.

    Args:
        root: a directory searched recursively (e.g. a ``WANDB_DIR``).
        run_id: only files of this run id (``run-<run_id>.wandb``); all when ``None``.

    Returns:
        The files, oldest first (modification time, then path).
    """
    pattern = f"run-{run_id}.wandb" if run_id is not None else "run-*.wandb"
    files = [path for path in Path(root).rglob(pattern) if path.is_file()]
    return sorted(files, key=lambda path: (path.stat().st_mtime_ns, str(path)))


def read_runs(root: str | os.PathLike[str], run_id: str) -> WandbRunData:
    """Read every run file of one run id under ``root`` as one run.

    A resumed offline run writes a new ``offline-run-*`` directory with its own file; the files are
    read oldest first: history rows are concatenated, config and summary updates replayed in order,
    and the last exit record wins.

    Args:
        root: a directory searched recursively.
        run_id: the W&B run id.

    Returns:
        The merged run.

    Raises:
        FileNotFoundError: if no run file of ``run_id`` exists under ``root``.
    """
    paths = find_run_files(root, run_id)
    if not paths:
        raise FileNotFoundError(
            f"Expected a W&B run file `run-{run_id}.wandb` under {str(root)!r}, but found none"
        )
    return _read_files(paths)


def last_history_value(path: str | os.PathLike[str], key: str, tail_blocks: int = 4) -> Any:
    """The value of ``key`` in the last history row of one run file that holds it (``None``: no such row).

    Cheap on a long run: only the last ``tail_blocks`` 32 KiB blocks are read and decoded (a chunk never
    crosses a block boundary, so reading can start at any block: chunks continuing a record from an
    earlier block are skipped); the window doubles until a row with ``key`` is found or the whole file
    was read. A torn tail (a file still being written) ends reading quietly, as :func:`split_records`.
    """
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    path = Path(path)
    size = path.stat().st_size
    blocks = max(1, tail_blocks)
    while True:
        start = max(0, (size // BLOCK_SIZE - blocks + 1) * BLOCK_SIZE)
        with open(path, "rb") as fh:
            fh.seek(start)
            data = fh.read(size - start)
        if start == 0:
            _check_header(data)
        pos, parts, found, begun = (len(FILE_HEADER) if start == 0 else 0), [], None, start == 0
        while (chunk := _read_chunk(data, pos)) is not None:
            pos, chunk_type, payload = chunk
            if not begun and chunk_type in (MIDDLE, LAST):
                continue  # the rest of a record that began before this window
            begun = True
            if chunk_type == FULL:
                parts, whole = [], payload
            elif chunk_type == FIRST:
                parts = [payload]
                continue
            elif chunk_type == MIDDLE:
                parts.append(payload)
                continue
            else:
                whole, parts = b"".join([*parts, payload]), []
            record = wandb_internal_pb2.Record()
            try:
                record.ParseFromString(whole)
            except DecodeError:
                break
            if record.WhichOneof("record_type") == "history":
                for item in record.history.item:
                    if _item_path(item) == [key]:
                        found = _item_value(item)
        if found is not None or start == 0:
            return found
        blocks *= 2


def _read_files(paths: Iterable[Path]) -> WandbRunData:
    """Read several run files, in order, into one ``WandbRunData``."""
    run = WandbRunData()
    for path in paths:
        _read_into(run, path)
    return _split_internal(run)
