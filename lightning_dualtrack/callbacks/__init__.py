"""Callbacks that turn a classification run into metrics, figures and tables in every logger."""

from lightning_dualtrack.callbacks.checkpoints import RunIdsInCheckpoint, run_ids_from_checkpoint
from lightning_dualtrack.callbacks.classification import (
    ClassificationReport,
    DeviceConfusionMatrix,
    unpadded_eval_sampler,
)
from lightning_dualtrack.callbacks.export import ModelExport, export_onnx, export_program, export_torchscript
from lightning_dualtrack.callbacks.run_description import RunDescription
from lightning_dualtrack.callbacks.throughput import ThroughputMonitor

__all__ = [
    "ClassificationReport",
    "DeviceConfusionMatrix",
    "ModelExport",
    "RunDescription",
    "RunIdsInCheckpoint",
    "ThroughputMonitor",
    "export_onnx",
    "export_program",
    "export_torchscript",
    "run_ids_from_checkpoint",
    "unpadded_eval_sampler",
]
