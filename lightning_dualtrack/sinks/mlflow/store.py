"""The embedded store (``sqlite:///mlflow.db``, MLflow's default): created and migrated by one process at a time.

MLflow's ``SqlAlchemyStore`` creates the tables and runs every schema migration when it first opens an empty
database, with no lock. Two processes doing that at once (two trainings started together on a fresh
``mlflow.db``) can leave the file half-migrated: alembic's batch migrations copy a table into
``_alembic_tmp_<table>`` and swap it back, and a second migrator then fails with "table _alembic_tmp_tags
already exists" on every later open. Here the first open of an embedded store in a process holds an
exclusive lock on ``<database>.lock`` beside the database file; a half-migrated store (left by an older
version or another tool) is named with the exact statements that repair it, as a blocked error (a person
must act; everything stays pending in the journal).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from pathlib import Path

from lightning_dualtrack.core.errors import BlockedError

LOCK_SUFFIX = ".lock"
LOCK_TIMEOUT_S = 300.0  # a migration of a large store can take minutes
_opened: set[str] = set()
_guard = threading.Lock()


def sqlite_path(uri: str | None) -> Path | None:
    """The database file of a ``sqlite:///relative`` or ``sqlite:////absolute`` URI; None for any other store."""
    if not uri or not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///"):].split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    return Path(rest)


def half_migrated_tables(path: Path) -> list[str]:
    """The ``_alembic_tmp_*`` tables an interrupted or concurrent migration left in ``path``."""
    if not path.is_file():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            rows = db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name LIKE '\\_alembic\\_tmp\\_%' ESCAPE '\\'")
            names = sorted(r[0] for r in rows)
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error:
        return []
    return [f"{n}:{'exists' if n[len('_alembic_tmp_'):] in tables else 'missing'}" for n in names]


def repair_message(path: Path, found: list[str]) -> str:
    """The statements that make a half-migrated store migratable again, and the upgrade to run after them."""
    statements = []
    for item in found:
        tmp, _, base_state = item.partition(":")
        base = tmp[len("_alembic_tmp_"):]
        # the copy was made but the original is still there: drop the copy; the original is gone: the copy is it
        statements.append(f"DROP TABLE {tmp};" if base_state == "exists" else f"ALTER TABLE {tmp} RENAME TO {base};")
    sql = " ".join(statements)
    uri = f"sqlite:///{path}"
    return (f"back up {path}, then run:  sqlite3 {path} \"{sql}\"  and  mlflow db upgrade {uri}  "
            "(then `dualtrack sync RUN_DIR` delivers what is pending)")


def _lock(path: Path) -> int:
    lock_path = path.with_name(path.name + LOCK_SUFFIX)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise TimeoutError(f"another process has been creating the MLflow store {path} for {LOCK_TIMEOUT_S:g} s") from None
            time.sleep(0.05)


def open_store(tracking_uri: str, registry_uri: str | None = None) -> None:
    """Create (and migrate) the embedded stores of ``tracking_uri`` (and ``registry_uri``) under the lock beside
    each database file, once per process; any other store: nothing to do. Raises :class:`BlockedError` naming
    the repair when the database is half-migrated."""
    for uri in dict.fromkeys(u for u in (tracking_uri, registry_uri or tracking_uri) if u):
        path = sqlite_path(uri)
        if path is None or uri in _opened:
            continue
        with _guard:  # the threads of this process (flock is per open file: it also orders them, but not cheaply)
            if uri in _opened:
                continue
            fd = _lock(path)
            try:
                from mlflow.tracking import MlflowClient

                client = MlflowClient(tracking_uri=uri, registry_uri=uri)
                _ = client._tracking_client.store  # noqa: SLF001 - the store's first open creates and migrates it
                _ = client._get_registry_client().store  # noqa: SLF001
            except Exception as err:
                found = half_migrated_tables(path)
                if found:
                    raise BlockedError(f"the MLflow database {path} is half-migrated ({', '.join(f.split(':')[0] for f in found)} "
                                       f"left by an interrupted or concurrent migration): {type(err).__name__}",
                                       action=repair_message(path, found)) from err
                raise
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            _opened.add(uri)
