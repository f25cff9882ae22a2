"""The W&B run file reader, checked against real offline runs written by wandb itself."""

from __future__ import annotations

import importlib.util
import math
import shutil
import struct
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import lightning_dualtrack.sinks.wandb.runfile as wandb_file
from lightning_dualtrack.sinks.wandb.runfile import (
    BLOCK_SIZE,
    FILE_HEADER,
    find_run_files,
    read_run_file,
    read_runs,
    split_records,
)

BLOB = "x" * 40_000  # a history value bigger than a 32 KiB block: its record spans blocks


@dataclass
class OfflineRuns:
    root: Path
    finished: Path  # exit code 0, with everything
    failed: Path  # exit code 1
    resumed_id: str  # two files, the second a resume


def _init(wandb, root: Path, **kwargs):
    settings = wandb.Settings(x_disable_stats=True, x_disable_meta=True, console="off")
    return wandb.init(mode="offline", dir=root, settings=settings, **kwargs)


def _write_finished_run(wandb, root: Path) -> Path:
    run = _init(
        wandb,
        root,
        project="dualtrack-tests",
        name="finished",
        notes="a note",
        tags=["a", "b"],
        config={"lr": 0.1, "model": {"width": 64}},
    )
    run.define_metric("trainer/global_step")
    run.define_metric("*", step_metric="trainer/global_step", step_sync=True)
    for step, loss in ((0, 1.0), (10, 0.5), (20, 0.25)):
        run.log({"loss": loss, "trainer/global_step": step})
    run.log({"nan": math.nan, "pinf": math.inf, "ninf": -math.inf, "trainer/global_step": 30})
    run.log({"loss": 0.75, "trainer/global_step": 5})  # lower step: kept, since no `step=` is passed
    run.log({"blob": BLOB, "trainer/global_step": 40})
    run.config.update({"batch_size": 8})
    run.summary["best_loss"] = 0.25
    weights = root / "weights.txt"
    weights.write_text("w")
    artifact = wandb.Artifact("model-weights", type="model")
    artifact.add_file(str(weights))
    run.log_artifact(artifact, aliases=["best"])
    run.save(str(weights), base_path=str(root))
    run.finish()
    return find_run_files(root, run.id)[0]


def _write_failed_run(wandb, root: Path) -> Path:
    run = _init(wandb, root, project="dualtrack-tests")
    run.log({"loss": 2.0})
    run.finish(exit_code=1)
    return find_run_files(root, run.id)[0]


def _write_resumed_run(wandb, root: Path) -> str:
    run = _init(wandb, root, project="dualtrack-tests", config={"lr": 0.1})
    run.log({"loss": 1.0})
    run.summary["phase"] = "first"
    run.finish(exit_code=1)
    run = _init(wandb, root, project="dualtrack-tests", id=run.id, resume="allow")
    run.config.update({"epochs": 3})
    run.log({"loss": 0.5})
    run.summary["phase"] = "second"
    run.finish()
    return run.id


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OfflineRuns]:
    """Real offline runs, written once for the module (``wandb.init`` costs ~0.1-0.7 s each)."""
    wandb = pytest.importorskip("wandb")
    root = tmp_path_factory.mktemp("wandb_runs")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_SILENT", "true")
        env.setenv("WANDB_DISABLE_GIT", "true")
        env.setenv("WANDB_DISABLE_CODE", "true")
        env.setenv("WANDB_DATA_DIR", str(root / "data"))
        env.setenv("WANDB_CACHE_DIR", str(root / "cache"))
        env.setenv("WANDB_CONFIG_DIR", str(root / "config"))
        env.delenv("WANDB_MODE", raising=False)
        env.delenv("WANDB_API_KEY", raising=False)
        yield OfflineRuns(
            root=root,
            finished=_write_finished_run(wandb, root),
            failed=_write_failed_run(wandb, root),
            resumed_id=_write_resumed_run(wandb, root),
        )


def _steps(rows: list[dict]) -> list[int]:
    return [row["_step"] for row in rows]


# --------------------------------------------------------------------------- real runs


