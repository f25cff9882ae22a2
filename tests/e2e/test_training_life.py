"""The training life at the backends (a real ``mlflow server``, W&B offline read back from its run files): a
requeued SLURM job continues its run through ``ckpt_path="last"`` and ``"hpc"``, a rewound resume forks instead of
logging a step twice, and the examples (an Optuna study with a pruned trial, k folds) make parent and child runs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from mlflow.tracking import MlflowClient

from lightning_dualtrack import DualTrackLogger, DualTrackWarning
from lightning_dualtrack.sinks.wandb.runfile import find_run_files, read_runs
from tests.helpers import TinyModel, loaders, metric_steps, trainer, wandb_values

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STEPS_PER_EPOCH = 8  # tests.helpers.loaders: 64 samples, batches of 8


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", **extra,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _run_dirs(save_dir: Path) -> list[Path]:
    return sorted(p.parent for p in save_dir.glob("*/run.json"))


def _experiment_runs(server, name: str) -> list:
    client = MlflowClient(server.url)
    return client.search_runs([client.get_experiment_by_name(name).experiment_id])


_REQUEUED = textwrap.dedent("""
    import sys
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning_dualtrack import DualTrackLogger
    from tests.helpers import TinyModel, loaders, trainer

    epochs, ckpt_path, save_hpc = int(sys.argv[1]), sys.argv[2] or None, sys.argv[3] == "hpc"
    logger = DualTrackLogger(experiment_name="requeue", save_dir="runs")  # no id: the job decides
    train, val = loaders()
    t = trainer(logger, max_steps=-1, max_epochs=epochs, enable_checkpointing=True,
                callbacks=[ModelCheckpoint(dirpath="ckpts", save_last=True)])
    t.fit(TinyModel(), train, val, ckpt_path=ckpt_path)
    if save_hpc:  # what SLURMEnvironment(auto_requeue=True) saves on SIGUSR1 before the job is requeued
        t.save_checkpoint(f"{t.default_root_dir}/hpc_ckpt_1.ckpt")
    print("RUN", logger.run_id, flush=True)
