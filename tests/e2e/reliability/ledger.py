"""Ledgers: what a test logged, compared with what the journal and both backends stored.

A point is ``(key, step, value)``. Comparisons are of multisets (``Counter``), so "exactly once" means
the same points with the same multiplicities: a duplicate is as much a failure as a loss. NaN compares
equal to NaN here, and MLflow's SQL stores' stand-in for infinity (+-1.797e308) reads back as infinity.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from lightning_dualtrack import DualTrackLogger
from lightning_dualtrack.core.journal import JournalReader
from tests.helpers import TinyModel

Point = tuple[str, int, Any]
_FLOAT_MAX = 1.7976931348623157e308
# delivery.s own health figures: ``system/dualtrack/<sink>/...`` (``dualtrack/...`` before)
_HEALTH_PREFIXES = ("system/dualtrack/", "dualtrack/")


def _not_logged(key: str) -> bool:
    """A key the delivery service writes itself: its health metrics and the sampled system metrics."""
    from lightning_dualtrack.sinks.mlflow.system import NAMES, PREFIX

    sampled = key.startswith(PREFIX) and (key[len(PREFIX):] in NAMES.values() or key[len(PREFIX):].startswith("gpu_"))
    return key.startswith(_HEALTH_PREFIXES) or sampled
_W_INTERNAL = {"_step", "_runtime", "_timestamp", "_dualtrack_offset", "trainer/global_step"}


def norm(value: float) -> Any:
    """A value that compares equal to itself (NaN) and maps MLflow's stored infinity back."""
    value = float(value)
    if math.isnan(value):
        return "nan"
    if abs(value) >= _FLOAT_MAX:
        return math.copysign(math.inf, value)
    return value


