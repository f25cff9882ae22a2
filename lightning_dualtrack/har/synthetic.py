"""Deterministic, learnable synthetic images: one colour-and-shape pattern per class, with nuisance variation.

Class ``c`` of ``n`` draws a shape of type ``c % 5`` (disk, square, diamond, ring, plus) in hue ``c / n`` of the
colour wheel, at a random position and size, on a random dull background, with Gaussian pixel noise. Two classes
with neighbouring hues have different shapes and two classes with the same shape have distant hues, so the task
survives random crops and flips yet is not solvable from a single pixel. Sample ``i`` of class ``c`` depends only
on ``(seed, c, i)``: asking for more samples per class keeps the first ones unchanged.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image

__all__ = ["SHAPES", "synthetic_dataset", "synthetic_image"]

SHAPES: tuple[str, ...] = ("disk", "square", "diamond", "ring", "plus")


def synthetic_image(
    class_index: int, sample_index: int, num_classes: int, image_size: int = 64, seed: int = 0, noise: float = 0.08
) -> np.ndarray:
    """One ``(image_size, image_size, 3)`` uint8 image of class ``class_index``.

    Example:
        >>> synthetic_image(3, 0, num_classes=15, image_size=32).shape
        (32, 32, 3)
    """
    if not 0 <= class_index < num_classes:
        raise ValueError(f"Expected argument `class_index` in [0, {num_classes}), but got {class_index}")
    if image_size < 8:
        raise ValueError(f"Expected argument `image_size` to be at least 8, but got {image_size}")
    rng = np.random.default_rng([seed, class_index, sample_index])
    s = image_size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s

    # background: a dull colour plus a gentle gradient in a random direction
    bg = rng.uniform(0.2, 0.6, size=3) * rng.uniform(0.5, 1.0)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5))[..., None] * 0.2
    img = np.clip(bg[None, None, :] + gradient, 0, 1)

    # foreground: the class's hue (small jitter), vivid; the class's shape at a random place and size
    hue = (class_index / num_classes + rng.uniform(-0.01, 0.01)) % 1.0
    fg = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.75, 1.0), rng.uniform(0.8, 1.0)), dtype=np.float32)
    radius = rng.uniform(0.2, 0.3)
    cx, cy = rng.uniform(0.35, 0.65, size=2)
    dx, dy = xx - cx, yy - cy
    shape = SHAPES[class_index % len(SHAPES)]
    if shape == "disk":
        mask = dx**2 + dy**2 < radius**2
    elif shape == "square":
        mask = np.maximum(np.abs(dx), np.abs(dy)) < radius * 0.85
    elif shape == "diamond":
        mask = np.abs(dx) + np.abs(dy) < radius * 1.2
    elif shape == "ring":
        r2 = dx**2 + dy**2
        mask = (r2 < radius**2) & (r2 > (radius * 0.55) ** 2)
    else:  # plus
        arm = radius * 0.35
        mask = ((np.abs(dx) < arm) & (np.abs(dy) < radius)) | ((np.abs(dy) < arm) & (np.abs(dx) < radius))
    img = np.where(mask[..., None], fg[None, None, :], img)

    img = img + rng.normal(0.0, noise, size=img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def synthetic_dataset(
    num_classes: int,
    samples_per_class: int,
    image_size: int = 64,
    seed: int = 0,
    noise: float = 0.08,
    as_pil: bool = False,
) -> tuple[list[np.ndarray] | list[Image.Image], list[int]]:
    """``samples_per_class`` images for each of ``num_classes`` classes, class-major, and their labels.

    Example:
        >>> images, labels = synthetic_dataset(num_classes=3, samples_per_class=2, image_size=16)
        >>> len(images), labels
        (6, [0, 0, 1, 1, 2, 2])
    """
    if num_classes < 1:
        raise ValueError(f"Expected argument `num_classes` to be a positive integer, but got {num_classes}")
    if samples_per_class < 1:
        raise ValueError(f"Expected argument `samples_per_class` to be a positive integer, but got {samples_per_class}")
    images: list = []
    labels: list[int] = []
    for c in range(num_classes):
        for i in range(samples_per_class):
            arr = synthetic_image(c, i, num_classes, image_size=image_size, seed=seed, noise=noise)
            images.append(Image.fromarray(arr) if as_pil else arr)
            labels.append(c)
    return images, labels
