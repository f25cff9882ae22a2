"""`benchmarks/inference_throughput.py`: `--quick` runs end to end, the fp32 exports match eager, the run is logged.

Not a timing test: images/s on a shared 2-core machine are noise; the script reports them as ratios to eager fp32
measured in the same run.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "inference_throughput.py"
COLUMNS = [
    "model",
    "device",
    "mode",
    "runtime",
    "precision",
    "batch",
    "images_per_s",
    "latency_p50_ms",
    "latency_p95_ms",
    "speedup_vs_eager_fp32",
    "flops_per_image",
    "achieved_tflops",
    "mfu",
    "max_abs_diff",
    "top1_agreement",
    "parity_ok",
    "warmup",
    "repeats",
]


def _script_module():
    spec = importlib.util.spec_from_file_location("inference_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_run_writes_results_with_fp32_parity_and_logs_the_run(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    (json_path,) = out.glob("inference_throughput_dualtrack-tiny_*.json")
    (csv_path,) = out.glob("inference_throughput_dualtrack-tiny_*.csv")
    (png_path,) = out.glob("inference_throughput_dualtrack-tiny_*.png")
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(json_path.read_text())
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        csv_rows = list(reader)
    rows = report["results"]
    assert report["columns"] == COLUMNS and all(set(r) == set(COLUMNS) for r in rows)
    assert len(csv_rows) == len(rows)

    import torch

    # bf16 on a CPU only where oneDNN has native bf16 (AVX512-BF16/AMX); elsewhere it is listed with the reason
    native_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    pairs = [("eager", "fp32"), ("pt2", "fp32"), ("torchscript", "fp32"), ("onnxruntime", "fp32")]
    pairs += [("eager", "bf16")] if native_bf16 else []
    measured = {(r["mode"], r["runtime"], r["precision"], r["batch"]) for r in rows}
    expected = {(mode, runtime, precision, batch) for mode in ("model", "e2e") for runtime, precision in pairs
                for batch in (1, 8)}
    assert measured == expected
    if not native_bf16:
        assert any(k["runtime"] == "eager" and k["precision"] == "bf16" and "no native bf16" in k["reason"]
                   for k in report["skipped"]), report["skipped"]
    for r in rows:
        assert r["images_per_s"] > 0 and r["latency_p95_ms"] >= r["latency_p50_ms"] > 0
        assert r["flops_per_image"] > 0 and r["mfu"] is None  # no peak FLOP/s is known for a CPU
        if r["runtime"] in ("pt2", "torchscript", "onnxruntime"):
            assert r["max_abs_diff"] <= 1e-4, r
            assert r["parity_ok"] is True
    assert report["parity"]["fp32_ok"] is True

    skipped = {(s["runtime"], s["precision"]): s["reason"] for s in report["skipped"]}
    assert "--quick" in skipped[("compile", "fp32")] and "AOTInductor" in skipped[("aoti", "fp32")]
    assert ("tensorrt", "fp32") in skipped and skipped[("tensorrt", "fp32")]
    assert report["model"]["weights"].startswith("random init")
    assert report["environment"]["versions"]["torch"]
    assert "| onnxruntime | fp32 |" in proc.stdout and "| pt2 | fp32 |" in proc.stdout and "not measured:" in proc.stdout

    # the DualTrackLogger run: the table, the plot and the environment are in MLflow (sqlite in --out)
    from mlflow.tracking import MlflowClient

    logged = report["logged_run"]
    assert logged is not None, proc.stderr[-2000:]
    client = MlflowClient(tracking_uri=logged["tracking_uri"])
    run = client.get_run(logged["mlflow_run_id"])
    assert run.data.params["env/device"] == "cpu"
    assert run.data.params["model/model_name"] == "dualtrack-tiny"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "tables/inference")}
    artifacts |= {a.path for a in client.list_artifacts(run.info.run_id, "images/inference")}
    assert {"tables/inference/throughput.json", "images/inference/throughput.png"} <= artifacts


def test_speedups_and_headline_are_against_eager_fp32_of_the_same_mode_and_batch() -> None:
    bench = _script_module()
    rows = [
        {"mode": "model", "runtime": "eager", "precision": "fp32", "batch": 8, "images_per_s": 2.0},
        {"mode": "model", "runtime": "onnxruntime", "precision": "fp32", "batch": 8, "images_per_s": 2.5},
        {"mode": "model", "runtime": "eager", "precision": "bf16", "batch": 8, "images_per_s": 3.0},
        {"mode": "e2e", "runtime": "eager", "precision": "fp32", "batch": 8, "images_per_s": 1.0},
        {"mode": "e2e", "runtime": "torchscript", "precision": "fp32", "batch": 8, "images_per_s": 1.5},
    ]
    bench.add_speedups(rows)
    assert [r["speedup_vs_eager_fp32"] for r in rows] == [1.0, 1.25, 1.5, 1.0, 1.5]
    heads = {h["mode"]: h for h in bench.headline(rows)}
    assert heads["model"]["best"] == "eager bf16" and heads["model"]["best_fp32"] == "onnxruntime fp32"
    assert heads["model"]["best_fp32_speedup"] == 1.25
    assert heads["e2e"]["best"] == "torchscript fp32"


def test_parity_reports_max_abs_difference_and_top1_agreement() -> None:
    import numpy as np

    bench = _script_module()
    ref = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    out = np.array([[1.0, 0.5], [0.75, 0.5]], dtype=np.float32)
    diff, agree = bench.parity(out, ref)
    assert diff == 0.75 and agree == 0.5
