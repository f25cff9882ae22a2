"""TensorBoard sink: journal records -> event files that ``tensorboard --logdir`` reads.

Events are written with TensorBoard's own writer (``EventFileWriter``) and protos, never with
``torch.utils.tensorboard``: the delivery process does not import torch. ``tensorboard`` is imported only inside
the methods that write or read event files, so reading this class's declarations costs nothing.

=============  ========================================================================================
record         in TensorBoard
=============  ========================================================================================
``metrics``    scalars at the record's step
``params``     the HParams tab (the merged params of the run, see :class:`HParamsSnapshot`) and a
               ``dualtrack/params`` text table of what the record set
``tags``       a ``dualtrack/tags`` text table
``image``      an image at its step (the caption is not kept: TensorBoard has one description per tag)
``cm``         the counts and row-normalised pictures as images ``<key>`` and ``<key>_normalized``
``table``      a markdown text table at its step
``hist``       histograms at their step
others         nothing: ``file``, ``model`` and ``register`` are files and registry entries (TensorBoard has
               no artifact store; they stay in the run directory and go to MLflow and W&B); ``keymap``,
               ``start`` and ``end`` are bookkeeping
=============  ========================================================================================

Exactly once: every event also carries the journal offset of the record it came from (the tensor
``_dualtrack_/journal_offset``, which no dashboard shows). The writer appends events in journal order, so the
highest offset the event files hold says which records they hold (:meth:`TensorBoardSink.durable_offset`): a
delivery killed between writing and acknowledging resumes there, and a writer that failed part-way (a full
disk) is replaced by one that skips the records its file already holds.
"""

from __future__ import annotations

import errno
import json
import os
import re
import struct
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_utilities.core.imports import RequirementCache

from lightning_dualtrack.core.errors import (
    BlockedError,
    ConversionError,
    DeliveryError,
    PermanentError,
    TransientError,
)
from lightning_dualtrack.core.journal import Entry
from lightning_dualtrack.core.values import param_text
from lightning_dualtrack.sinks.base import Resolved, RunContext, Setting, Sink

_TENSORBOARD_AVAILABLE = RequirementCache("tensorboard>=2.14")

OFFSET_TAG = "_dualtrack_/journal_offset"
OFFSET_PLUGIN = "dualtrack"  # a plugin name no dashboard knows: the offsets stay out of sight
PARAMS_TAG = "dualtrack/params"
TAGS_TAG = "dualtrack/tags"
LINKS_TAG = "dualtrack/links"
# Sorts before every writer's file (``events.out.tfevents.<time>...``): TensorBoard reads it first, and keeps the
# first hparams it reads for a run, so this file -- rewritten whole as params arrive -- decides the HParams tab.
HPARAMS_FILE = "events.out.tfevents.0000000000.dualtrack-hparams"
DEFAULT_SUBDIR = "tensorboard"
_FLUSH_EVERY = 500  # events between two flushes (and acknowledgements) in a long backlog
_MAX_CELL = 500  # characters of one value in a text table
_MAX_ROWS = 1000  # rows of a table record shown as text
_UNSAFE = re.compile(r"[^\w.\-]+")
_PNG = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # IHDR colour type -> channels
_DISK_FULL = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded"}
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST)  # EEXIST: a file where the dir goes
# the record kinds shown, and the method that turns one into summary values
_CONVERTERS = {"metrics": "_metrics_values", "params": "_params_values", "tags": "_tags_values", "image": "_image_values",
               "cm": "_cm_values", "table": "_table_values", "hist": "_hist_values"}


def run_subdir(run_id: str, run_name: str | None) -> str:
    """This run's directory under a shared ``tensorboard_log_dir``: its name as TensorBoard lists it.

    Example:
        >>> run_subdir("k3x9a2bc", "brisk-otter-k3x9a2bc"), run_subdir("k3x9a2bc", "lr 0.1/bs 32")
        ('brisk-otter-k3x9a2bc', 'lr-0.1-bs-32-k3x9a2bc')
    """
    name = _UNSAFE.sub("-", run_name or "").strip("-.")[:150]
    if not name:
        return run_id
    return name if run_id in name else f"{name}-{run_id}"


