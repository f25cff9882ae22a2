"""One run, one W&B directory: ``trainer.fit`` then ``trainer.test`` (and validate) with one logger write one
W&B offline directory holding every row, and one MLflow run whose ``wandb.dir`` tag names that directory.
Read back from the real ``mlflow server`` and from W&B's run file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from torch import nn

from lightning_dualtrack import DualTrackLogger
from lightning_dualtrack.sinks.wandb.runfile import find_run_files, read_runs
from lightning_dualtrack.sinks.wandb.sink import OFFSET_KEY
from tests.helpers import TinyModel, loaders, metric_steps, trainer, wandb_values

pytestmark = pytest.mark.slow


class ModelWithTest(TinyModel):
    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/loss", nn.functional.cross_entropy(self.layer(x), y))


def _offline_dirs(run_dir: Path, run_id: str) -> list[Path]:
    return sorted({p.parent for p in find_run_files(run_dir / "wandb", run_id)})


def test_fit_validate_then_test_write_one_wandb_directory_and_one_mlflow_run(mlflow_server, tmp_path, capfd) -> None:
    logger = DualTrackLogger(experiment_name="sessions", tracking_uri=mlflow_server.url, wandb_mode="offline",
                             save_dir=tmp_path / "runs")
    train, val = loaders()
    t = trainer(logger, max_steps=16, val_check_interval=8)
    model = ModelWithTest()
    t.fit(model, train, val)
    # the end of fit: every row is in the W&B run file already (the report says so), the W&B run is kept open
    (directory,) = _offline_dirs(logger.run_dir, logger.run_id)
    assert [s for s, _ in wandb_values(logger.run_dir, logger.run_id, "m0")] == list(range(16))
    assert read_runs(logger.run_dir, logger.run_id).exit_code is None
    client = MlflowClient(mlflow_server.url)
    assert client.get_run(logger.mlflow_run_id).info.status == "FINISHED"
    err = capfd.readouterr().err
    assert f"wandb: delivered -> {directory}" in err and "stays open for a next session" in err

    t.validate(model, val)
    t.test(model, val)
    logger.end_run()  # the run is over: the W&B run is finished now (else at interpreter exit)

    assert _offline_dirs(logger.run_dir, logger.run_id) == [directory]  # one directory for the whole run
    assert (logger.run_dir / "wandb" / "latest-run").resolve() == directory.resolve()
    w = read_runs(logger.run_dir, logger.run_id)
    assert w.exit_code == 0 and len(w.paths) == 1
    assert [s for s, _ in wandb_values(logger.run_dir, logger.run_id, "m0")] == list(range(16))
    assert len(wandb_values(logger.run_dir, logger.run_id, "val/loss")) == 3  # 2 in fit + 1 validate
    assert len(wandb_values(logger.run_dir, logger.run_id, "test/loss")) == 1
    offsets = [row[OFFSET_KEY] for row in w.history if OFFSET_KEY in row]
    assert len(offsets) == len(set(offsets)) and offsets == sorted(offsets)  # nothing written twice
    assert w.config["mlflow/run_id"] == logger.mlflow_run_id
    run = client.get_run(logger.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["wandb.dir"] == str(directory)
    assert "wandb.dirs" not in run.data.tags
    assert metric_steps(mlflow_server.url, run.info.run_id, "m0") == list(range(16))
    assert len(metric_steps(mlflow_server.url, run.info.run_id, "test/loss")) == 1
    # one MLflow run in the experiment
    assert len(client.search_runs([run.info.experiment_id])) == 1


_SCRIPT = textwrap.dedent("""
    import sys, time
    from lightning_dualtrack import DualTrackLogger
    from tests.helpers import TinyModel, loaders, trainer

    logger = DualTrackLogger(experiment_name="killed", tracking_uri=sys.argv[1], wandb_mode="offline",
                             save_dir=sys.argv[2])
    trainer(logger, max_steps=6).fit(TinyModel(), loaders()[0])
    print("FINALIZED", logger.run_dir, logger.run_id, flush=True)
    time.sleep(600)
