"""Shared fixtures.

Every test runs in its own temporary working directory with the backends' environment cleaned
(``isolated_env``), so nothing is written into the repository or the home directory and no test
reaches a real W&B or MLflow account. Servers are real processes on loopback, one per session.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lightning_dualtrack.testing import MlflowServer

_REMOVED_ENV = (
    "WANDB_MODE",
    "WANDB_API_KEY",
    "WANDB_RUN_ID",
    "WANDB_PROJECT",
    "WANDB_ENTITY",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_RUN_ID",
    # a test run inside a scheduler's job must not resume runs by job (run.jobs): each test sets these itself
    "DUALTRACK_JOB_ID",
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "TORCHELASTIC_RUN_ID",
)


@pytest.fixture(scope="session")
def _wandb_dirs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wandb_dirs")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest,
                 _wandb_dirs: Path) -> Path:
    """Run the test in ``tmp_path`` with W&B quiet and no backend credentials. W&B's own directories (staging,
    cache, settings) are the worker's, so that the worker's delivery service serves every test (a test marked
    ``fresh_service`` has its own, under ``tmp_path``)."""
    for name in _REMOVED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")  # skips a git subprocess per wandb.init
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    # W&B writes run dirs, artifact staging copies and its settings file to these.
    for name, sub in (
        ("WANDB_DIR", "wandb_dir"),
        ("WANDB_DATA_DIR", "wandb_data"),
        ("WANDB_CACHE_DIR", "wandb_cache"),
        ("WANDB_CONFIG_DIR", "wandb_config"),
        ("WANDB_ARTIFACT_DIR", "wandb_artifacts"),
    ):
        path = (tmp_path if request.node.get_closest_marker("fresh_service") else _wandb_dirs) / sub
        path.mkdir(exist_ok=True)
        monkeypatch.setenv(name, str(path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def _reset_mlflow_global_tracking_uri(isolated_env: Path) -> Iterator[None]:
    """``mlflow.set_tracking_uri`` is process-global and outlives the test that called it; unset it afterwards, so
    that no test passes only because an earlier one pointed MLflow's default client at a server."""
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(None)  # also unsets MLFLOW_TRACKING_URI; isolated_env's monkeypatch then restores env


@pytest.fixture(autouse=True)
def _delivery_service_between_tests(request: pytest.FixtureRequest, isolated_env: Path) -> Iterator[None]:
    """Each test ends the runs it left open (their backend runs ended, bounded), as the end of a training process
    would. The worker's delivery service is kept for the next test -- starting one (``import wandb``,
    ``wandb-core``) costs seconds of CPU; one whose environment differs from the next logger's is retired by the
    client itself -- unless it died or was restarted, or the test is marked ``fresh_service`` (it starts with none
    and ends the one it starts)."""
    from lightning_dualtrack.delivery import client
    from lightning_dualtrack.run.session import end_all_runs

    fresh = request.node.get_closest_marker("fresh_service") is not None
    if fresh:
        end_all_runs()
    yield
    service = client.current()
    end_all_runs(keep_service=not fresh and service is not None and service.alive() and service.restarts == 0)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One ``mlflow server`` (sqlite, served artifacts) for the whole session.

    Tests may ``stop()``/``start()`` it, but must leave it running.
    """
    with MlflowServer(workdir=tmp_path_factory.mktemp("mlflow_server")) as server:
        yield server
