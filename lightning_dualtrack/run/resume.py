"""Continue the run a checkpoint belongs to: the checkpoint index behind ``DualTrackLogger(resume_from=ckpt)``.

The logger notes every checkpoint Lightning's ``ModelCheckpoint`` saves (``after_save_checkpoint``) in
``save_dir/.checkpoints.jsonl``: one line per save with the checkpoint's absolute path, the run it belongs to (id
and directory) and the global step it holds; a path saved again (``last.ckpt``) is answered by its latest line.
:func:`checkpoint_run` finds a checkpoint's run in that index, else from the run directory the checkpoint lies in
(Lightning's default checkpoint directory is inside it), else from the ``"dualtrack"`` entry that the
``RunIdsInCheckpoint`` callback writes into each checkpoint. Nothing here is on the log path: one line per
checkpoint saved, one read when a logger is built with ``resume_from``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_dualtrack.core.io import RUN_FILE, append_json_line, read_json
from lightning_dualtrack.core.journal import now_ms

CHECKPOINT_INDEX = ".checkpoints.jsonl"
CHECKPOINT_ENTRY = "dualtrack"  # the key RunIdsInCheckpoint writes into a checkpoint
_ANCESTORS = 8  # <save_dir>/<run id>/<experiment>/<run id>/checkpoints/<file>: the run directory is 4 levels up


@dataclass(frozen=True)
class CheckpointRun:
    """The run a checkpoint belongs to: its id, the ``save_dir`` holding its directory, the checkpoint's global
    step (None when not known) and where this was found (``index``, ``run directory``, ``checkpoint``)."""

    run_id: str
    root: Path
    step: int | None
    source: str


def note_checkpoint(root: str | os.PathLike, path: str | os.PathLike, run_id: str, run_dir: str | os.PathLike,
                    step: int | None) -> None:
    """Append one line for a checkpoint just saved."""
    append_json_line(Path(root) / CHECKPOINT_INDEX, {
        "path": os.path.abspath(path), "real": os.path.realpath(path), "run_id": run_id,
        "run_dir": os.path.abspath(run_dir), "step": step, "t": now_ms()})


def indexed(root: str | os.PathLike, path: str | os.PathLike) -> dict[str, Any] | None:
    """The latest index line for ``path`` (matched by absolute path, else by the file a link points to)."""
    wanted, real = os.path.abspath(path), os.path.realpath(path)
    by_path = by_real = None
    try:
        with open(Path(root) / CHECKPOINT_INDEX, encoding="utf-8") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                except ValueError:  # a torn line from a crash: the others are whole
                    continue
                if not isinstance(entry, dict) or not isinstance(entry.get("run_id"), str):
                    continue
                if entry.get("path") == wanted:
                    by_path = entry
                elif entry.get("real") == real:
                    by_real = entry
    except OSError:
        return None
    return by_path or by_real


def _run_dir_around(path: Path) -> Path | None:
    """The run directory a checkpoint lies in (a directory named by the run id its ``run.json`` holds)."""
    for parent in list(path.parents)[:_ANCESTORS]:
        settings = read_json(parent / RUN_FILE)
        if isinstance(settings, dict) and settings.get("run_id") == parent.name:
            return parent
    return None


def _entry_in_checkpoint(path: Path) -> tuple[dict[str, Any] | None, int | None]:
    """The ``"dualtrack"`` entry and the global step of a checkpoint (memory-mapped: the weights are not read)."""
    import torch

    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 - not a checkpoint torch can read: it names no run
        return None, None
    if not isinstance(ckpt, dict):
        return None, None
    entry = ckpt.get(CHECKPOINT_ENTRY)
    step = ckpt.get("global_step")
    return (entry if isinstance(entry, dict) else None), (step if isinstance(step, int) else None)


def checkpoint_run(root: str | os.PathLike, path: str | os.PathLike) -> CheckpointRun | None:
    """The run that wrote checkpoint ``path``: from the index in ``root`` (the logger's ``save_dir``), the run
    directory around the file, or the checkpoint's own ``"dualtrack"`` entry. None when none of them names one."""
    entry = indexed(root, path)
    if entry is not None:
        run_dir = Path(entry.get("run_dir") or Path(root) / entry["run_id"])
        return CheckpointRun(entry["run_id"], run_dir.parent, entry.get("step"), "index")
    file = Path(path)
    if not file.exists():
        return None
    run_dir = _run_dir_around(file.resolve())
    inside, step = _entry_in_checkpoint(file)
    if run_dir is not None:
        return CheckpointRun(run_dir.name, run_dir.parent, step, "run directory")
    if inside and isinstance(inside.get("run_id"), str):
        saved_in = inside.get("save_dir") or (Path(inside["run_dir"]).parent if inside.get("run_dir") else root)
        return CheckpointRun(inside["run_id"], Path(saved_in), step, "checkpoint")
    return None


def resume_target(save_dir: str | os.PathLike, resume_from: Any, run_id: str | None, strict: bool
                  ) -> tuple[str | None, str | os.PathLike, str | None]:
    """``(run_id, save_dir, note)`` for ``DualTrackLogger(resume_from=...)``: the checkpoint's run and the
    ``save_dir`` holding it. An explicit ``run_id`` wins (a warning if the checkpoint names another run); a
    checkpoint no run is known for is a warning (strict: ``ValueError``) and the logger starts a new run."""
    from lightning_dualtrack.core.messages import warn

    if not isinstance(resume_from, (str, os.PathLike)):
        raise TypeError(f"Expected argument `resume_from` to be a checkpoint path, but got {type(resume_from).__name__}")
    found = checkpoint_run(save_dir, resume_from)
    if run_id is not None:
        if found is not None and found.run_id != run_id:
            warn(f"resume_from={str(resume_from)!r} belongs to run {found.run_id}, but run_id={run_id!r} was given: "
                 f"logging into run {run_id}")
        return run_id, save_dir, None
    if found is None:
        why = ("no such file" if not Path(resume_from).exists() else
               f"it is not in the checkpoint index {Path(save_dir) / CHECKPOINT_INDEX}, not inside a run directory, "
               f"and holds no {CHECKPOINT_ENTRY!r} entry")
        message = f"resume_from={str(resume_from)!r} names no run of this logger ({why}); starting a new run"
        if strict:
            raise ValueError(message)
        warn(message)
        return None, save_dir, None
    at = f", step {found.step}" if found.step is not None else ""
    return found.run_id, found.root, (f"resume_from: continuing run {found.run_id} (the checkpoint's run, found by "
                                      f"its {found.source}{at})")
