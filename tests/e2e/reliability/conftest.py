"""Fixtures for the reliability suite: MLflow servers on SQLite and PostgreSQL, and a store switch.

``DUALTRACK_TEST_POSTGRES_URL`` (e.g. ``postgresql://dualtrack:dualtrack@127.0.0.1:5432/postgres``,
what ``.ci/postgres.sh`` prints) names a PostgreSQL server where the tests may create databases; each
session creates a fresh one and drops it at the end. Without it the ``postgres`` tests are skipped,
saying so.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lightning_dualtrack.testing import MlflowServer

POSTGRES_ENV = "DUALTRACK_TEST_POSTGRES_URL"
REPO_ROOT = Path(__file__).resolve().parents[3]


def _sqlalchemy_url(url: str, database: str) -> str:
    """The same URL (driver and credentials as given), for ``database``."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this session (SQLAlchemy URL), dropped afterwards.

    Fresh, not the URL's own database: PostgreSQL 15 no longer lets other roles create tables in the
    ``public`` schema of ``postgres``, and the tests must not mix with whatever else is stored there.
    """
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"PostgreSQL tests skipped: set {POSTGRES_ENV} (e.g. `export {POSTGRES_ENV}=$(bash .ci/postgres.sh)`)")
    import psycopg2
    from sqlalchemy.engine import make_url

    admin = make_url(url)
    name = f"dualtrack_test_{secrets.token_hex(4)}"
    dsn = dict(host=admin.host, port=admin.port or 5432, user=admin.username, password=admin.password, dbname=admin.database or "postgres")
    conn = psycopg2.connect(connect_timeout=10, **dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield _sqlalchemy_url(url, name)
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.close()


@pytest.fixture(scope="session")
def pg_mlflow_server(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with MlflowServer(workdir=tmp_path_factory.mktemp("mlflow_pg"), backend_store_uri=postgres_url) as server:
        yield server


@dataclass
class Store:
    """Which tracking store the MLflow servers of a test use."""

    name: str
    server: MlflowServer  # a running session server on this store
    backend_store_uri: str | None  # for servers a test starts itself (None: SQLite in its workdir)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest) -> Store:
    if request.param == "sqlite":
        return Store("sqlite", request.getfixturevalue("mlflow_server"), None)
    server = request.getfixturevalue("pg_mlflow_server")
    return Store("postgres", server, server.backend_store_uri)


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """The environment for a training script run as a subprocess: this repo importable, W&B quiet."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env