def test_reads_run_identity(runs: OfflineRuns) -> None:
    run = read_run_file(runs.finished)
    assert run.run_id == runs.finished.stem.removeprefix("run-")
    assert (run.project, run.name, run.notes, run.tags) == (
        "dualtrack-tests",
        "finished",
        "a note",
        ["a", "b"],
    )
    assert run.paths == [runs.finished]
    assert not run.truncated


def test_reads_history_rows_in_logging_order(runs: OfflineRuns) -> None:
    rows = read_run_file(runs.finished).history
    assert [(row.get("trainer/global_step"), row.get("loss")) for row in rows] == [
        (0, 1.0),
        (10, 0.5),
        (20, 0.25),
        (30, None),
        (5, 0.75),  # a lower step metric value is stored, unlike `log(step=...)`
        (40, None),
    ]
    assert _steps(rows) == [0, 1, 2, 3, 4, 5]
    assert all({"_runtime", "_timestamp"} <= row.keys() for row in rows)


def test_decodes_nan_and_infinity(runs: OfflineRuns) -> None:
    row = read_run_file(runs.finished).history[3]
    assert math.isnan(row["nan"])
    assert row["pinf"] == math.inf
    assert row["ninf"] == -math.inf


def test_reads_record_spanning_several_blocks(runs: OfflineRuns) -> None:
    assert runs.finished.stat().st_size > BLOCK_SIZE
    assert read_run_file(runs.finished).history[5]["blob"] == BLOB


def test_reads_define_metric_records(runs: OfflineRuns) -> None:
    metrics = read_run_file(runs.finished).metrics
    assert {"glob_name": "*", "step_metric": "trainer/global_step"}.items() <= metrics[-1].items()
    assert metrics[-1]["options"]["step_sync"] is True


def test_reads_config_updates_without_internal_key(runs: OfflineRuns) -> None:
    run = read_run_file(runs.finished)
    assert run.config == {"lr": 0.1, "model": {"width": 64}, "batch_size": 8}
    assert isinstance(run.wandb_config, dict)


def test_reads_summary_from_rows_and_updates(runs: OfflineRuns) -> None:
    summary = read_run_file(runs.finished).summary
    assert summary["best_loss"] == 0.25
    assert summary["loss"] == 0.75  # the last logged value
    assert summary["trainer/global_step"] == 40
    assert "_wandb" not in summary


def test_reads_exit_codes(runs: OfflineRuns) -> None:
    assert read_run_file(runs.finished).exit_code == 0
    assert read_run_file(runs.failed).exit_code == 1


def test_reads_artifact_name_type_aliases_and_paths(runs: OfflineRuns) -> None:
    (artifact,) = read_run_file(runs.finished).artifacts
    assert (artifact["name"], artifact["type"]) == ("model-weights", "model")
    assert set(artifact["aliases"]) == {"latest", "best"}
    assert artifact["paths"] == ["weights.txt"]


def test_reads_saved_files(runs: OfflineRuns) -> None:
    assert "weights.txt" in read_run_file(runs.finished).files


