"""``MlflowServer``: a real ``mlflow server`` on loopback, restartable for outage tests."""

from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path

import pytest

from lightning_dualtrack.testing import MlflowServer, free_port


def _script(path: Path, body: str) -> str:
    """An executable shell script standing in for the Python interpreter."""
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@pytest.mark.slow  # starts the session server (~7 s)
def test_session_server_answers_health(mlflow_server: MlflowServer) -> None:
    assert mlflow_server.running
    assert mlflow_server.is_healthy()
    assert mlflow_server.url == f"http://127.0.0.1:{mlflow_server.port}"
    assert mlflow_server.backend_store_uri.startswith("sqlite:///")


@pytest.mark.slow
def test_server_keeps_runs_and_http_artifacts_across_restart(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.url)
    experiment_id = client.create_experiment("restart-test")
    run_id = client.create_run(experiment_id).info.run_id
    client.log_metric(run_id, "loss", 0.5, step=3)
    (tmp_path / "notes.txt").write_text("hello")
    client.log_artifact(run_id, str(tmp_path / "notes.txt"))
    artifact_uri = client.get_run(run_id).info.artifact_uri
    assert artifact_uri.startswith("mlflow-artifacts:")  # proxied: uploaded over HTTP
    # this run's copy on the server's disk (other tests of the session upload files of that name too)
    assert [p.read_text() for p in mlflow_server.artifacts_dir.rglob(f"*{run_id}*/**/notes.txt")] == ["hello"]

    port = mlflow_server.port
    mlflow_server.stop()
    assert not mlflow_server.running
    assert not mlflow_server.is_healthy(timeout=0.5)
    mlflow_server.start()

    assert mlflow_server.port == port
    history = client.get_metric_history(run_id, "loss")
    assert [(m.value, m.step) for m in history] == [(0.5, 3)]
    assert [a.path for a in client.list_artifacts(run_id)] == ["notes.txt"]
    local = client.download_artifacts(run_id, "notes.txt", str(tmp_path / "download"))
    assert Path(local).read_text() == "hello"


def test_start_raises_with_log_tail_when_server_exits(tmp_path: Path) -> None:
    python = _script(tmp_path / "fails.sh", "echo 'no such backend store' >&2\nexit 3")
    server = MlflowServer(workdir=tmp_path / "server", python=python)
    with pytest.raises(RuntimeError, match=r"(?s)exited with code 3.*no such backend store"):
        server.start()
    assert not server.running
    assert "no such backend store" in (tmp_path / "server" / "server.log").read_text()


def test_start_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    python = _script(tmp_path / "hangs.sh", f"sleep 60 &\necho $! > {pid_file}\nexec sleep 60")
    server = MlflowServer(workdir=tmp_path / "server", python=python, startup_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="did not answer"):
        server.start()
    assert time.monotonic() - started < 15
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_failed_enter_removes_its_own_temporary_workdir(tmp_path: Path) -> None:
    server = MlflowServer(python=_script(tmp_path / "fails.sh", "exit 1"))
    assert server.workdir.is_dir()
    with pytest.raises(RuntimeError):
        with server:
            pass
    assert not server.workdir.exists()


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("DUALTRACK_TEST_POSTGRES_URL"), reason="set DUALTRACK_TEST_POSTGRES_URL"
)
def test_server_on_postgresql_store(tmp_path: Path) -> None:
    import psycopg2
    from mlflow import MlflowClient
    from sqlalchemy.engine import make_url

    # a fresh database: PostgreSQL 15 refuses other roles' tables in the `public` schema of `postgres`
    url = make_url(os.environ["DUALTRACK_TEST_POSTGRES_URL"])
    name = f"dualtrack_server_test_{time.time_ns()}"
    admin = psycopg2.connect(host=url.host, port=url.port or 5432, user=url.username, password=url.password,
                             dbname=url.database or "postgres", connect_timeout=10)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    try:
        store = url.set(database=name).render_as_string(hide_password=False)
        with MlflowServer(workdir=tmp_path, backend_store_uri=store) as server:
            client = MlflowClient(server.url)
            run_id = client.create_run(client.create_experiment(f"pg-{time.time_ns()}")).info.run_id
            client.log_metric(run_id, "loss", 1.0)
            assert client.get_run(run_id).data.metrics == {"loss": 1.0}
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()