""")


def test_a_requeued_slurm_job_continues_its_run_through_last_and_hpc_checkpoints(mlflow_server, tmp_path) -> None:
    (tmp_path / "train.py").write_text(_REQUEUED)
    env = _env(SLURM_JOB_ID="4242", MLFLOW_TRACKING_URI=mlflow_server.url)
    outputs = []
    # the job: 2 epochs; requeued: 2 more from last.ckpt (then the hpc checkpoint is saved); requeued: 2 more from it
    for epochs, ckpt_path, save in ((2, "", ""), (4, "last", "hpc"), (6, "hpc", "")):
        out = subprocess.run([sys.executable, "train.py", str(epochs), ckpt_path, save], capture_output=True, text=True,
                             env=env, cwd=tmp_path, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        outputs.append(out)
    run_ids = [next(line.split()[1] for line in o.stdout.splitlines() if line.startswith("RUN")) for o in outputs]
    assert len(set(run_ids)) == 1, run_ids
    run_id = run_ids[0]
    for o in outputs[1:]:
        assert f"SLURM job 4242 restarted: continuing run {run_id}" in o.stderr
    assert "Restored all states from the checkpoint at" in outputs[2].stderr + outputs[2].stdout
    (run_dir,) = _run_dirs(tmp_path / "runs")

    every_step = list(range(6 * STEPS_PER_EPOCH))
    every_validation = [STEPS_PER_EPOCH * (e + 1) - 1 for e in range(6)]  # 7, 15, ... 47: each epoch's once
    (run,) = _experiment_runs(mlflow_server, "requeue")  # one MLflow run
    assert run.info.status == "FINISHED" and run.data.tags["dualtrack.run_id"] == run_id
    assert metric_steps(mlflow_server.url, run.info.run_id, "val/loss") == every_validation
    assert metric_steps(mlflow_server.url, run.info.run_id, "m0") == every_step
    # W&B: one run id, one offline directory per process (wandb never appends to another process's run file)
    files = find_run_files(run_dir / "wandb")
    assert len(files) == 3 and all(f.name == f"run-{run_id}.wandb" for f in files)
    assert [s for s, _ in wandb_values(run_dir, run_id, "val/loss")] == every_validation
    assert [s for s, _ in wandb_values(run_dir, run_id, "m0")] == every_step
    assert json.loads(run.data.tags["wandb.dirs"]) == [str(f.parent) for f in files]


def test_resuming_from_an_earlier_checkpoint_forks_the_run_and_leaves_the_original_intact(mlflow_server, tmp_path) -> None:
    def logger(**kwargs) -> DualTrackLogger:
        return DualTrackLogger(experiment_name="rewind", tracking_uri=mlflow_server.url, wandb_mode="offline",
                               save_dir=tmp_path / "runs", **kwargs)

    train, val = loaders()
    first = logger(run_name="base")
    trainer(first, max_steps=-1, max_epochs=2, enable_checkpointing=True,
            callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpts", save_top_k=-1)]).fit(TinyModel(), train, val)
    first.end_run()
    earlier = tmp_path / "ckpts" / "epoch=0-step=8.ckpt"  # the run went on to step 15 after it

    again = logger(resume_from=earlier)
    assert again.run_id == first.run_id  # the checkpoint's run, found in the checkpoint index
    with pytest.warns(DualTrackWarning, match=rf"run {first.run_id} was resumed at step 8, but it already holds .* up to "
                                              r"step 15: logging on into a fork"):
        trainer(again, max_steps=-1, max_epochs=3).fit(TinyModel(), train, val, ckpt_path=earlier)
    again.end_run()
    assert again.run_id != first.run_id

    client = MlflowClient(mlflow_server.url)
    original, fork = client.get_run(first.mlflow_run_id), client.get_run(again.mlflow_run_id)
    assert len(_experiment_runs(mlflow_server, "rewind")) == 2
    # the original as it was: steps 0-15, nothing of the resumed session
    assert metric_steps(mlflow_server.url, original.info.run_id, "m0") == list(range(16))
    assert metric_steps(mlflow_server.url, original.info.run_id, "val/loss") == [7, 15]
    assert [s for s, _ in wandb_values(first.run_dir, first.run_id, "m0")] == list(range(16))
    # the fork: the original's history before step 8, then its own; no step twice
    assert fork.info.run_name == "base-fork8"
    assert fork.data.tags["dualtrack.forked_from"] == first.run_id and fork.data.tags["dualtrack.fork_step"] == "8"
    assert fork.data.tags["dualtrack.forked_from.mlflow_run_id"] == original.info.run_id
    assert metric_steps(mlflow_server.url, fork.info.run_id, "m0") == list(range(24))
    assert metric_steps(mlflow_server.url, fork.info.run_id, "val/loss") == [7, 15, 23]
    assert fork.data.params["lr"] == "0.05"
    w = read_runs(again.run_dir, again.run_id)
    assert w.config["dualtrack/forked_from"] == first.run_id and w.config["dualtrack/fork_step"] == "8"
    assert [s for s, _ in wandb_values(again.run_dir, again.run_id, "m0")] == list(range(24))
    assert [s for s, _ in wandb_values(again.run_dir, again.run_id, "val/loss")] == [7, 15, 23]


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PruneTrialTwo(optuna.pruners.BasePruner):
    """Prunes trial 2 at its first report, and nothing else: the study's outcome does not depend on the numbers."""

    def prune(self, study, trial) -> bool:
        return trial.number == 2


