"""The journal: every record on disk when the call returns; a torn tail is tolerated."""

from __future__ import annotations

import math

from lightning_dualtrack.journal import JOURNAL_NAME, JournalReader, JournalWriter, repair_torn_tail


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
