"""`benchmarks/logger_overhead.py --quick` runs end to end and DualTrackLogger loses nothing.

Not a timing test: timings on a shared machine are noise; the script itself reports them as ratios.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "logger_overhead.py"
COLUMNS = {
    "config",
    "runs",
    "steps",
    "metrics",
    "median_ms",
    "p95_ms",
    "mean_ms",
    "median_ratio",
    "p95_ratio",
    "mean_ratio",
    "median_ratio_paired",
    "p95_ratio_paired",
    "mean_ratio_paired",
    "fit_s",
    "finalize_s",
    "close_s",
    "mlflow_expected",
    "mlflow_found",
    "mlflow_lost",
    "wandb_expected",
    "wandb_found",
    "wandb_lost",
    "journal_expected",
    "journal_found",
    "journal_lost",
    "skipped",
}


@pytest.mark.slow
def test_quick_run_writes_results_and_dualtrack_loses_nothing(tmp_path: Path) -> None:
    pytest.importorskip("lightning_dualtrack.logger")
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    (json_path,) = out.glob("logger_overhead_quick_*.json")
    (csv_path,) = out.glob("logger_overhead_quick_*.csv")
    report = json.loads(json_path.read_text())
    assert report["environment"]["cpu_count"] >= 1
    assert report["environment"]["versions"]["lightning"]
    rows = {row["config"]: row for row in report["results"]}
    assert set(rows) == {"noop", "dualtrack"}
    for row in rows.values():
        assert set(row) == COLUMNS
    assert csv_path.read_text().splitlines()[0].split(",") == list(report["results"][0])

    dualtrack = rows["dualtrack"]
    assert dualtrack["skipped"] is None, dualtrack["skipped"]
    steps = report["steps"]
    assert dualtrack["mlflow_expected"] == dualtrack["mlflow_found"] == steps
    assert dualtrack["wandb_expected"] == dualtrack["wandb_found"] == steps
    assert dualtrack["mlflow_lost"] == dualtrack["wandb_lost"] == 0
    assert dualtrack["median_ratio"] > 0 and rows["noop"]["median_ratio"] == 1.0
    assert "| dualtrack |" in proc.stdout
