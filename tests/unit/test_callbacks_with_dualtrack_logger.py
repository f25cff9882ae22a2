"""The callbacks through the real DualTrackLogger (no backends enabled): what lands in the run directory."""

import json

import numpy as np
from lightning.pytorch import Trainer
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from lightning_dualtrack.callbacks import ClassificationReport, RunDescription, ThroughputMonitor
from lightning_dualtrack.logger import DualTrackLogger
from tests.recording_logger import ImageDataset, TinyClassifier, predictions

NAMES = ["calling", "clapping", "cycling", "listening_to_music"]


def test_report_throughput_and_description_land_in_the_run_directory(tmp_path):
    logger = DualTrackLogger(mlflow=False, wandb=False, save_dir=tmp_path / "runs")
    model = TinyClassifier(num_classes=4, class_names=NAMES, n_val=48)
    callbacks = [
        ClassificationReport(num_examples=4),
        ThroughputMonitor(log_every_n_steps=1),
        RunDescription(),
    ]
    Trainer(
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=callbacks,
        max_epochs=2,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(model)
    run = logger.run_dir
    records = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]

    _, preds, target = predictions(model, ImageDataset(48, 4, seed=2, noise=3.0))
    (last_cm,) = [r for r in records if r["k"] == "cm" and r["s"] == 8]
    stored = json.loads((run / last_cm["path"]).read_text())
    np.testing.assert_array_equal(stored["matrix"], sk_confusion_matrix(target, preds, labels=range(4)))
    assert stored["class_names"] == NAMES

    metric_keys = {key for r in records if r["k"] == "metrics" for key in r["v"]}
    assert {f"val/f1/{name}" for name in NAMES} <= metric_keys
    assert {
        "val/f1_macro",
        "perf/train/samples_per_sec",
        "perf/val/latency_p95_ms",
        "system/cpu_percent",
    } <= metric_keys

    tables = {r["key"]: r for r in records if r["k"] == "table" and r["s"] == 8}
    predictions_table = json.loads((run / tables["val/predictions"]["path"]).read_text())
    assert predictions_table["columns"] == ["image", "true", "predicted", "confidence", "correct"]
    assert len(predictions_table["data"]) == 4 and len(tables["val/predictions"]["media"]) == 4
    assert (run / "artifacts/model_summary.txt").read_text().count("Linear") >= 1
    assert (run / "artifacts/classification_report/val_epoch001_step0000008.csv").exists()
    images = {r["key"] for r in records if r["k"] == "image"}
    assert {"val/per_class", "learning_curves"} <= images