def markdown_table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table (what TensorBoard's text dashboard renders): one line per row, values cut at 500 chars.

    Example:
        >>> print(markdown_table(["param", "value"], [["lr", 0.1], ["layers", [64, 64]]]))
        | param | value |
        |---|---|
        | lr | 0.1 |
        | layers | [64, 64] |
    """

    def cell(value: Any) -> str:
        text = " ".join(param_text(value).splitlines())
        if len(text) > _MAX_CELL:
            text = text[: _MAX_CELL - 1] + "…"
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(cell(c) for c in row) + " |" for row in rows)
    return "\n".join(lines)


def png_size(data: bytes) -> tuple[int, int, int]:
    """Width, height and channels of a PNG, from its header (zeros for another format)."""
    if data[:8] != _PNG or data[12:16] != b"IHDR" or len(data) < 26:
        return 0, 0, 0
    width, height = struct.unpack(">II", data[16:24])
    return width, height, _PNG_CHANNELS.get(data[25], 0)


def hparam_value(value: Any) -> bool | float | str:
    """A param as the HParams tab keeps it: a bool, a number or a string (JSON for lists and mappings)."""
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return param_text(value)


def merged_params(rec: Mapping[str, Any]) -> dict[str, Any]:
    """A ``params`` record's values as a backend whose params can change keeps them: the latest value of a changed
    param under its own key (``latest``), not the ``key.vN`` copy made for backends whose params cannot change.

    Example:
        >>> merged_params({"v": {"lr.v2": 0.2, "bs": 32}, "latest": {"lr": 0.2}})
        {'bs': 32, 'lr': 0.2}
    """
    latest = dict(rec.get("latest") or rec.get("wandb") or {})
    values = rec["v"]
    if not isinstance(values, Mapping):
        raise ConversionError(f"a 'params' record's values are a {type(values).__name__}, not a mapping")
    out = {}
    for key, value in values.items():
        base, dot, n = str(key).rpartition(".v")
        if dot and n.isdigit() and base in latest:
            continue
        out[str(key)] = value
    out.update({str(k): v for k, v in latest.items()})
    return out


def _offsets_in(path: Path) -> set[int]:
    """The journal offsets an event file holds, read with TensorBoard's own loader (a torn last record is skipped)."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    found: set[int] = set()
    if not path.exists():
        return found
    for event in LegacyEventFileLoader(str(path)).Load():
        for value in event.summary.value:
            if value.tag == OFFSET_TAG and value.tensor.int64_val:
                found.add(int(value.tensor.int64_val[0]))
    return found


class HParamsSnapshot:
    """The run's merged params and cross-links, kept as one small event file (:data:`HPARAMS_FILE`) rewritten whole
    (temporary file + rename) at each change.

    TensorBoard keeps the first hparams it reads for a run and never a later one, so appending an update would not
    show; a snapshot read first shows the latest. Rewriting is idempotent: a replayed ``params`` record merges to the
    same values. A TensorBoard that is already showing the run reads the new snapshot when it is restarted.
    """

    def __init__(self, directory: Path, run_id: str, start_time_secs: float | None) -> None:
        self.path = directory / HPARAMS_FILE
        self.run_id = run_id
        self.start_time_secs = start_time_secs
        self.hparams: dict[str, Any] = {}
        self.links: dict[str, str] = {}
        self._read()

    def _read(self) -> None:
        from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
        from tensorboard.plugins.hparams import metadata

        if not self.path.exists():
            return
        try:
            for event in LegacyEventFileLoader(str(self.path)).Load():
                for value in event.summary.value:
                    if value.tag == metadata.SESSION_START_INFO_TAG:
                        info = metadata.parse_session_start_info_plugin_data(value.metadata.plugin_data.content)
                        self.hparams = {k: getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items() if v.WhichOneof("kind")}
                        self.start_time_secs = info.start_time_secs or self.start_time_secs
                    elif value.tag == LINKS_TAG:
                        cells = [s.decode("utf-8") for s in value.tensor.string_val]
                        self.links = dict(zip(cells[0::2], cells[1::2], strict=False))
        except FileNotFoundError:
            pass

    def update(self, hparams: Mapping[str, Any] | None = None, links: Mapping[str, str] | None = None) -> bool:
        """Merge and rewrite the file if anything changed; returns whether it did."""
        new_hparams = {**self.hparams, **{k: hparam_value(v) for k, v in (hparams or {}).items()}}
        new_links = {**self.links, **(links or {})}
        if new_hparams == self.hparams and new_links == self.links:
            return False
        self.hparams, self.links = new_hparams, new_links
        self._write()
        return True

    def _write(self) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb
        from tensorboard.plugins.text.metadata import create_summary_metadata
        from tensorboard.summary.writer.record_writer import RecordWriter

        events = [event_pb2.Event(wall_time=self.start_time_secs or 0.0, file_version="brain.Event:2")]
        if self.hparams:
            summary = hparams_pb(self.hparams, trial_id=self.run_id, start_time_secs=self.start_time_secs)
            events.append(event_pb2.Event(wall_time=self.start_time_secs or 0.0, step=0, summary=summary))
        if self.links:
            # a 2-D string tensor: the text dashboard shows it as a table, and it reads back without parsing markdown
            rows = sorted(self.links.items())
            tensor = tensor_pb2.TensorProto(
                dtype=types_pb2.DT_STRING,
                tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(rows)),
                                                                    tensor_shape_pb2.TensorShapeProto.Dim(size=2)]),
                string_val=[s.encode("utf-8") for row in rows for s in row],
            )
            value = summary_pb2.Summary.Value(tag=LINKS_TAG, tensor=tensor,
                                              metadata=create_summary_metadata(display_name=None, description="other backends' runs"))
            events.append(event_pb2.Event(wall_time=self.start_time_secs or 0.0, step=0, summary=summary_pb2.Summary(value=[value])))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            writer = RecordWriter(fh)
            for event in events:
                writer.write(event.SerializeToString())
        os.replace(tmp, self.path)


