"""Payload files: figures, images and tables written into the run directory (no backend imports)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def image_to_png(image: Any, path: Path) -> None:
    """Save a matplotlib Figure, a PIL image, an image file (path) or an HxW / HxWxC array (uint8, or float in [0, 1]) as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(image, "savefig"):  # matplotlib Figure
        image.savefig(path, format="png", dpi=getattr(image, "dpi", 100), bbox_inches="tight")
        return
    if hasattr(image, "save") and hasattr(image, "mode"):  # PIL.Image
        image.save(path, format="PNG")
        return
    if isinstance(image, (str, os.PathLike)):  # an image file, as wandb.Image takes (WandbLogger.log_image(images=["a.jpg"]))
        from PIL import Image

        try:  # a path that is not a readable image is bad input (ValueError), not a disk failure (OSError)
            with Image.open(image) as opened:
                opened.load()
                picture = opened.copy()
        except OSError as err:
            raise ValueError(f"Expected an image file, but could not read {str(image)!r} ({type(err).__name__})") from None
        picture.save(path, format="PNG")
        return
    import numpy as np
    from PIL import Image

    if hasattr(image, "detach"):  # torch tensor, CHW or HWC
        image = image.detach().cpu().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
            image = np.transpose(image, (1, 2, 0))
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"Expected a matplotlib Figure, a PIL image or an image array, but got {type(image).__name__}"
        )
    array = image
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise TypeError(f"Expected an HxW or HxWxC (C in 1, 3, 4) image array, but got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(np.nan_to_num(array.astype("float32")) * 255.0, 0, 255).astype(np.uint8)
    Image.fromarray(array).save(path, format="PNG")


def close_figure(figure: Any) -> None:
    """Close a matplotlib figure so pyplot does not keep it alive (a no-op for other objects)."""
    if hasattr(figure, "savefig"):
        try:
            import matplotlib.pyplot as plt

            plt.close(figure)
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