def test_truncated_file_reads_complete_prefix(runs: OfflineRuns, tmp_path: Path) -> None:
    data = runs.finished.read_bytes()
    full = read_run_file(runs.finished)
    cut_path = tmp_path / runs.finished.name
    from lightning_dualtrack.sinks.wandb.runfile import _read_chunk

    boundaries, pos = {len(FILE_HEADER)}, len(FILE_HEADER)  # where a chunk ends: a cut there is not detectable
    while (chunk := _read_chunk(data, pos)) is not None:
        pos = chunk[0]
        boundaries.add(pos)
    previous = 0
    for cut in sorted({0, 3, len(FILE_HEADER), *range(8, len(data), 997), len(data) // 2, len(data) - 1}):
        cut_path.write_bytes(data[:cut])
        run = read_run_file(cut_path)
        assert run.truncated == (cut > len(FILE_HEADER) and cut not in boundaries), cut
        assert _steps(run.history) == _steps(full.history)[: len(run.history)], cut
        assert len(run.history) >= previous
        previous = len(run.history)
    cut_path.write_bytes(data[: len(data) // 2])
    assert 0 < len(read_run_file(cut_path).history) < len(full.history)


def test_corrupt_byte_stops_reading_there(runs: OfflineRuns, tmp_path: Path) -> None:
    data = bytearray(runs.finished.read_bytes())
    data[len(data) // 3] ^= 0xFF
    corrupt = tmp_path / runs.finished.name
    corrupt.write_bytes(bytes(data))
    run = read_run_file(corrupt)
    assert run.truncated
    assert run.exit_code is None
    assert len(run.history) < len(read_run_file(runs.finished).history)


def test_find_run_files_lists_every_run_oldest_first(runs: OfflineRuns) -> None:
    files = find_run_files(runs.root)
    assert len(files) == 4
    assert files.index(runs.finished) < files.index(runs.failed)
    assert [f.stat().st_mtime_ns for f in files] == sorted(f.stat().st_mtime_ns for f in files)
    assert find_run_files(runs.root, "no-such-run") == []


def test_read_runs_merges_resumed_run_files(runs: OfflineRuns) -> None:
    assert len(find_run_files(runs.root, runs.resumed_id)) == 2
    run = read_runs(runs.root, runs.resumed_id)
    assert [row["loss"] for row in run.history] == [1.0, 0.5]
    assert run.config == {"lr": 0.1, "epochs": 3}
    assert run.summary["phase"] == "second"
    assert run.exit_code == 0  # the last file's
    assert len(run.paths) == 2


def test_read_runs_without_files_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run-missing.wandb"):
        read_runs(tmp_path, "missing")


def test_rejects_a_file_that_is_not_a_run_file(tmp_path: Path) -> None:
    path = tmp_path / "run-x.wandb"
    path.write_bytes(b"SQLite format 3\x00")
    with pytest.raises(ValueError, match="W&B run file"):
        read_run_file(path)


def test_empty_file_reads_as_empty_run(tmp_path: Path) -> None:
    path = tmp_path / "run-x.wandb"
    path.write_bytes(b"")
    run = read_run_file(path)
    assert (run.run_id, run.history, run.exit_code, run.truncated) == (None, [], None, False)


# --------------------------------------------------------------------------- framing


def _frame(records: list[bytes]) -> bytes:
    """Frame records the way wandb-core's writer does (core/pkg/leveldb/record.go)."""
    out = bytearray(FILE_HEADER)
    for record in records:
        data, first = record, True
        while True:
            left = BLOCK_SIZE - len(out) % BLOCK_SIZE
            if left < 7:
                out += bytes(left)
                continue
            size = min(len(data), left - 7)
            last = size == len(data)
            chunk_type = (1 if last else 2) if first else (4 if last else 3)
            chunk = data[:size]
            out += struct.pack("<IHB", zlib.crc32(bytes([chunk_type]) + chunk), size, chunk_type) + chunk
            data, first = data[size:], False
            if last:
                break
    return bytes(out)


@pytest.mark.parametrize("left_in_block", range(10))
def test_split_records_handles_block_ends(left_in_block: int) -> None:
    # the first record leaves `left_in_block` bytes in block 0: padding, an empty FIRST chunk, ...
    first = b"a" * (BLOCK_SIZE - len(FILE_HEADER) - 7 - left_in_block)
    records = [first, b"b" * 100, b"c" * (2 * BLOCK_SIZE + 5), b"", b"d"]
    data = _frame(records)
    assert split_records(data) == (records, False)
    assert split_records(data[:-1]) == (records[:-1], True)
    for cut in (BLOCK_SIZE - 1, BLOCK_SIZE + 3, 2 * BLOCK_SIZE, len(data) - 5):
        payloads, _ = split_records(data[:cut])
        assert payloads == records[: len(payloads)]
        assert len(payloads) < len(records)


def test_module_imports_without_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    spec = importlib.util.spec_from_file_location("_wandb_file_probe", wandb_file.__file__)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    assert module.split_records(FILE_HEADER) == ([], False)


def test_reads_a_copy_outside_the_run_directory(runs: OfflineRuns, tmp_path: Path) -> None:
    copy = shutil.copy(runs.failed, tmp_path / "copy.wandb")
    assert read_run_file(copy).history[0]["loss"] == 2.0
