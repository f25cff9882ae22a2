"""The filesystem: artifact names that try to leave the run, a save_dir that cannot be written, a full disk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from lightning_dualtrack import DualTrackLogger, DualTrackWarning
from tests.e2e.reliability.ledger import (
    LedgerModel,
    TimedLogger,
    assert_delivered,
    journal_points,
    mlflow_run_id,
    read_ledger_file,
)
from tests.helpers import loaders, trainer

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

SCRIPT = Path(__file__).with_name("train_script.py")


def all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def list_artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out += list_artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return out


@pytest.mark.timeout(120)
@pytest.mark.fresh_service  # the delivery service's W&B directories are this test's
def test_artifact_names_cannot_escape_the_run(mlflow_server, tmp_path) -> None:
    absolute = tmp_path / "absolute_target.txt"
    names = ["../../escape.txt", str(absolute), "..\\..\\backslash.txt", "a/../../../up.txt", "/etc/dualtrack_abs.txt"]
    src = tmp_path / "src"
    (src / "dir").mkdir(parents=True)
    (src / "file.txt").write_text("payload")
    (src / "dir" / "inner.txt").write_text("inner")
    server_before = all_files(mlflow_server.artifacts_dir)
    before = all_files(tmp_path)
    logger = DualTrackLogger(experiment_name="paths", tracking_uri=mlflow_server.url, wandb_mode="offline",
                             save_dir=tmp_path / "deep" / "er" / "runs", flush_interval=0.2)
    with warnings.catch_warnings(record=True) as caught, logger:
        warnings.simplefilter("always")
        for i, name in enumerate(names):
            logger.log_text(f"text {i}", name)
            logger.log_dict({"i": i}, f"{name}_dict")
            logger.log_image(np.zeros((4, 4, 3), np.uint8), name, step=i)
            logger.log_table(name, ["a"], [[i]], step=i)
            logger.log_confusion_matrix([[1, 0], [0, 1]], ["x", "y"], step=i, key=f"{name}_cm")
            logger.log_artifact(src / "file.txt", artifact_path=f"{name}_art")
            logger.log_artifact(src / "dir", artifact_path=f"{name}_art")
    assert any("not a plain relative path inside the run" in str(w.message) for w in caught)

    run_dir = logger.run_dir.resolve()
    wandb_dirs = [Path(os.environ[v]).resolve() for v in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR")]
    outside = {p for p in all_files(tmp_path) - before if not p.resolve().is_relative_to(run_dir) and not any(p.resolve().is_relative_to(d) for d in wandb_dirs)}
    assert outside == set()
    assert not absolute.exists() and not Path("/etc/dualtrack_abs.txt").exists()
    # on the server: every new file is inside this run's artifact directory, under its cleaned name
    rid = mlflow_run_id(logger.run_dir)
    new_on_server = all_files(mlflow_server.artifacts_dir) - server_before
    assert new_on_server and all(f"/{rid}/artifacts/" in str(p) for p in new_on_server), sorted(new_on_server)[:5]
    stored = list_artifacts(MlflowClient(mlflow_server.url), rid)
    assert all(".." not in p and "\\" not in p and not p.startswith("/") for p in stored)
    # nothing valid lost: each file under its cleaned name (`..`, leading `/` and `\\` dropped)
    for cleaned in ("escape.txt", absolute.relative_to("/").as_posix(), "backslash.txt", "a/up.txt", "etc/dualtrack_abs.txt"):
        expected = {cleaned, f"{cleaned}_dict.json", f"{cleaned}_art/file.txt", f"{cleaned}_art/dir/inner.txt"}
        assert expected <= set(stored), (cleaned, sorted(expected - set(stored)))
        assert any(p.startswith(f"images/{cleaned}_step") for p in stored) and any(p.startswith(f"tables/{cleaned}_step") for p in stored)
        assert any(p.startswith(f"{cleaned}_cm_step") and p.endswith(".json") for p in stored)
    # W&B's copies are inside the run's W&B directory
    assert all(p.resolve().is_relative_to(run_dir) for p in (run_dir / "wandb").rglob("*.txt"))


@pytest.fixture
def unwritable_save_dir(request, tmp_path) -> Path:
    if request.param == "under-a-file":
        blocker = tmp_path / "a_file"
        blocker.write_text("")
        return blocker / "runs"  # mkdir fails with NotADirectoryError, for root too
    if os.geteuid() == 0:
        pytest.skip("running as root: permission bits do not stop root's writes (the under-a-file case covers it)")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    request.addfinalizer(lambda: locked.chmod(0o700))
    return locked / "runs"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("unwritable_save_dir", ["under-a-file", "read-only"], indirect=True)
def test_unwritable_save_dir_falls_back_with_a_loud_warning(unwritable_save_dir, mlflow_server, tmp_path) -> None:
    logger = TimedLogger(experiment_name="unwritable", tracking_uri=mlflow_server.url, wandb_mode="offline",
                         save_dir=unwritable_save_dir, flush_interval=0.2)
    model = LedgerModel()
    try:
        with pytest.warns(DualTrackWarning, match="is not writable"):
            trainer(logger, max_steps=12).fit(model, loaders()[0])
        assert not logger.run_dir.is_relative_to(unwritable_save_dir.parent)
        assert_delivered(logger.run_dir, logger.run_id, mlflow_server.url, model.ledger)
    finally:
        if logger._run.run_dir is not None and not logger.run_dir.is_relative_to(tmp_path):
            shutil.rmtree(logger.run_dir, ignore_errors=True)  # the fallback is in the system's temp dir


@pytest.mark.timeout(60)
def test_unwritable_save_dir_in_strict_mode_is_a_clear_error(tmp_path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    logger = DualTrackLogger(wandb_mode="offline", mlflow=False, save_dir=blocker / "runs", strict=True)
    with pytest.raises(OSError, match="save_dir .* is not writable"):
        logger.log_metrics({"x": 1.0}, step=0)


@pytest.mark.timeout(150)
def test_full_disk_mid_run_training_goes_on_with_a_loud_warning(mlflow_server, tmp_path, subprocess_env) -> None:
    ledger, info = tmp_path / "ledger.jsonl", tmp_path / "info.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--save-dir", str(tmp_path / "runs"), "--tracking-uri", mlflow_server.url,
         "--ledger", "-", "--info", str(info), "--max-steps", "60", "--step-sleep", "0",
         "--flush-interval", "0.2", "--finalize-timeout", "3", "--fsize-limit", "3000"],
        env=subprocess_env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    output = result.stdout + result.stderr
    ledger.write_text(result.stdout)  # the ledger went to stdout (the full disk does not apply to pipes)
    assert result.returncode == 0 and "TRAINING DONE 60" in output, output[-3000:]
    assert output.count("cannot write the run journal") == 1 and "records are being LOST" in output
    run = json.loads(info.read_text())
    run_dir = Path(run["run_dir"])
    journal = journal_points(run_dir)
    logged = [p for _, p in read_ledger_file(ledger)]
    kept = {s for _, s, _ in journal}
    assert 0 < len(kept) < 60  # what fit on the disk; the rest was lost, as the warning said
    # what the journal kept reaches both backends exactly once (after sync closes the run)
    sync = subprocess.run([sys.executable, "-m", "lightning_dualtrack.cli", "sync", str(run_dir), "--timeout", "60"],
                          capture_output=True, text=True, timeout=120)
    assert sync.returncode == 0, sync.stderr[-3000:]
    keys = {k for k, _, _ in logged}
    assert {(k, s) for k, s, _ in logged if s in kept} == {(k, s) for k, s, _ in journal if k in keys}
    assert_delivered(run_dir, run["run_id"], mlflow_server.url)
    # the append the full disk cut short was cut back: no torn line, and a record appended now is whole
    from lightning_dualtrack.core.journal import JournalReader, JournalWriter

    writer = JournalWriter(run_dir)
    writer.append({"k": "tags", "t": 0, "v": {"after": "space is back"}})
    writer.close()
    reader = JournalReader(run_dir)
    entries, _ = reader.read(0)
    assert reader.corrupt_lines == 0 and entries[-1].record["v"] == {"after": "space is back"}


PAYLOAD_SCRIPT = r"""
import resource, signal, sys
import numpy as np
from lightning_dualtrack import DualTrackLogger