""")


def test_sigkill_of_the_training_process_after_finalize_finishes_the_held_wandb_run(mlflow_server, tmp_path) -> None:
    script = tmp_path / "train.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(script), mlflow_server.url, str(tmp_path / "runs")], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env, cwd=tmp_path)
    try:
        line = proc.stdout.readline()
        assert line.startswith("FINALIZED"), line
        _, run_dir, run_id = line.split()
        run_dir = Path(run_dir)
        assert read_runs(run_dir, run_id).exit_code is None  # held open for a next session
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_at = time.monotonic()
        while read_runs(run_dir, run_id).exit_code is None:
            assert time.monotonic() - killed_at < 10, "the orphaned delivery process did not finish the W&B run"
            time.sleep(0.1)
        finished_after = time.monotonic() - killed_at
    finally:
        proc.kill()
    w = read_runs(run_dir, run_id)
    assert w.exit_code == 0 and len(_offline_dirs(run_dir, run_id)) == 1
    assert [r["trainer/global_step"] for r in w.history if "m0" in r] == list(range(6))
    assert finished_after < 5.0, finished_after
    state = json.loads((run_dir / "state" / "wandb.json").read_text())
    assert state["closed"] and not state["held"]
    # nothing is left for `dualtrack sync` to do, and it says so
    out = subprocess.run([sys.executable, "-m", "lightning_dualtrack.cli", "sync", str(run_dir)], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(_offline_dirs(run_dir, run_id)) == 1


def test_a_run_resumed_by_another_process_names_every_wandb_directory(mlflow_server, tmp_path, capsys) -> None:
    # wandb 0.31 never appends to a run file (wandb-core opens it with O_EXCL): a second process writes a
    # second directory; the cross-link tags and `dualtrack status` name both
    first = DualTrackLogger(experiment_name="resumed", tracking_uri=mlflow_server.url, wandb_mode="offline",
                            save_dir=tmp_path / "runs")
    with first:
        first.log_metrics({"x": 1.0}, step=0)
    again = DualTrackLogger(experiment_name="resumed", tracking_uri=mlflow_server.url, wandb_mode="offline",
                            save_dir=tmp_path / "runs", run_id=first.run_id)
    with again:
        again.log_metrics({"x": 2.0}, step=1)
    dirs = [str(d) for d in _offline_dirs(first.run_dir, first.run_id)]
    assert len(dirs) == 2
    tags = MlflowClient(mlflow_server.url).get_run(first.mlflow_run_id).data.tags
    assert json.loads(tags["wandb.dirs"]) == dirs  # oldest first (the names start with the start time)
    assert tags["wandb.dir"] == dirs[-1]  # where the latest session is
    assert [s for s, _ in wandb_values(first.run_dir, first.run_id, "x")] == [0, 1]
    from lightning_dualtrack.cli import main

    capsys.readouterr()
    assert main(["status", str(first.run_dir)]) == 0
    out = capsys.readouterr().out
    assert all(d in out for d in dirs), out


_SHORT = textwrap.dedent("""
    import sys, time
    from lightning_dualtrack import DualTrackLogger
    from tests.helpers import TinyModel, loaders, trainer

    logger = DualTrackLogger(experiment_name="short", tracking_uri=sys.argv[1], wandb_mode="offline", save_dir=sys.argv[2])
    t0 = time.perf_counter()
    trainer(logger, max_steps=12).fit(TinyModel(), loaders()[0])
    print("FIT", time.perf_counter() - t0, logger.run_dir, logger.run_id, flush=True)
""")


def test_a_script_that_exits_right_after_fit_has_everything_delivered_and_its_wandb_run_finished(mlflow_server, tmp_path) -> None:
    script = tmp_path / "short.py"
    script.write_text(_SHORT)
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(script), mlflow_server.url, str(tmp_path / "runs")], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("FIT")]
    _, _, run_dir, run_id = line.split()
    run_dir = Path(run_dir)
    assert "mlflow: delivered" in out.stderr and "wandb: delivered" in out.stderr  # finalize waited for both
    # once the training process has exited, everything is stored in both, exactly once, and the W&B run finished
    w = read_runs(run_dir, run_id)
    assert w.exit_code == 0 and len(_offline_dirs(run_dir, run_id)) == 1
    assert [r["trainer/global_step"] for r in w.history if "m0" in r] == list(range(12))
    state = json.loads((run_dir / "state" / "mlflow.json").read_text())
    assert metric_steps(mlflow_server.url, state["identity"]["run_id"], "m0") == list(range(12))
    assert MlflowClient(mlflow_server.url).get_run(state["identity"]["run_id"]).info.status == "FINISHED"
