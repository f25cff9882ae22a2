"""Availability flags for optional packages (checked lazily, never imported at module top level)."""

from lightning_utilities.core.imports import RequirementCache

_MLFLOW_AVAILABLE = RequirementCache("mlflow>=2.16")
_WANDB_AVAILABLE = RequirementCache("wandb>=0.18")
_ONNX_AVAILABLE = RequirementCache("onnx>=1.16")
_ONNXRUNTIME_AVAILABLE = RequirementCache("onnxruntime>=1.18")
_HF_HUB_AVAILABLE = RequirementCache("huggingface_hub>=0.23")
_PYNVML_AVAILABLE = RequirementCache("nvidia-ml-py>=12")