class Ledger:
    """Points a test logged (and, optionally, when: for crash tests)."""

    def __init__(self) -> None:
        self.points: list[Point] = []

    def add(self, key: str, step: int, value: float) -> None:
        self.points.append((key, int(step), float(value)))

    def add_all(self, values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            self.add(key, step, value)

    def counter(self, keys: Iterable[str] | None = None) -> Counter:
        keep = set(keys) if keys is not None else None
        return Counter((k, s, norm(v)) for k, s, v in self.points if keep is None or k in keep)

    def keys(self) -> set[str]:
        return {k for k, _, _ in self.points}

    def __len__(self) -> int:
        return len(self.points)


def assert_exactly_once(expected: Counter, found: Counter, where: str) -> None:
    """Every expected point found exactly once (restricted to the expected keys)."""
    keys = {k for k, _, _ in expected}
    found = Counter({p: n for p, n in found.items() if p[0] in keys})
    missing = expected - found
    extra = found - expected
    assert not missing and not extra, (
        f"{where}: {sum(expected.values())} points logged, {sum(found.values())} found; "
        f"missing {sum(missing.values())} (e.g. {sorted(missing, key=repr)[:5]}), "
        f"duplicated or unexpected {sum(extra.values())} (e.g. {sorted(extra, key=repr)[:5]})"
    )


def assert_each_once(expected: Counter, found: Counter, where: str) -> None:
    """Every expected point found exactly as often as expected (other points may exist)."""
    missing = expected - found
    duplicated = {p: found[p] for p in expected if found[p] > expected[p]}
    assert not missing and not duplicated, (
        f"{where}: {sum(expected.values())} points expected; missing {sum(missing.values())} "
        f"(e.g. {sorted(missing, key=repr)[:5]}), duplicated {len(duplicated)} (e.g. {sorted(duplicated.items(), key=repr)[:5]})"
    )


# -- the journal ---------------------------------------------------------------------------------
def journal_records(run_dir: Path) -> list[dict[str, Any]]:
    return list(JournalReader(run_dir))


def journal_points(run_dir: Path) -> Counter:
    out: Counter = Counter()
    for rec in journal_records(run_dir):
        if rec.get("k") == "metrics":
            for key, value in rec["v"].items():
                out[(key, rec["s"], norm(value))] += 1
    return out


def journal_keymap(run_dir: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for rec in journal_records(run_dir):
        if rec.get("k") == "keymap":
            out.update(rec["v"])
    return out


def journal_status(run_dir: Path) -> str | None:
    status = None
    for rec in journal_records(run_dir):
        if rec.get("k") == "end":
            status = rec["status"]
        elif rec.get("k") == "start":
            status = None
    return status


# -- MLflow ---------------------------------------------------------------------------------------
def mlflow_points(tracking_uri: str, run_id: str, keys: Iterable[str] | None = None) -> Counter:
    """Every stored metric point of the run (delivery.s own ``dualtrack/`` health metrics excluded)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    if keys is None:
        keys = [k for k in client.get_run(run_id).data.metrics if not _not_logged(k)]
    out: Counter = Counter()
    for key in keys:
        for m in client.get_metric_history(run_id, key):
            out[(key, m.step, norm(m.value))] += 1
    return out


def mlflow_points_db(db_path: Path, run_id: str) -> Counter:
    """Like :func:`mlflow_points`, read straight from a SQLite tracking store (one query, not one per key)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute("SELECT key, step, value, is_nan FROM metrics WHERE run_uuid = ?", (run_id,)).fetchall()
    finally:
        conn.close()
    return Counter((k, s, "nan" if nan else norm(v)) for k, s, v, nan in rows if not _not_logged(k))


def to_mlflow_keys(points: Counter, keymap: Mapping[str, str]) -> Counter:
    out: Counter = Counter()
    for (key, step, value), n in points.items():
        out[(keymap.get(key, key), step, value)] += n
    return out


def mlflow_run_id(run_dir: Path) -> str | None:
    try:
        state = json.loads((Path(run_dir) / "state" / "mlflow.json").read_text())
    except FileNotFoundError:
        return None
    return (state.get("identity") or {}).get("run_id")


# -- W&B ------------------------------------------------------------------------------------------
def _flatten(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}/{key}" if prefix else key
        if isinstance(value, dict) and "_type" not in value:
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def wandb_rows(run_dir: Path, run_id: str) -> list[dict[str, Any]]:
    from lightning_dualtrack.sinks.wandb.runfile import read_runs

    return [_flatten(row) for row in read_runs(run_dir, run_id).history]


def wandb_points(run_dir: Path, run_id: str) -> Counter:
    """Every numeric history value as ``(key, trainer/global_step, value)``."""
    out: Counter = Counter()
    for row in wandb_rows(run_dir, run_id):
        step = row.get("trainer/global_step")
        for key, value in row.items():
            if key in _W_INTERNAL or key.startswith(_HEALTH_PREFIXES) or isinstance(value, (dict, str, list)) or value is None:
                continue
            out[(key, step, norm(value))] += 1
    return out


# -- Lightning pieces -------------------------------------------------------------------------------
class LedgerModel(TinyModel):
    """TinyModel that writes down every metric it logs (key, step, value) before logging it."""

    def __init__(self, *args: Any, ledger_file: str | None = None, step_sleep: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ledger = Ledger()
        self.ledger_file = ledger_file
        self.step_sleep = step_sleep

    def log_dict(self, values, *args, **kwargs):  # noqa: ANN001 - Lightning's signature
        step = self.global_step
        floats = {k: float(v) for k, v in values.items()}
        self.ledger.add_all(floats, step)
        if self.ledger_file:
            # one write per step, like the journal: on disk (in the kernel) before the logger sees it
            line = json.dumps({"s": step, "t": time.time(), "v": floats}) + "\n"
            path = self.ledger_file.format(rank=self.global_rank)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        if self.step_sleep:
            time.sleep(self.step_sleep)
        return super().log_dict(values, *args, **kwargs)


def read_ledger_file(path: Path) -> list[tuple[float, Point]]:
    """(time logged, point) for each line of a ledger file written by :class:`LedgerModel`."""
    out = []
    if not Path(path).exists():
        return out
    for line in Path(path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        for key, value in rec["v"].items():
            out.append((rec["t"], (key, rec["s"], value)))
    return out


class TimedLogger(DualTrackLogger):
    """DualTrackLogger that measures how long each ``log_metrics`` call takes on the caller's thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.call_seconds: list[float] = []
        self.finalize_seconds: list[float] = []

    def log_metrics(self, metrics, step=None):  # noqa: ANN001
        t0 = time.perf_counter()
        super().log_metrics(metrics, step)
        self.call_seconds.append(time.perf_counter() - t0)

    def finalize(self, status: str = "success") -> None:
        t0 = time.perf_counter()
        super().finalize(status)
        self.finalize_seconds.append(time.perf_counter() - t0)


class Every(Callback):
    """Run ``fn(trainer)`` after every training batch."""

    def __init__(self, fn) -> None:  # noqa: ANN001
        self.fn = fn

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.fn(trainer)


# -- the whole check ------------------------------------------------------------------------------
def assert_delivered(
    run_dir: Path,
    run_id: str,
    tracking_uri: str | None,
    ledger: Ledger | None = None,
    wandb: bool = True,
) -> None:
    """Ledger == journal; journal == MLflow; journal == W&B; each point exactly once everywhere."""
    journal = journal_points(run_dir)
    if ledger is not None:
        assert_exactly_once(ledger.counter(), journal, "journal vs ledger")
    counts = {"logged": sum(ledger.counter().values()) if ledger is not None else None, "journal": sum(journal.values())}
    if tracking_uri is not None:
        rid = mlflow_run_id(run_dir)
        assert rid, f"no MLflow run was created for {run_dir}"
        stored = mlflow_points(tracking_uri, rid)
        expected = to_mlflow_keys(journal, journal_keymap(run_dir))
        assert_exactly_once(expected, stored, "MLflow vs journal")
        assert {k for k, _, _ in stored} == {k for k, _, _ in expected}, "MLflow holds metric keys that were never logged"
        counts["mlflow"] = sum(stored.values())
    if wandb:
        found = wandb_points(run_dir, run_id)
        assert_exactly_once(journal, found, "W&B vs journal")
        counts["wandb"] = sum(found[p] for p in journal)
    report(**counts)


def report(**counts: Any) -> None:
    """With ``DUALTRACK_RELIABILITY_REPORT=path``, append this test's counts to ``path`` (for docs/reliability.md)."""
    path = os.environ.get("DUALTRACK_RELIABILITY_REPORT")
    if path:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0].split("::")[-1]
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"id": test, **counts}) + "\n")