class TensorBoardSink(Sink):
    name = "tensorboard"
    title = "TensorBoard"
    enabled_by_default = False
    requires = _TENSORBOARD_AVAILABLE
    settings = (
        Setting("log_dir", "tensorboard_log_dir",
                help="a local directory for the event files of many runs: this run writes into ``<dir>/<run name>``, "
                     "and ``tensorboard --logdir <dir>`` compares them (default: ``<run dir>/tensorboard``)"),
    )
    link_fields = ("log_dir",)
    appends = True  # an event written twice is shown twice

    # -- declarations -------------------------------------------------------------------------------
    @classmethod
    def resolve(cls, given: Mapping[str, Any], common: Mapping[str, Any]) -> Resolved:
        out = super().resolve(given, common)
        log_dir = out.settings.get("log_dir")
        if log_dir:
            if "://" in str(log_dir):
                raise ValueError(f"Expected argument `tensorboard_log_dir` to be a local directory, but got {log_dir!r}")
            # absolute: the delivery process and a later `dualtrack sync` may run in another working directory
            out.settings["log_dir"] = os.path.abspath(os.path.expanduser(str(log_dir)))
        return out

    @classmethod
    def classify(cls, err: BaseException) -> DeliveryError | None:
        if isinstance(err, OSError):
            if err.errno in _DISK_FULL:
                return BlockedError(f"TensorBoard's event files cannot be written ({_DISK_FULL[err.errno]}): {err}",
                                    action="free disk space where the TensorBoard log directory is", code=errno.errorcode[err.errno])
            if err.errno in _NOT_WRITABLE:
                return BlockedError(f"TensorBoard's event files cannot be written: {err}", code=errno.errorcode[err.errno],
                                    action="make the TensorBoard log directory writable (or give another: tensorboard_log_dir=)")
            return TransientError(f"TensorBoard's event files: {type(err).__name__}: {str(err)[:400]}")
        return None

    @classmethod
    def where(cls, state: Mapping[str, Any]) -> str:
        return str((state.get("identity") or {}).get("log_dir") or "(not created)")

    @classmethod
    def hints(cls, state: Mapping[str, Any]) -> list[str]:
        ident = state.get("identity") or {}
        if not ident.get("log_dir"):
            return []
        lines = [f"TensorBoard: tensorboard --logdir {ident['log_dir']}"]
        if ident.get("root"):
            lines.append(f"             tensorboard --logdir {ident['root']}  (every run there)")
        return lines

    # -- one run ------------------------------------------------------------------------------------
    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        if not _TENSORBOARD_AVAILABLE:
            raise ModuleNotFoundError(str(_TENSORBOARD_AVAILABLE))
        root = self.section.get("log_dir")
        self.root = Path(root) if root else None
        own = self.root / run_subdir(ctx.run_id, ctx.settings.get("run_name")) if self.root else ctx.run_dir / DEFAULT_SUBDIR
        self.log_dir = own.resolve()  # as the other backends' runs and `dualtrack status` name it
        self._writer: Any = None
        self._file: Path | None = None  # the current writer's event file
        self._failed = False  # the writer raised: its file may hold events that were never acknowledged
        self._skip: set[int] = set()  # journal offsets a failed writer's file holds: not written again
        self._had_files = False  # whether event files of this run should exist (see storage_lost)
        self._snapshot: HParamsSnapshot | None = None
        self._last_step = 0

    def open(self, state: dict[str, Any]) -> dict[str, Any]:
        self._had_files = bool(self._event_files())
        identity: dict[str, Any] = {"log_dir": str(self.log_dir), "dir": str(self.log_dir)}  # dir: `dualtrack status`
        if self.root is not None:
            identity["root"] = str(self.root)
        return identity

    @property
    def snapshot(self) -> HParamsSnapshot:
        if self._snapshot is None:
            created = self.ctx.settings.get("created_ms")
            self._snapshot = HParamsSnapshot(self.log_dir, self.ctx.run_id, created / 1000 if created else None)
        return self._snapshot

    def _event_files(self) -> list[Path]:
        try:
            return sorted(p for p in self.log_dir.glob("*tfevents*") if p.name != HPARAMS_FILE and not p.name.startswith("."))
        except OSError:
            return []

    def durable_offset(self) -> int | None:
        """The highest journal offset the run's event files hold (0: none): every record before it is there too.
        None (trust the acknowledged offset) when a file cannot be read."""
        try:
            return max((max(_offsets_in(f), default=0) for f in self._event_files()), default=0)
        except Exception:  # noqa: BLE001 - TensorBoard's reader raises its own errors for an unreadable file
            return None

    def storage_lost(self) -> bool:
        """The event files were deleted (with the run directory, or by hand) while this run was being delivered."""
        if not self._had_files:
            return False
        if self._file is not None:
            return not self._file.exists()
        return not self.log_dir.is_dir()

    # -- writing ------------------------------------------------------------------------------------
    def _start_writer(self) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        suffix = f".{uuid.uuid4().hex[:8]}"  # finds this writer's file (storage_lost) among the run's others
        # flushed by deliver, never on a timer; a queue long enough that add_event rarely waits for the disk
        self._writer = EventFileWriter(str(self.log_dir), max_queue_size=1000, flush_secs=3600, filename_suffix=suffix)
        self._file = next(self.log_dir.glob(f"*{suffix}"), None)
        self._had_files = True

    def _write(self, event: Any) -> None:
        try:
            if self._writer is None:
                self._start_writer()
            self._writer.add_event(event)
        except Exception:
            self._failed = True
            raise

    def _flush(self) -> None:
        if self._writer is None:
            return
        try:
            self._writer.flush()
        except Exception:
            self._failed = True
            raise

    def _close_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - a failed writer: what its file holds is read back, not trusted
                pass

    def _replace_failed_writer(self) -> None:
        """After a write failed: the records its file holds are not written again; the rest go to a new file."""
        self._close_writer()
        if self._file is not None:
            self._skip |= _offsets_in(self._file)
        self._file = None
        self._failed = False

    def deliver(self, entries: list[Entry]) -> None:
        # Each record becomes at most one event, built whole before it is written; ``stored(n)`` only after a flush.
        self.progress = 0
        if self.storage_lost():
            return  # nothing written: what the files held is gone, and the worker starts the run over (storage_lost)
        if self._failed:
            self._replace_failed_writer()
        pending = 0
        i = 0
        try:
            for i, entry in enumerate(entries):
                if entry.offset in self._skip:
                    continue
                event = self._event(entry)
                if event is None:
                    continue
                self._write(event)
                pending += 1
                if pending >= _FLUSH_EVERY:
                    self._flush()
                    pending = 0
                    self.stored(i + 1)
        except Exception:
            if pending and not self._failed:
                self._flush()  # the records before the one that failed are written: acknowledge them
                self.stored(i)
            raise
        self._flush()
        self.stored(len(entries))

    def _event(self, entry: Entry) -> Any:
        """The event of one record (None: nothing to show), with the record's journal offset."""
        from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, types_pb2

        rec = entry.record
        kind = rec.get("k")
        method = _CONVERTERS.get(kind) if isinstance(kind, str) else None
        if method is None:
            return None  # file, model, register, keymap, start, end: see the module's docstring
        convert = getattr(self, method)
        step = rec.get("s")
        step = int(step) if isinstance(step, int) else self._last_step
        values = convert(rec, step)
        if not values:
            return None
        values.append(summary_pb2.Summary.Value(
            tag=OFFSET_TAG,
            tensor=tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64, int64_val=[entry.offset]),
            metadata=summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=OFFSET_PLUGIN)),
        ))
        wall_time = rec["t"] / 1000.0 if isinstance(rec.get("t"), (int, float)) else 0.0
        return event_pb2.Event(wall_time=wall_time, step=step, summary=summary_pb2.Summary(value=values))

    @staticmethod
    def _text(tag: str, markdown: str) -> list[Any]:
        from tensorboard.plugins.text.summary_v2 import text_pb

        return list(text_pb(tag, markdown).value)

    def _payload(self, rel: str) -> bytes:
        path = self.ctx.artifact_file(rel)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise PermanentError(f"payload file {path} is missing (deleted after it was logged?)") from None

    # -- one method per record kind: its summary values ----------------------------------------------
    def _metrics_values(self, rec: dict[str, Any], step: int) -> list[Any]:
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = rec["v"]
        if not isinstance(values, Mapping):
            raise ConversionError(f"a 'metrics' record's values are a {type(values).__name__}, not a mapping")
        out = []
        for key, value in values.items():
            try:
                out.append(Summary.Value(tag=str(key) or "_", simple_value=float(value)))
            except (TypeError, ValueError):
                raise ConversionError(f"metric {key!r} is not a number: {value!r}") from None
        self._last_step = step
        return out

    def _params_values(self, rec: dict[str, Any], step: int) -> list[Any]:
        values = merged_params(rec)
        if not values:
            return []
        self.snapshot.update(hparams=values)  # before the event: a replay of this record merges to the same values
        return self._text(PARAMS_TAG, markdown_table(["param", "value"], sorted(values.items())))

    def _tags_values(self, rec: dict[str, Any], step: int) -> list[Any]:
        values = rec["v"]
        if not isinstance(values, Mapping):
            raise ConversionError(f"a 'tags' record's values are a {type(values).__name__}, not a mapping")
        if not values:
            return []
        return self._text(TAGS_TAG, markdown_table(["tag", "value"], sorted((str(k), v) for k, v in values.items())))

    def _image_value(self, tag: str, rel: str) -> Any:
        from tensorboard.compat.proto.summary_pb2 import Summary

        data = self._payload(rel)
        width, height, channels = png_size(data)
        return Summary.Value(tag=tag, image=Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=data))

    def _image_values(self, rec: dict[str, Any], step: int) -> list[Any]:
        return [self._image_value(str(rec["key"]), rec["path"])]

    def _cm_values(self, rec: dict[str, Any], step: int) -> list[Any]:
        from lightning_dualtrack.sinks.media import render_confusion_matrix_pngs

        try:
            pictures = render_confusion_matrix_pngs(self.ctx.run_dir, rec)  # drawn here if the training side did not
        except FileNotFoundError as err:
            raise PermanentError(f"confusion matrix {rec.get('path')} is missing: {err}") from None
        key = str(rec["key"])
        return [self._image_value(key if rel == rec.get("png") else f"{key}_normalized", rel) for rel in pictures]

    def _table_values(self, rec: dict[str, Any], step: int) -> list[Any]:
        try:
            data = json.loads(self._payload(rec["path"]))
            columns, rows = data["columns"], data["data"]
        except (ValueError, TypeError, KeyError) as err:
            raise ConversionError(f"table {rec.get('path')} cannot be read ({type(err).__name__}: {err})") from None
        shown = [[f"`{c['_image']}`" if isinstance(c, Mapping) and "_image" in c else c for c in row] for row in rows[:_MAX_ROWS]]
        text = markdown_table(columns, shown)
        if len(rows) > _MAX_ROWS:
            text += f"\n\n{len(rows) - _MAX_ROWS} more rows in `{rec['path']}` (the run directory)"
        return self._text(str(rec["key"]), text)

    def _hist_values(self, rec: dict[str, Any], step: int) -> list[Any]:
        from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary

        values = rec["v"]
        if not isinstance(values, Mapping):
            raise ConversionError(f"a 'hist' record's values are a {type(values).__name__}, not a mapping")
        out = []
        for key, h in values.items():
            try:
                lo, hi, counts = float(h["min"]), float(h["max"]), [int(c) for c in h["counts"]]
            except (KeyError, TypeError, ValueError) as err:
                raise ConversionError(f"histogram {key!r} cannot be read ({type(err).__name__}: {err})") from None
            if not counts or hi < lo:
                raise ConversionError(f"histogram {key!r} has no bins or min > max")
            n = len(counts)
            edges = [lo + (hi - lo) * i / n for i in range(n + 1)]
            mids = [lo + (hi - lo) * (i + 0.5) / n for i in range(n)]
            # equal-width bins of known counts: sum and sum of squares are estimated from the bins' midpoints
            hist = HistogramProto(min=lo, max=hi, num=sum(counts), sum=sum(c * m for c, m in zip(counts, mids, strict=True)),
                                  sum_squares=sum(c * m * m for c, m in zip(counts, mids, strict=True)),
                                  bucket_limit=edges[1:], bucket=counts)
            out.append(Summary.Value(tag=str(key), histo=hist))
        return out

    # -- the rest of the interface ------------------------------------------------------------------
    def link(self, other: str, identity: dict[str, Any]) -> None:
        # in the snapshot file, not appended: linking again (state lost, a later session) changes nothing
        self.snapshot.update(links={f"{other}.{k}": str(v) for k, v in sorted(identity.items()) if v is not None})

    def close(self, status: str | None) -> None:
        if self._writer is not None and not self._failed:
            self._flush()
        self._close_writer()

    def abandon(self) -> None:
        self._close_writer()