uri, save_dir = sys.argv[1], sys.argv[2]
logger = DualTrackLogger(experiment_name="full-disk-payloads", tracking_uri=uri, wandb_mode="offline", save_dir=save_dir,
                         flush_interval=0.2, log_system_info=False, finalize_timeout=60)
logger.start_run()  # delivery is running: the limit below is this process's only
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, resource.RLIM_INFINITY))  # no file may grow past 150 kB: EFBIG
rng = np.random.default_rng(0)
for step in range(12):
    logger.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    logger.log_table("big", ["i", "text"], [[i, "x" * 40] for i in range(5000)], step=step)  # ~250 kB of JSON
    logger.log_image(rng.integers(0, 255, (400, 400, 3), dtype=np.uint8), "noise", step=step)  # ~480 kB of PNG
    logger.log_confusion_matrix([[3, 1], [0, 4]], ["a", "b"], step=step)
    logger.log_table("small", ["step"], [[step]], step=step)
print("TRAINING DONE", flush=True)
logger.finalize("success")
print("RUN_DIR", logger.run_dir, flush=True)
"""


@pytest.mark.timeout(150)
def test_full_disk_on_payload_writes_warns_once_per_kind_and_keeps_the_rest(mlflow_server, tmp_path, subprocess_env) -> None:
    result = subprocess.run([sys.executable, "-c", PAYLOAD_SCRIPT, mlflow_server.url, str(tmp_path / "runs")],
                            env=subprocess_env, cwd=tmp_path, capture_output=True, text=True, timeout=140)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "TRAINING DONE" in output, output[-3000:]
    assert output.count("cannot write the table") == 1 and output.count("cannot write the image") == 1, output[-3000:]
    assert "EFBIG" in output and "training goes on" in output
    run_dir = Path(next(line.split(" ", 1)[1] for line in result.stdout.splitlines() if line.startswith("RUN_DIR")))
    rid = mlflow_run_id(run_dir)
    client = MlflowClient(mlflow_server.url)
    assert sorted(m.step for m in client.get_metric_history(rid, "loss")) == list(range(12))
    stored = list_artifacts(client, rid)
    assert {f"tables/small_step{s:07d}.json" for s in range(12)} <= set(stored)
    assert {f"confusion_matrix_step{s:07d}.json" for s in range(12)} <= set(stored)
    assert not any(p.startswith(("tables/big", "images/noise")) for p in stored)
    from lightning_dualtrack.sinks.wandb.runfile import read_runs

    rows = read_runs(run_dir, run_dir.name).history
    assert sorted(r["trainer/global_step"] for r in rows if "loss" in r) == list(range(12))
    assert sum(1 for r in rows if "small" in r) == 12 and not any("big" in r or "noise" in r for r in rows)
