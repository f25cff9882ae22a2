"""Six promises that held on the inputs first imagined and broke on the next ones, each staged against a real
``mlflow server`` (or the embedded sqlite store) and W&B offline, and kept as a test of the whole class:

1. a metric value that cannot be stored (an int beyond the float range) is a warning naming key and type;
2. a run directory deleted mid-run is noticed, made again, and every record still reaches both backends;
3. a name a backend refuses by its rules (``/`` in a W&B project) is fixed up with a warning, never retried;
4. a backend turned off by the environment (``WANDB_MODE=disabled``) is said at start and in the report;
5. a delivery process whose training process is gone gives up within its bound;
6. the embedded store is created by one process at a time; a half-migrated one is named with its repair.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from lightning_dualtrack import DualTrackLogger, DualTrackWarning
from lightning_dualtrack.cli import main as dualtrack
from tests.e2e.reliability.faults import BlackHole
from tests.e2e.reliability.ledger import Every, LedgerModel, assert_delivered, journal_points, wandb_points
from tests.helpers import loaders, trainer

pytestmark = [pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


# 1 -------------------------------------------------------------------------------------------------------------
def test_a_value_beyond_the_float_range_is_a_warning_naming_key_and_type_and_the_rest_is_kept(mlflow_server, tmp_path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with DualTrackLogger(experiment_name="promises", tracking_uri=mlflow_server.url, wandb_mode="offline",
                             save_dir=tmp_path / "runs", log_system_info=False) as run:
            run.log_metrics({"huge": 10**400, "loss": 0.5, "neg": -(10**309)}, step=0)
            run.log_metrics({"loss": 0.25}, step=1)
    messages = [str(w.message) for w in caught if issubclass(w.category, DualTrackWarning)]
    assert any("'huge'" in m and "int" in m and "float range" in m for m in messages), messages
    assert any("'neg'" in m for m in messages), messages
    assert sorted(journal_points(run.run_dir)) == [("loss", 0, 0.5), ("loss", 1, 0.25)]
    assert_delivered(run.run_dir, run.run_id, mlflow_server.url)
    strict = DualTrackLogger(experiment_name="promises", save_dir=tmp_path / "strict", deliver=False, strict=True,
                             wandb_mode="offline", log_system_info=False)
    with pytest.raises(ValueError, match="'huge'.*float range"):
        strict.log_metrics({"huge": 10**400}, step=0)


# 2 -------------------------------------------------------------------------------------------------------------
def test_a_run_directory_deleted_mid_run_is_made_again_and_every_record_reaches_both_backends(mlflow_server, tmp_path, capfd) -> None:
    model = LedgerModel(step_sleep=0.02)
    removed: list[int] = []

    def remove_at_step_30(t) -> None:
        if t.global_step == 30 and not removed:
            t.logger.log_text("a note", "notes/before.txt")  # a payload file that goes with the directory
            shutil.rmtree(t.logger.run_dir)  # a user cleaning the disk
            removed.append(t.global_step)

    logger = DualTrackLogger(experiment_name="promises", tracking_uri=mlflow_server.url, wandb_mode="offline",
                             save_dir=tmp_path / "runs", flush_interval=0.2, finalize_timeout=60, log_system_info=False)
    with pytest.warns(DualTrackWarning, match="was deleted while the run was going on") as caught:
        trainer(logger, max_steps=80, callbacks=[Every(remove_at_step_30)]).fit(model, loaders()[0])
    logger.end_run()
    assert removed
    message = next(str(w.message) for w in caught if "was deleted" in str(w.message))
    assert "payload file(s)" in message and "notes/before.txt" in message  # what was lost is named
    assert (logger.run_dir / "run.json").exists()
    # every point logged -- before and after the deletion -- once in the journal, MLflow and W&B (a new directory)
    assert_delivered(logger.run_dir, logger.run_id, mlflow_server.url, model.ledger)
    err = capfd.readouterr().err
    assert "LOST" in err  # the report counts the lost payload
    # a run directory again: sync reads it; the lost payload is the one thing it cannot deliver, and it says so
    assert dualtrack(["sync", str(logger.run_dir)]) == 1
    out = capfd.readouterr()
    assert "not a run directory" not in out.err and "is missing" in out.out, out


# 3 -------------------------------------------------------------------------------------------------------------
def test_a_name_wandb_refuses_is_fixed_up_with_a_warning_and_delivered(mlflow_server, tmp_path, capfd) -> None:
    with pytest.warns(DualTrackWarning, match=r"W&B project 'team/har' is not allowed.*using 'team-har'"):
        logger = DualTrackLogger(experiment_name="team/har", tracking_uri=mlflow_server.url, wandb_mode="offline",
                                 save_dir=tmp_path / "runs", log_system_info=False, finalize_timeout=60)
    with logger as run:
        for step in range(5):
            run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    assert run.last_report["wandb"].get("closed") and run.last_report["mlflow"].get("closed"), run.last_report
    assert sum(wandb_points(run.run_dir, run.run_id).values()) == 5
    from tests.helpers import wandb_run

    assert wandb_run(run.run_dir, run.run_id).project == "team-har"
    from mlflow.tracking import MlflowClient

    assert MlflowClient(mlflow_server.url).get_experiment_by_name("team/har") is not None  # MLflow allows '/'
    assert "dualtrack sync" not in capfd.readouterr().err


def test_a_setting_wandb_refuses_by_its_rules_is_permanent_not_retried() -> None:
    from wandb.errors import UsageError

    from lightning_dualtrack.core.errors import PermanentError
    from lightning_dualtrack.sinks.wandb.sink import WandbSink

    err = WandbSink.classify(UsageError("Invalid project name 'a#b'"))
    assert isinstance(err, PermanentError) and "W&B refused" in str(err)


# 4 -------------------------------------------------------------------------------------------------------------
def test_a_backend_turned_off_by_the_environment_is_said_at_start_in_the_report_and_in_status(
        mlflow_server, tmp_path, monkeypatch, capfd) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with DualTrackLogger(experiment_name="promises", tracking_uri=mlflow_server.url, save_dir=tmp_path / "runs",
                         log_system_info=False) as run:
        run.log_metrics({"loss": 0.5}, step=0)
    err = capfd.readouterr().err
    assert "W&B: off (WANDB_MODE=disabled): nothing will be sent to it" in err
    assert "wandb: off (WANDB_MODE=disabled): nothing was sent to it" in err  # the final report
    assert dualtrack(["status", str(run.run_dir)]) == 0
    assert "wandb   off (WANDB_MODE=disabled)" in capfd.readouterr().out
    assert not (run.run_dir / "wandb").exists()


# 5 -------------------------------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_a_delivery_process_whose_training_process_is_gone_gives_up_within_its_bound(tmp_path) -> None:
    from lightning_dualtrack.testing import free_port

    with BlackHole(free_port()) as hole:  # the MLflow server hangs: every request waits for its timeout
        script = tmp_path / "train.py"
        script.write_text(textwrap.dedent(f"""
            import os, sys, time
            from lightning_dualtrack import DualTrackLogger
            logger = DualTrackLogger(experiment_name="orphan", tracking_uri={hole.url!r}, wandb=False,
                                     save_dir={str(tmp_path / 'runs')!r}, log_system_info=False, flush_interval=0.2)
            for step in range(20):
                logger.log_metrics({{"loss": 1.0}}, step=step)
            print(logger._run.delivery.pid, flush=True)
            time.sleep(60)
        """))
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=tmp_path,
                                env=_env(DUALTRACK_ORPHAN_TIMEOUT="5", MLFLOW_HTTP_REQUEST_TIMEOUT="30"))
        pid = int(proc.stdout.readline())
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)  # the training process dies while the server hangs
        proc.wait()
        killed = time.monotonic()
        while _alive(pid) and time.monotonic() - killed < 60:
            time.sleep(0.2)
        gone_after = time.monotonic() - killed
    assert not _alive(pid), "the orphaned delivery process is still alive"
    # the bound: 5 s without progress, plus at most 5 s for the workers to stop (one is inside a hanging request)
    assert gone_after < 5 + 5 + 3, gone_after
    run_dir = next((tmp_path / "runs").glob("*/run.json")).parent
    assert sum(journal_points(run_dir).values()) == 20  # all safe in the journal, for dualtrack sync


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not reaped by its dead parent yet) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


# 6 -------------------------------------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_two_trainings_started_at_once_on_a_fresh_embedded_store_both_deliver(tmp_path) -> None:
    code = textwrap.dedent("""
        import sys
        from lightning_dualtrack import DualTrackLogger
        with DualTrackLogger(experiment_name="fresh", wandb=False, save_dir="runs", log_system_info=False,
                             finalize_timeout=120) as run:
            for step in range(10):
                run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        print(run.last_report["mlflow"].get("closed"))
    """)
    for trial in range(3):
        cwd = tmp_path / f"trial{trial}"
        cwd.mkdir()
        procs = [subprocess.Popen([sys.executable, "-c", code], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=_env()) for _ in range(2)]
        outs = [p.communicate(timeout=240) for p in procs]
        for (out, err), p in zip(outs, procs, strict=True):
            assert p.returncode == 0 and out.strip() == "True", err[-3000:]
        db = cwd / "mlflow.db"
        with sqlite3.connect(db) as con:
            tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            runs = con.execute("SELECT status FROM runs").fetchall()
        assert not [t for t in tables if t.startswith("_alembic_tmp_")], tables
        assert sorted(r[0] for r in runs) == ["FINISHED", "FINISHED"]
        assert (cwd / "mlflow.db.lock").exists()  # the lock beside the database


def test_a_half_migrated_store_is_named_with_the_exact_repair(tmp_path) -> None:
    """What two concurrent migrators (or one stopped half way) leave: a store one revision before a batch migration
    of ``tags`` with alembic's copy ``_alembic_tmp_tags`` still there; every open then fails with "table
    _alembic_tmp_tags already exists"."""
    import sqlalchemy
    from alembic import command
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    engine = sqlalchemy.create_engine(uri)
    InitialBase.metadata.create_all(engine)
    batch_of_tags = "f5a4f2784254"  # increase_run_tag_value_limit: a batch_alter_table("tags") migration
    before = ScriptDirectory.from_config(_get_alembic_config(db_url="")).get_revision(batch_of_tags).down_revision
    with engine.begin() as conn:
        config = _get_alembic_config(str(engine.url))
        config.attributes["connection"] = conn
        command.upgrade(config, before)
    engine.dispose()
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE _alembic_tmp_tags AS SELECT * FROM tags")
    probe = ("import sys; from lightning_dualtrack.sinks.mlflow.store import open_store\n"
             "try:\n    open_store(sys.argv[1])\nexcept Exception as err:\n"
             "    print(type(err).__name__); print(err); print(getattr(err, 'action', ''))\nelse:\n    print('opened')")
    out = subprocess.run([sys.executable, "-c", probe, uri], capture_output=True, text=True, timeout=300, env=_env()).stdout
    kind, message, action = out.strip().splitlines()[:3]  # a new process: nothing of MLflow cached
    assert kind == "BlockedError", out
    assert "half-migrated" in message and "_alembic_tmp_tags" in message
    assert f'sqlite3 {db} "DROP TABLE _alembic_tmp_tags;"' in action and f"mlflow db upgrade {uri}" in action
    # the repair works as written
    with sqlite3.connect(db) as con:
        con.execute("DROP TABLE _alembic_tmp_tags")
    subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", uri], check=True, capture_output=True, timeout=300)
    out = subprocess.run([sys.executable, "-c", probe, uri], capture_output=True, text=True, timeout=300, env=_env()).stdout
    assert out.strip() == "opened", out


def test_the_report_of_a_run_whose_wandb_settings_cannot_work_does_not_promise_a_sync(tmp_path) -> None:
    """A backend that can never open this run (a permanent refusal) is not waited for until finalize_timeout."""
    from lightning_dualtrack.delivery.report import final_report

    state = {"identity": {}, "gave_up": "cannot open the run: W&B refused the run's settings: Invalid project name",
             "last_error": "W&B refused the run's settings", "offset": 0}
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "journal.jsonl").write_text(json.dumps({"k": "metrics", "t": 1, "s": 0, "v": {"x": 1.0}}) + "\n")
    text = final_report(run_dir, {"wandb": state}, finalize_timeout=30)
    assert "refused" in text
