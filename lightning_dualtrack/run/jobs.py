"""Resume without ids: the loggers of a job restarted by its scheduler continue the runs of its earlier processes.

A scheduler that restarts a job runs the same script again in a new process: SLURM's requeue keeps
``SLURM_JOB_ID`` (an array task: ``SLURM_ARRAY_JOB_ID`` and ``SLURM_ARRAY_TASK_ID``), torchelastic keeps
``TORCHELASTIC_RUN_ID`` across its restarts, and any other scheduler can set ``DUALTRACK_JOB_ID``.
:func:`job_key` names the job from that environment. The job's index, ``save_dir/.jobs/<job key>.json``, maps
each logger the script builds -- the n-th one of the process (a per-process counter, so the trials of a sweep or
the folds of a loop keep their runs too), with its experiment and run name -- to the run it made. A restarted
process's n-th logger with the same experiment and run name gets the same run id, so it continues the same run
in every backend; anything else gets a new run (and the index is updated).

Read and written once per logger, when it is built; nothing here is on the log path. A logger given ``run_id``,
``resume``, ``resume_from`` or ``resume_job=False`` does not take part (and is not counted).
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_dualtrack.core.io import read_json, write_json_atomic
from lightning_dualtrack.core.journal import now_ms

JOBS_DIR = ".jobs"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_slots = itertools.count(1)  # the loggers of this process that take part, in the order they are built


@dataclass(frozen=True)
class Job:
    """A job a scheduler may restart: ``key`` names its index file, ``description`` says where it came from."""

    key: str
    description: str


@dataclass
class JobRun:
    """The run a logger of a job was given: ``slot`` is the logger's number in its process, ``experiment_name`` and
    ``run_name`` what it was built with; ``continued`` says whether an earlier process of the job made the run."""

    job: Job
    slot: int
    run_id: str
    continued: bool
    experiment_name: str
    run_name: str | None


def _clean(value: str) -> str:
    return _UNSAFE.sub("_", value.strip())[:100]


def job_key(environ: Mapping[str, str] | None = None) -> Job | None:
    """The job this process belongs to, from the environment: ``DUALTRACK_JOB_ID``, else the SLURM array task
    (``SLURM_ARRAY_JOB_ID`` + ``SLURM_ARRAY_TASK_ID``), else ``SLURM_JOB_ID``, else ``TORCHELASTIC_RUN_ID``
    (not its default ``none``, which every launch shares). None outside a scheduler.

    Example:
        >>> job_key({"SLURM_JOB_ID": "4242"})
        Job(key='slurm-4242', description='SLURM job 4242')
        >>> job_key({"SLURM_JOB_ID": "4243", "SLURM_ARRAY_JOB_ID": "4200", "SLURM_ARRAY_TASK_ID": "3"}).key
        'slurm-4200_3'
        >>> job_key({}) is None
        True
    """
    env = os.environ if environ is None else environ
    own = (env.get("DUALTRACK_JOB_ID") or "").strip()
    if own:
        return Job(f"job-{_clean(own)}", f"DUALTRACK_JOB_ID={own}")
    array_job, task = (env.get("SLURM_ARRAY_JOB_ID") or "").strip(), (env.get("SLURM_ARRAY_TASK_ID") or "").strip()
    if array_job and task:
        return Job(f"slurm-{_clean(array_job)}_{_clean(task)}", f"SLURM array job {array_job} task {task}")
    slurm = (env.get("SLURM_JOB_ID") or "").strip()
    if slurm:
        return Job(f"slurm-{_clean(slurm)}", f"SLURM job {slurm}")
    elastic = (env.get("TORCHELASTIC_RUN_ID") or "").strip()
    if elastic and elastic.lower() != "none":
        return Job(f"torchelastic-{_clean(elastic)}", f"torchelastic run {elastic}")
    return None


class JobIndex:
    """``save_dir/.jobs/<job key>.json``: ``{"loggers": {slot: {run_id, experiment_name, run_name, t}}}``.

    Changes are made under a lock file beside it (two processes of one job building loggers at once, e.g. the
    tasks of a multi-node job that all think they are rank zero, do not lose each other's entries).
    """

    def __init__(self, root: str | os.PathLike, key: str) -> None:
        self.path = Path(root) / JOBS_DIR / f"{key}.json"

    def entries(self) -> dict[str, dict[str, Any]]:
        data = read_json(self.path, default={}) or {}
        loggers = data.get("loggers") if isinstance(data, dict) else None
        return loggers if isinstance(loggers, dict) else {}

    def run_for(self, slot: int, experiment_name: str, run_name: str | None) -> str | None:
        """The run id the ``slot``-th logger of an earlier process made, if it had this experiment and run name."""
        entry = self.entries().get(str(slot))
        if not isinstance(entry, dict) or not isinstance(entry.get("run_id"), str):
            return None
        if entry.get("experiment_name") != experiment_name or entry.get("run_name") != run_name:
            return None
        return entry["run_id"]

    def remember(self, slot: int, run_id: str, experiment_name: str, run_name: str | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            entries = self.entries()
            entries[str(slot)] = {"run_id": run_id, "experiment_name": experiment_name, "run_name": run_name,
                                  "t": now_ms()}
            write_json_atomic(self.path, {"loggers": entries})


def assign(root: str | os.PathLike, experiment_name: str, run_name: str | None, new_id: str,
           environ: Mapping[str, str] | None = None) -> JobRun | None:
    """The run of this process's next logger in its job: an earlier process's (same slot, experiment and run name)
    or ``new_id``, remembered for the next restart. None outside a scheduler, or when the index cannot be
    written (a read-only ``save_dir``: then nothing is resumed by job, as without a scheduler)."""
    job = job_key(environ)
    if job is None:
        return None
    slot = next(_slots)
    index = JobIndex(root, job.key)
    earlier = index.run_for(slot, experiment_name, run_name)
    run = JobRun(job, slot, earlier or new_id, earlier is not None, experiment_name, run_name)
    try:
        index.remember(slot, run.run_id, experiment_name, run_name)
    except OSError:
        return None if earlier is None else run
    return run


def moved(root: str | os.PathLike, run: JobRun, run_id: str) -> None:
    """The job's run went on in another run (a fork): a later restart continues that one."""
    run.run_id = run_id
    try:
        JobIndex(root, run.job.key).remember(run.slot, run_id, run.experiment_name, run.run_name)
    except OSError:
        pass
