"""The CLIP human-action-recognition task: ``ClipHarModule`` (LightningModule) and ``HarDataModule``.

Importing this package registers the package's open_clip model configs (``har/model_configs/*.json``, e.g.
``dualtrack-tiny``) with open_clip, so ``open_clip.create_model("dualtrack-tiny")`` works after it.
"""

from pathlib import Path

import open_clip

_MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
if not {p.stem for p in _MODEL_CONFIG_DIR.glob("*.json")} <= set(open_clip.list_models()):
    open_clip.add_model_config(_MODEL_CONFIG_DIR)

from .classes import HAR_CLASSES, PROMPT_TEMPLATES, build_prompts  # noqa: E402
from .data import HarDataModule  # noqa: E402
from .model import ClipHarModule  # noqa: E402
from .synthetic import synthetic_dataset  # noqa: E402

__all__ = [
    "HAR_CLASSES",
    "PROMPT_TEMPLATES",
    "ClipHarModule",
    "HarDataModule",
    "build_prompts",
    "synthetic_dataset",
]
