"""Image preprocessing: evaluation is exactly the model's open_clip transform; training adds configurable augmentation.

The model owns the preprocessing numbers (size, mean, std, interpolation, resize mode: open_clip's
``PreprocessCfg``, attached to the image tower as ``visual.preprocess_cfg``); the data owns the augmentation
(random resized crop scale/ratio, horizontal flip). Both transforms take a PIL image and return a normalised
``float32`` tensor of shape ``(3, size, size)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
from torchvision import transforms as T

__all__ = ["build_eval_transform", "build_train_transform", "default_preprocess_cfg", "normalize_preprocess_cfg"]


def default_preprocess_cfg(
    image_size: int | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> dict[str, Any]:
    """open_clip's defaults (224 px, OpenAI CLIP mean/std, bicubic, shortest-side resize), optionally overridden."""
    cfg = asdict(PreprocessCfg())
    cfg.update(
        size=image_size or cfg["size"],
        mean=tuple(mean) if mean is not None else OPENAI_DATASET_MEAN,
        std=tuple(std) if std is not None else OPENAI_DATASET_STD,
    )
    return normalize_preprocess_cfg(cfg)


def normalize_preprocess_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Fill missing keys with open_clip's defaults and make the values JSON-friendly (lists, not tuples)."""
    merged = merge_preprocess_dict(PreprocessCfg(), dict(cfg))
    size = merged["size"]
    if isinstance(size, (tuple, list)):
        size = list(size) if len(size) == 2 and size[0] != size[1] else int(size[0])
    merged["size"] = size
    merged["mean"] = [float(v) for v in merged["mean"]]
    merged["std"] = [float(v) for v in merged["std"]]
    return merged


def _cfg(preprocess_cfg: Mapping[str, Any]) -> PreprocessCfg:
    cfg = normalize_preprocess_cfg(preprocess_cfg)
    size = cfg["size"]
    return PreprocessCfg(**{**cfg, "size": tuple(size) if isinstance(size, list) else size,
                            "mean": tuple(cfg["mean"]), "std": tuple(cfg["std"])})


def build_eval_transform(preprocess_cfg: Mapping[str, Any]) -> T.Compose:
    """open_clip's own inference transform for this config (what ``create_model_and_transforms`` returns third)."""
    return image_transform_v2(_cfg(preprocess_cfg), is_train=False)


def build_train_transform(
    preprocess_cfg: Mapping[str, Any],
    crop_scale: Sequence[float] = (0.6, 1.0),
    crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
) -> T.Compose:
    """Random resized crop (``crop_scale``/``crop_ratio``) and horizontal flip (probability ``hflip``), then the
    model's normalisation. ``crop_scale=(1, 1)`` and ``hflip=0`` disable augmentation (a square resize-and-crop).
    """
    if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise ValueError(f"Expected argument `crop_scale` to be (min, max) with 0 < min <= max <= 1, but got {crop_scale}")
    if len(crop_ratio) != 2 or not 0 < crop_ratio[0] <= crop_ratio[1]:
        raise ValueError(f"Expected argument `crop_ratio` to be (min, max) with 0 < min <= max, but got {crop_ratio}")
    if not 0 <= hflip <= 1:
        raise ValueError(f"Expected argument `hflip` to be a probability in [0, 1], but got {hflip}")
    cfg = _cfg(preprocess_cfg)
    interpolation = T.InterpolationMode.BILINEAR if cfg.interpolation == "bilinear" else T.InterpolationMode.BICUBIC
    steps: list[Any] = [
        T.Lambda(_to_rgb),
        T.RandomResizedCrop(cfg.size, scale=tuple(crop_scale), ratio=tuple(crop_ratio), interpolation=interpolation),
    ]
    if hflip > 0:
        steps.append(T.RandomHorizontalFlip(p=hflip))
    steps += [T.ToTensor(), T.Normalize(mean=cfg.mean, std=cfg.std)]
    return T.Compose(steps)


def _to_rgb(image: Any) -> Any:
    return image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image
