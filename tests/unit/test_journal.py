"""The journal: every record on disk when the call returns; a torn tail is tolerated."""

from __future__ import annotations

import math
import os

import pytest

from lightning_dualtrack.core.journal import (
    JOURNAL_NAME,
    JournalError,
    JournalReader,
    JournalWriter,
    repair_torn_tail,
)


def test_records_round_trip_with_nan_and_inf(tmp_path) -> None:
    w = JournalWriter(tmp_path)
    w.append({"k": "metrics", "s": 1, "v": {"a": float("nan"), "b": float("inf"), "ü": 1.0}})
    entries, offset = JournalReader(tmp_path).read(0)
    assert offset == (tmp_path / JOURNAL_NAME).stat().st_size
    v = entries[0].record["v"]
    assert math.isnan(v["a"]) and v["b"] == math.inf and v["ü"] == 1.0


def test_reading_from_an_offset_returns_only_new_records(tmp_path) -> None:
    w = JournalWriter(tmp_path)
    for i in range(5):
        w.append({"k": "metrics", "s": i, "v": {"x": i}})
    reader = JournalReader(tmp_path)
    first, offset = reader.read(0, max_records=2)
    rest, end = reader.read(offset)
    assert [e.record["s"] for e in first] == [0, 1]
    assert [e.record["s"] for e in rest] == [2, 3, 4]
    assert reader.read(end) == ([], end)


def test_torn_tail_is_skipped_and_repaired(tmp_path) -> None:
    w = JournalWriter(tmp_path)
    w.append({"k": "metrics", "s": 0, "v": {"x": 0}})
    w.close()
    with open(tmp_path / JOURNAL_NAME, "ab") as fh:
        fh.write(b'{"k":"metrics","s":1,"v":{"x"')  # a crash in the middle of a write
    entries, _ = JournalReader(tmp_path).read(0)
    assert [e.record["s"] for e in entries] == [0]
    assert repair_torn_tail(tmp_path) > 0
    w2 = JournalWriter(tmp_path)
    w2.append({"k": "metrics", "s": 2, "v": {"x": 2}})
    reader = JournalReader(tmp_path)
    entries, _ = reader.read(0)
    assert [e.record["s"] for e in entries] == [0, 2]
    assert reader.corrupt_lines == 1


def test_an_append_refused_part_way_is_cut_back_to_the_last_whole_record(tmp_path, monkeypatch) -> None:
    """A full disk that takes half a line: the half is removed, so the next record is not glued to it."""
    import errno

    from lightning_dualtrack.core import journal

    w = JournalWriter(tmp_path)
    w.append({"k": "metrics", "s": 0, "v": {"x": 0}})
    real_write = os.write
    calls = {"n": 0}

    def half_then_full(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal.os, "write", half_then_full)
    with pytest.raises(JournalError, match="No space left"):
        w.append({"k": "metrics", "s": 1, "v": {"x": 1}})
    monkeypatch.setattr(journal.os, "write", real_write)  # space is back
    w.append({"k": "metrics", "s": 2, "v": {"x": 2}})
    reader = JournalReader(tmp_path)
    entries, _ = reader.read(0)
    assert [e.record["s"] for e in entries] == [0, 2] and reader.corrupt_lines == 0
    assert (tmp_path / JOURNAL_NAME).read_bytes().count(b"\n") == 2


def test_a_part_written_line_that_cannot_be_cut_is_ended_before_the_next_record(tmp_path, monkeypatch) -> None:
    import errno

    from lightning_dualtrack.core import journal

    w = JournalWriter(tmp_path)
    real_write = os.write

    def half_then_eio(fd, data):
        monkeypatch.setattr(journal.os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
        return real_write(fd, data[:5])

    monkeypatch.setattr(journal.os, "write", half_then_eio)
    monkeypatch.setattr(journal.os, "ftruncate", lambda fd, size: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(JournalError):
        w.append({"k": "metrics", "s": 1, "v": {"x": 1}})
    monkeypatch.setattr(journal.os, "write", real_write)
    w.append({"k": "metrics", "s": 2, "v": {"x": 2}})
    reader = JournalReader(tmp_path)
    entries, _ = reader.read(0)
    assert [e.record["s"] for e in entries] == [2] and reader.corrupt_lines == 1  # the torn part stands alone


def test_record_constructors_write_the_fields_readers_use(tmp_path) -> None:
    from lightning_dualtrack.core import records

    w = JournalWriter(tmp_path)
    for rec in (records.metrics(3, {"a": 1.0}), records.params({"lr": 0.1}, latest={"lr": 0.2}), records.table("t", "artifacts/t.json", None)):
        w.append(rec)
    got = [e.record for e in JournalReader(tmp_path).read(0)[0]]
    assert [r["k"] for r in got] == ["metrics", "params", "table"]
    assert got[0]["s"] == 3 and got[0]["v"] == {"a": 1.0} and isinstance(got[0]["t"], int)
    assert got[1]["latest"] == {"lr": 0.2} and "short_text" not in got[1]
    assert got[2]["s"] == 0 and got[2]["media"] == []