def test_a_study_of_four_trials_is_one_parent_with_four_nested_children_and_the_pruned_one_killed(mlflow_server, tmp_path) -> None:
    sweep = _example("optuna_sweep")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with DualTrackLogger(experiment_name="study", run_name="study", tracking_uri=mlflow_server.url,
                         wandb_mode="offline", save_dir=tmp_path / "runs") as parent:
        study = optuna.create_study(direction="maximize", pruner=PruneTrialTwo(),
                                    sampler=optuna.samplers.RandomSampler(seed=0))
        study.optimize(sweep.objective_for(parent, 2, sweep.make_data()), n_trials=4)
        parent.log_study_summary(study)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"]

    client = MlflowClient(mlflow_server.url)
    top = client.get_run(parent.mlflow_run_id)
    children = {r.info.run_name: r for r in _experiment_runs(mlflow_server, "study") if r.info.run_id != top.info.run_id}
    assert sorted(children) == ["trial-0", "trial-1", "trial-2", "trial-3"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children.values()} == {top.info.run_id}
    assert {n: r.info.status for n, r in children.items()} == {
        "trial-0": "FINISHED", "trial-1": "FINISHED", "trial-2": "KILLED", "trial-3": "FINISHED"}
    assert children["trial-2"].data.tags["dualtrack.status"] == "pruned"
    assert top.data.metrics["study/best_value"] == pytest.approx(study.best_value)
    assert top.data.metrics["study/n_trials"] == 4 and top.data.metrics["study/n_pruned"] == 1
    assert top.data.tags["dualtrack.best_run_id"] == study.best_trial.user_attrs["dualtrack_run_id"]
    assert top.data.params["study/best_params/hidden"] == str(study.best_params["hidden"])
    for number, r in enumerate(children[f"trial-{i}"] for i in range(4)):
        run_id = study.trials[number].user_attrs["dualtrack_run_id"]
        w = read_runs(tmp_path / "runs" / run_id, run_id)
        assert (w.group, w.job_type) == ("study", "trial")
        assert w.exit_code == (255 if number == 2 else 0)
        assert w.config["dualtrack/parent_run_id"] == parent.run_id
        assert float(r.data.params["lr"]) == pytest.approx(study.trials[number].params["lr"])


def test_the_optuna_example_runs_as_written(mlflow_server, tmp_path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "optuna_sweep.py"), "--trials", "4", "--save-dir", "runs",
                          "--experiment", "example_sweep"], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                         env=_env(MLFLOW_TRACKING_URI=mlflow_server.url))
    assert out.returncode == 0, out.stderr[-3000:]
    runs = _experiment_runs(mlflow_server, "example_sweep")
    (top,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == top.info.run_id]
    assert len(runs) == 5 and len(kids) == 4
    values = [r.data.metrics["val/acc"] for r in kids if r.info.status == "FINISHED"]
    assert top.data.metrics["study/best_value"] == pytest.approx(max(values))
    assert f"best val/acc = {top.data.metrics['study/best_value']:.4f}" in out.stdout
    groups = {(read_runs(d, d.name).group, read_runs(d, d.name).job_type) for d in _run_dirs(tmp_path / "runs")
              if d.name != top.data.tags["dualtrack.run_id"]}
    assert groups == {("study", "trial")}


def test_the_kfold_example_summarises_three_folds_in_the_parent(mlflow_server, tmp_path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "kfold.py"), "--folds", "3", "--save-dir", "runs",
                          "--experiment", "example_kfold"], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                         env=_env(MLFLOW_TRACKING_URI=mlflow_server.url))
    assert out.returncode == 0, out.stderr[-3000:]
    runs = _experiment_runs(mlflow_server, "example_kfold")
    (top,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    folds = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == top.info.run_id), key=lambda r: r.info.run_name)
    assert [f.info.run_name for f in folds] == ["fold-0", "fold-1", "fold-2"]
    accs = [f.data.metrics["val/acc"] for f in folds]  # each fold's last value
    mean = sum(accs) / 3
    assert top.data.metrics["summary/val/acc/mean"] == pytest.approx(mean)
    assert top.data.metrics["summary/val/acc/std"] == pytest.approx((sum((a - mean) ** 2 for a in accs) / 3) ** 0.5)
    assert top.data.metrics["summary/children"] == 3
    for f in folds:
        w = read_runs(tmp_path / "runs" / f.data.tags["dualtrack.run_id"], f.data.tags["dualtrack.run_id"])
        assert (w.group, w.job_type, w.exit_code) == ("cv", "fold", 0)
