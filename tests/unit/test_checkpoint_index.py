"""``resume_from`` (run.resume): the checkpoint index the logger keeps, and finding a checkpoint's run from it, from
the run directory the checkpoint lies in, or from the checkpoint's own ``dualtrack`` entry."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from lightning_dualtrack import DualTrackLogger, DualTrackWarning
from lightning_dualtrack.run.resume import (
    CHECKPOINT_INDEX,
    checkpoint_run,
    indexed,
    note_checkpoint,
    resume_target,
)


def test_the_latest_line_for_a_path_answers_and_a_link_finds_its_target(tmp_path) -> None:
    ckpt = tmp_path / "ckpts" / "last.ckpt"
    note_checkpoint(tmp_path, ckpt, "first", tmp_path / "first", 8)
    note_checkpoint(tmp_path, ckpt, "second", tmp_path / "second", 16)  # last.ckpt saved again, by another run
    with open(tmp_path / CHECKPOINT_INDEX, "a") as fh:
        fh.write('{"path": "torn')  # a crash mid-line
    assert indexed(tmp_path, ckpt)["run_id"] == "second"
    target = tmp_path / "ckpts" / "epoch=1.ckpt"
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(b"x")
    note_checkpoint(tmp_path, target, "third", tmp_path / "third", 24)
    link = tmp_path / "link.ckpt"
    link.symlink_to(target)
    assert indexed(tmp_path, link)["run_id"] == "third"
    assert indexed(tmp_path, tmp_path / "other.ckpt") is None


def test_a_checkpoint_is_found_by_its_run_directory_or_its_own_entry(tmp_path) -> None:
    run_dir = tmp_path / "runs" / "abc123"
    ckpt = run_dir / "exp" / "abc123" / "checkpoints" / "epoch=0.ckpt"
    ckpt.parent.mkdir(parents=True)
    (run_dir / "run.json").write_text('{"run_id": "abc123"}')
    torch.save({"global_step": 8}, ckpt)
    found = checkpoint_run(tmp_path / "elsewhere", ckpt)
    assert (found.run_id, found.root, found.step, found.source) == ("abc123", tmp_path / "runs", 8, "run directory")
    loose = tmp_path / "loose.ckpt"
    torch.save({"global_step": 3, "dualtrack": {"run_id": "def456", "save_dir": str(tmp_path / "saved")}}, loose)
    found = checkpoint_run(tmp_path, loose)
    assert (found.run_id, found.root, found.step, found.source) == ("def456", tmp_path / "saved", 3, "checkpoint")
    torch.save({"global_step": 3}, tmp_path / "anonymous.ckpt")
    assert checkpoint_run(tmp_path, tmp_path / "anonymous.ckpt") is None


def test_resume_from_a_checkpoint_nobody_knows_warns_and_starts_a_new_run(tmp_path) -> None:
    missing = tmp_path / "nope.ckpt"
    with pytest.warns(DualTrackWarning, match=r"resume_from='.*nope.ckpt' names no run of this logger \(no such file\)"):
        assert resume_target(tmp_path, missing, None, strict=False) == (None, tmp_path, None)
    with pytest.raises(ValueError, match="nope.ckpt' names no run"):
        resume_target(tmp_path, missing, None, strict=True)
    with pytest.raises(TypeError, match="Expected argument `resume_from` to be a checkpoint path, but got int"):
        resume_target(tmp_path, 3, None, strict=False)


def test_an_explicit_run_id_beats_resume_from(tmp_path) -> None:
    note_checkpoint(tmp_path, tmp_path / "a.ckpt", "theirs", tmp_path / "theirs", 8)
    with pytest.warns(DualTrackWarning, match="belongs to run theirs, but run_id='mine' was given"):
        assert resume_target(tmp_path, tmp_path / "a.ckpt", "mine", strict=False)[0] == "mine"


def _logger(tmp_path, **kwargs) -> DualTrackLogger:
    return DualTrackLogger(experiment_name="ckpt", save_dir=tmp_path / "runs", deliver=False, log_system_info=False,
                           mlflow=False, wandb=False, **kwargs)


def test_the_logger_notes_each_save_and_resume_from_continues_that_run(tmp_path, capsys) -> None:
    first = _logger(tmp_path)
    first.log_metrics({"loss": 1.0}, step=0)
    ckpt = tmp_path / "ckpts" / "epoch=0-step=8.ckpt"
    saved = SimpleNamespace(_last_checkpoint_saved=str(ckpt), _last_global_step_saved=8)  # ModelCheckpoint's fields
    first.after_save_checkpoint(saved)
    first.end_run()
    assert indexed(tmp_path / "runs", ckpt) | {"t": 0} == {
        "path": str(ckpt), "real": os.path.realpath(ckpt), "run_id": first.run_id, "run_dir": str(first.run_dir.resolve()),
        "step": 8, "t": 0}
    again = _logger(tmp_path, resume_from=ckpt)  # the file itself is gone: the index still knows it
    assert again.run_id == first.run_id
    assert f"resume_from: continuing run {first.run_id} (the checkpoint's run, found by its index, step 8)" in capsys.readouterr().err
