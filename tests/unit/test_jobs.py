"""Resume without ids (run.jobs): the job key from the scheduler's environment, the job's index, and loggers of a
restarted process (simulated: a fresh per-process counter) getting the runs of the process before."""

from __future__ import annotations

import itertools
import json

import pytest

from lightning_dualtrack import DualTrackLogger
from lightning_dualtrack.run import jobs
from lightning_dualtrack.run.jobs import JobIndex, assign, job_key


@pytest.fixture
def new_process(monkeypatch):
    """Start the per-process logger count over, as a restarted process does; call it again for the next process."""

    def restart() -> None:
        monkeypatch.setattr(jobs, "_slots", itertools.count(1))

    restart()
    return restart


@pytest.mark.parametrize(("env", "key"), [
    ({"SLURM_JOB_ID": "4242"}, "slurm-4242"),
    ({"SLURM_JOB_ID": "4243", "SLURM_ARRAY_JOB_ID": "4200", "SLURM_ARRAY_TASK_ID": "7"}, "slurm-4200_7"),
    ({"SLURM_JOB_ID": "4243", "SLURM_ARRAY_JOB_ID": "4200"}, "slurm-4243"),  # not an array task: the job itself
    ({"TORCHELASTIC_RUN_ID": "rdzv-1"}, "torchelastic-rdzv-1"),
    ({"TORCHELASTIC_RUN_ID": "none"}, None),  # torchrun's default id: every launch has it
    ({"SLURM_JOB_ID": "9", "TORCHELASTIC_RUN_ID": "abc"}, "slurm-9"),  # torchrun inside SLURM: the requeued job
    ({"DUALTRACK_JOB_ID": "pbs.17", "SLURM_JOB_ID": "9"}, "job-pbs.17"),
    ({"DUALTRACK_JOB_ID": "a/b c"}, "job-a_b_c"),  # a file name
    ({"SLURM_JOB_ID": "  "}, None),
    ({}, None),
])
def test_the_job_key_comes_from_the_scheduler_environment(env, key) -> None:
    job = job_key(env)
    assert (job.key if job else None) == key


def test_a_restarted_process_gets_each_slot_its_run_back(tmp_path, new_process) -> None:
    env = {"SLURM_JOB_ID": "1"}
    first = [assign(tmp_path, "exp", name, f"new{i}", env) for i, name in enumerate([None, "trial-0", "trial-1"])]
    assert [r.run_id for r in first] == ["new0", "new1", "new2"] and not any(r.continued for r in first)
    new_process()
    again = [assign(tmp_path, "exp", name, f"other{i}", env) for i, name in enumerate([None, "trial-0", "trial-1"])]
    assert [r.run_id for r in again] == ["new0", "new1", "new2"] and all(r.continued for r in again)
    assert [r.slot for r in again] == [1, 2, 3]


def test_a_slot_built_differently_after_the_restart_gets_a_new_run(tmp_path, new_process) -> None:
    env = {"SLURM_JOB_ID": "1"}
    assign(tmp_path, "exp", "trial-0", "a", env)
    assign(tmp_path, "exp", None, "b", env)
    new_process()
    assert assign(tmp_path, "exp", "trial-5", "c", env).run_id == "c"  # another run name: another run
    assert assign(tmp_path, "other", None, "d", env).run_id == "d"  # another experiment
    new_process()
    assert assign(tmp_path, "exp", "trial-5", "e", env).run_id == "c"  # what the index now holds


def test_another_job_or_no_job_shares_nothing(tmp_path, new_process) -> None:
    assign(tmp_path, "exp", None, "a", {"SLURM_JOB_ID": "1"})
    new_process()
    assert assign(tmp_path, "exp", None, "b", {"SLURM_JOB_ID": "2"}).run_id == "b"
    assert assign(tmp_path, "exp", None, "c", {}) is None
    assert sorted(p.name for p in (tmp_path / ".jobs").glob("*.json")) == ["slurm-1.json", "slurm-2.json"]


def test_a_fork_moves_the_slot_so_the_next_restart_continues_the_fork(tmp_path, new_process) -> None:
    env = {"SLURM_JOB_ID": "1"}
    run = assign(tmp_path, "exp", None, "orig", env)
    jobs.moved(tmp_path, run, "forked")
    new_process()
    assert assign(tmp_path, "exp", None, "x", env).run_id == "forked"


def test_an_unreadable_index_is_started_over(tmp_path, new_process) -> None:
    (tmp_path / ".jobs").mkdir()
    (tmp_path / ".jobs" / "slurm-1.json").write_text("{torn")
    assert assign(tmp_path, "exp", None, "a", {"SLURM_JOB_ID": "1"}).run_id == "a"
    assert JobIndex(tmp_path, "slurm-1").entries()["1"]["run_id"] == "a"


def _logger(tmp_path, **kwargs) -> DualTrackLogger:
    return DualTrackLogger(experiment_name="jobs", save_dir=tmp_path / "runs", deliver=False, log_system_info=False,
                           mlflow=False, wandb=False, **kwargs)


def test_the_logger_of_a_requeued_job_continues_its_run_and_says_so(tmp_path, monkeypatch, new_process, capsys) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    first = _logger(tmp_path)
    with first:
        first.log_metrics({"loss": 1.0}, step=0)
    new_process()
    again = _logger(tmp_path)
    assert again.run_id == first.run_id
    assert f"SLURM job 77 restarted: continuing run {first.run_id}" in capsys.readouterr().err
    with again:
        again.log_metrics({"loss": 0.5}, step=1)
    starts = [json.loads(line) for line in (first.run_dir / "journal.jsonl").read_text().splitlines()]
    assert [r["resumed"] for r in starts if r["k"] == "start"] == [False, True]


def test_an_explicit_run_id_resume_or_opt_out_is_not_resumed_by_job(tmp_path, monkeypatch, new_process) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    first = _logger(tmp_path)
    new_process()
    assert _logger(tmp_path, resume_job=False).run_id != first.run_id
    new_process()
    assert _logger(tmp_path, run_id="mine").run_id == "mine"
    assert _logger(tmp_path).run_id == first.run_id  # the loggers above did not take a slot
