"""``dualtrack sync --wandb``: a run's offline W&B directories uploaded to the W&B server with W&B's own ``wandb sync``.

* Every ``offline-run-<time>-<id>`` directory of the run (one per process that wrote it: a run resumed elsewhere has
  several), oldest first, in one ``wandb sync --id <run id> -p <project> [-e <entity>] DIR...``: W&B syncs the parts
  of one run id in order of start time, into that one run.
* What was uploaded is recorded in ``state/wandb.uploaded.json`` (directory names relative to the run directory, the
  command, when): a second ``dualtrack sync`` uploads only directories made since. A failed ``wandb sync`` records
  nothing (W&B's own ``.synced`` markers keep it from uploading a directory twice on the next try).
* Only a run whose W&B delivery is finished (its offline file complete) is uploaded; an online run has nothing to
  upload.
* By default (neither ``--wandb`` nor ``--no-wandb``) the upload happens when W&B credentials exist
  (``WANDB_API_KEY`` or a ``~/.netrc`` entry), as W&B's own default mode is chosen.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lightning_dualtrack.core.io import STATE_DIR, read_json, write_json_atomic

UPLOADED_FILE = "wandb.uploaded.json"
_STARTED = re.compile(r"offline-run-(\d{8}_\d{6})-")


def uploaded_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / STATE_DIR / UPLOADED_FILE


def uploaded_dirs(run_dir: str | os.PathLike) -> list[str]:
    """The directories (relative to the run directory) already uploaded, in upload order."""
    data = read_json(uploaded_path(run_dir), default={}) or {}
    return [d for u in data.get("uploads") or [] for d in u.get("dirs") or []]


def offline_dirs(run_dir: str | os.PathLike, run_id: str) -> list[Path]:
    """Every offline directory of ``run_id`` under the run directory, oldest first (the start time in its name, then
    its run file's modification time).

    Example:
        >>> offline_dirs("/nonexistent", "abc")
        []
    """
    root = Path(run_dir)
    found = [p.parent for p in root.rglob(f"run-{run_id}.wandb") if p.is_file() and p.parent.name.startswith("offline-run-")]

    def started(path: Path) -> tuple[str, int, str]:
        match = _STARTED.match(path.name)
        return (match.group(1) if match else "", (path / f"run-{run_id}.wandb").stat().st_mtime_ns, path.name)

    return sorted(set(found), key=started)


def wandb_executable() -> str:
    """W&B's CLI: the ``wandb`` on ``PATH``, else the one installed beside this Python."""
    found = shutil.which("wandb")
    if found:
        return found
    beside = Path(sys.executable).with_name("wandb")
    return str(beside) if beside.exists() else "wandb"


def sync_command(identity: Mapping[str, Any], dirs: list[Path]) -> list[str]:
    """``wandb sync --id <run id> -p <project> [-e <entity>] DIR...`` for the directories of one run, in order."""
    cmd = [wandb_executable(), "sync", "--id", str(identity["run_id"])]
    if identity.get("project"):
        cmd += ["-p", str(identity["project"])]
    if identity.get("entity"):
        cmd += ["-e", str(identity["entity"])]
    return cmd + [str(d) for d in dirs]


def upload_run(run_dir: str | os.PathLike, state: Mapping[str, Any], log: Callable[[str], None],
               timeout: float = 3600.0) -> bool:
    """Upload the run's offline directories not uploaded yet; False when some are left (said through ``log``)."""
    run_dir = Path(run_dir)
    identity = dict(state.get("identity") or {})
    if not identity.get("run_id"):
        log("W&B: no W&B run was made for this run: nothing to upload")
        return True
    if identity.get("mode") == "online" and identity.get("url"):
        return True  # delivered online: already on the server
    if not state.get("closed"):
        log("W&B: not uploaded: W&B's offline file is not complete yet (its delivery has not finished); "
            "run `dualtrack sync` again once it has")
        return False
    done = set(uploaded_dirs(run_dir))
    dirs = offline_dirs(run_dir, str(identity["run_id"]))
    todo = [d for d in dirs if str(d.relative_to(run_dir)) not in done]
    if not todo:
        if dirs:
            log(f"W&B: already uploaded ({len(dirs)} offline director{'y' if len(dirs) == 1 else 'ies'}; "
                f"{uploaded_path(run_dir)})")
        return True
    cmd = sync_command(identity, todo)
    log(f"W&B: uploading {len(todo)} offline director{'y' if len(todo) == 1 else 'ies'} into run "
        f"{identity['run_id']}:  {' '.join(cmd)}")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        log(f"W&B: `wandb sync` could not run ({type(err).__name__}: {str(err)[:200]}); nothing recorded as uploaded")
        return False
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip()[-400:]
        log(f"W&B: `wandb sync` failed (exit {proc.returncode}): {tail}; nothing recorded as uploaded, run "
            "`dualtrack sync --wandb` again")
        return False
    data = read_json(uploaded_path(run_dir), default={}) or {}
    uploads = list(data.get("uploads") or [])
    uploads.append({"dirs": [str(d.relative_to(run_dir)) for d in todo], "run_id": identity["run_id"],
                    "project": identity.get("project"), "entity": identity.get("entity"),
                    "command": cmd[1:], "t": int(time.time() * 1000)})
    write_json_atomic(uploaded_path(run_dir), {"uploads": uploads})
    log(f"W&B: uploaded; recorded in {uploaded_path(run_dir)}")
    return True

