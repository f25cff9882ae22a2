"""Serve the exported classifier: images in, class names and probabilities out, preprocessed as in training.

This file is self-contained on purpose (it imports numpy, pandas, PIL, torch and torchvision, never
``lightning_dualtrack``): :func:`save_mlflow_model` copies it into the MLflow model as its pyfunc loader, so that
``mlflow models serve`` and ``mlflow.pyfunc.load_model`` work wherever torch is installed, without this package.

What the MLflow model directory holds::

    MLmodel              flavors: python_function (this loader, images -> classes) and pytorch (the .pt2 -> logits)
    code/lightning_dualtrack_serving.py
    data/clip_har/model.pt2       torch.export ExportedProgram: forward(pixel_values float32 (B, 3, H, W)) -> logits
    data/clip_har/clip_har.json   class names (the logits' column order), preprocessing, what the output means
    input_example.json, serving_input_example.json   one image as base64 text (JSON-native: no float64 problem)

Inputs :meth:`ClipHarPredictor.predict` takes, one image each: a file path, a ``data:`` URL or base64 text of an
encoded image (PNG, JPEG...), the encoded ``bytes``, a ``uint8`` array (H, W), (H, W, 3) or (H, W, 4), or a PIL
image; as a DataFrame (column ``image``, else the first column), a list, or a single value. A ``(N, H, W, 3)``
``uint8`` array is N images. Output: a DataFrame with ``class`` (top-1 name), ``probability`` (its softmax
probability) and ``probabilities`` (every class's, in ``class_names`` order).

Example:
    >>> import mlflow  # doctest: +SKIP
    >>> model = mlflow.pyfunc.load_model("models:/clip_har_quickstart@champion")  # doctest: +SKIP
    >>> model.predict(["photo.jpg"])  # doctest: +SKIP
         class  probability  probabilities
    0  running     0.93...   [0.001, ...]
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

CONFIG_FILE = "clip_har.json"
PROGRAM_FILE = "model.pt2"
LOADER_MODULE = "lightning_dualtrack_serving"  # the name this file has inside an MLflow model's code/ folder
OUTPUT_MEANING = (
    "logits: unnormalised class scores, shape (batch, num_classes), columns in class_names order; "
    "softmax over the last axis gives probabilities"
)

__all__ = [
    "CONFIG_FILE",
    "ClipHarPredictor",
    "OUTPUT_MEANING",
    "ServingModel",
    "build_preprocess",
    "encode_image",
    "make_config",
    "save_mlflow_model",
    "to_pil",
]


def make_config(class_names: Sequence[str], preprocessing: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """What a consumer of the exported model needs besides the graph (written as ``clip_har.json``)."""
    prep = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(preprocessing).items()}
    size = prep.get("size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return {
        "class_names": list(class_names),
        "id2label": {str(i): n for i, n in enumerate(class_names)},
        "preprocessing": prep,
        "input": {"name": "pixel_values", "dtype": "float32", "shape": [-1, 3, h, w],
                  "layout": "NCHW RGB in [0, 1], then (x - mean) / std per channel"},
        "output": {"name": "logits", "meaning": OUTPUT_MEANING},
        **extra,
    }


# ------------------------------------------------------------------------------------------- preprocessing
def build_preprocess(preprocessing: Mapping[str, Any]) -> Any:
    """PIL image -> ``(3, H, W)`` float32 tensor: open_clip's eval transform for this config (the one validation
    and test use in training): resize (shortest side, or squash), centre crop, RGB, ``[0, 1]``, mean/std."""
    from torchvision import transforms as T

    size = preprocessing.get("size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    mode = preprocessing.get("resize_mode", "shortest")
    interpolation = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}.get(
        str(preprocessing.get("interpolation", "bicubic")), T.InterpolationMode.BICUBIC
    )
    if mode == "squash":
        steps: list[Any] = [T.Resize(size, interpolation=interpolation)]
    elif mode == "shortest" and size[0] == size[1]:
        steps = [T.Resize(size[0], interpolation=interpolation), T.CenterCrop(size)]
    else:  # open_clip's own classes for the rarer modes (non-square shortest, longest + pad)
        from open_clip.transform import PreprocessCfg, image_transform_v2

        known = {k: v for k, v in preprocessing.items() if k in PreprocessCfg.__dataclass_fields__}
        return image_transform_v2(PreprocessCfg(**{**known, "size": size}), is_train=False)
    steps += [
        T.Lambda(lambda im: im.convert("RGB") if im.mode != "RGB" else im),
        T.ToTensor(),
        T.Normalize(mean=list(preprocessing["mean"]), std=list(preprocessing["std"])),
    ]
    return T.Compose(steps)


def _decode_text(text: str) -> bytes | None:
    if text.startswith("data:"):
        text = text.split(",", 1)[-1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def to_pil(image: Any) -> Any:
    """One image in any accepted form -> PIL image (see the module docstring for the forms)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(image)))
    if isinstance(image, (str, os.PathLike)):
        text = os.fspath(image)
        if len(text) < 4096 and os.path.isfile(text):
            return Image.open(text)
        data = _decode_text(text)
        if data is None:
            raise ValueError(
                f"Expected an image file path, a data: URL or base64 text of an encoded image, but got the text "
                f"{text[:60]!r}{'...' if len(text) > 60 else ''} (no such file, not base64)"
            )
        return Image.open(io.BytesIO(data))
    if isinstance(image, (list, tuple)):
        image = np.asarray(image)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            if np.issubdtype(arr.dtype, np.integer) and arr.size and arr.min() >= 0 and arr.max() <= 255:
                arr = arr.astype(np.uint8)  # JSON lists of 0..255 arrive as int64
            else:
                raise ValueError(f"Expected a uint8 image array (values 0-255), but got dtype {image.dtype}")
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
            arr = np.transpose(arr, (1, 2, 0))  # (C, H, W) -> (H, W, C)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
            raise ValueError(f"Expected a uint8 image of shape (H, W), (H, W, 3) or (H, W, 4), but got {arr.shape}")
        return Image.fromarray(arr)
    raise TypeError(
        f"Expected an image as a file path, base64 text, bytes, a uint8 array or a PIL image, but got {type(image).__name__}"
    )


def _as_items(model_input: Any) -> list[Any]:
    """The batch of images in ``model_input`` (see :meth:`ClipHarPredictor.predict`)."""
    items: list[Any] = []
    for item in _top_items(model_input):
        # a cell holding a list of paths/base64/bytes (``{"image": [...]}`` becomes one such row) is many images
        if isinstance(item, (list, tuple, np.ndarray)) and np.asarray(item, dtype=object).dtype == object and (
            len(item) and all(isinstance(v, (str, bytes, bytearray, os.PathLike)) for v in item)
        ):
            items.extend(item)
        else:
            items.append(item)
    return items


def _top_items(model_input: Any) -> list[Any]:
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas comes with mlflow
        pd = None
    if pd is not None and isinstance(model_input, pd.DataFrame):
        column = "image" if "image" in model_input.columns else model_input.columns[0]
        return list(model_input[column])
    if pd is not None and isinstance(model_input, pd.Series):
        return list(model_input)
    if isinstance(model_input, Mapping):
        value = model_input.get("image", next(iter(model_input.values()), None))
        return _top_items(value)
    if isinstance(model_input, np.ndarray):
        if model_input.dtype.kind in "OUS":
            return list(model_input.ravel())
        if model_input.ndim == 4 or (model_input.ndim == 3 and model_input.shape[-1] not in (3, 4)
                                     and model_input.shape[0] not in (1, 3, 4)):
            return list(model_input)  # (N, H, W, C) or (N, H, W)
        return [model_input]
    if isinstance(model_input, (list, tuple)):
        return list(model_input)
    return [model_input]


def encode_image(image: Any, format: str = "PNG") -> str:
    """An image (any accepted form) as base64 text of an encoded file: what a JSON request carries."""
    buf = io.BytesIO()
    to_pil(image).save(buf, format=format)
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ------------------------------------------------------------------------------------------------ predictor
class ClipHarPredictor:
    """Images -> ``class``, ``probability``, ``probabilities``; ``logits(images)`` gives the raw model output.

    Args:
        model: a callable ``pixel_values -> logits`` (``torch.export.load(path).module()``, an eager module...).
        config: the ``clip_har.json`` content (class names, preprocessing).
        batch_size: images per forward.
    """

    def __init__(self, model: Any, config: Mapping[str, Any], batch_size: int = 32) -> None:
        self.model = model
        self.config = dict(config)
        self.class_names: list[str] = list(config["class_names"])
        self.preprocess = build_preprocess(config["preprocessing"])
        self.batch_size = batch_size

    @classmethod
    def from_folder(cls, folder: str | Path, **kwargs: Any) -> ClipHarPredictor:
        """Load ``model.pt2`` and ``clip_har.json`` from ``folder`` (the MLflow model's ``data/clip_har/``)."""
        import torch

        folder = Path(folder)
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        program = torch.export.load(str(folder / PROGRAM_FILE))
        return cls(program.module(), config, **kwargs)

    def pixel_values(self, model_input: Any) -> Any:
        """The ``(B, 3, H, W)`` float32 batch the model is fed (the training eval transform of each image)."""
        import torch

        items = _as_items(model_input)
        if not items:
            raise ValueError("Expected at least one image, but got an empty input")
        return torch.stack([self.preprocess(to_pil(item)) for item in items])

    def logits(self, model_input: Any) -> Any:
        import torch

        x = self.pixel_values(model_input)
        with torch.no_grad():
            return torch.cat([self.model(x[i : i + self.batch_size]).float() for i in range(0, len(x), self.batch_size)])

    def predict(self, model_input: Any, params: Mapping[str, Any] | None = None) -> Any:
        import pandas as pd

        probs = self.logits(model_input).softmax(dim=-1).cpu().numpy().astype(np.float64)
        top = probs.argmax(axis=-1)
        return pd.DataFrame(
            {
                "class": [self.class_names[i] for i in top],
                "probability": probs[np.arange(len(top)), top],
                "probabilities": [row.tolist() for row in probs],
            }
        )


def _load_pyfunc(data_path: str) -> ClipHarPredictor:
    """MLflow's pyfunc entry point (``loader_module``): ``data_path`` is the model's ``data/clip_har/`` folder."""
    return ClipHarPredictor.from_folder(data_path)


# ------------------------------------------------------------------------------------------- MLflow model
def save_mlflow_model(
    path: str | Path,
    program_path: str | Path,
    config: Mapping[str, Any],
    example_images: Sequence[Any],
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write an MLflow model at ``path``: pyfunc (images -> classes, this file as loader) + pytorch (``.pt2``).

    ``example_images`` (one or two images, any accepted form) become the input example, stored as base64 text so
    that it round-trips through the signature when read back with plain ``json``. No pickle anywhere: the graph is
    a ``torch.export`` archive and the loader is code.
    """
    import mlflow.pyfunc
    import pandas as pd
    import torch
    from mlflow.models import Model
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import AnyType, Array, ColSpec, DataType, Schema

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "clip_har"  # MLflow copies it to data/clip_har/
        data.mkdir()
        shutil.copy2(program_path, data / PROGRAM_FILE)
        (data / CONFIG_FILE).write_text(json.dumps(dict(config), indent=1), encoding="utf-8")
        loader = Path(tmp) / f"{LOADER_MODULE}.py"
        shutil.copy2(__file__, loader)
        example = pd.DataFrame({"image": [encode_image(im) for im in example_images]})
        signature = ModelSignature(
            inputs=Schema([ColSpec(AnyType())]),  # unnamed: a list, a Series or any one-column frame fits
            outputs=Schema([
                ColSpec(DataType.string, "class"),
                ColSpec(DataType.double, "probability"),
                ColSpec(Array(DataType.double), "probabilities"),
            ]),
        )
        import torchvision

        requirements = [f"torch=={torch.__version__.split('+')[0]}",
                        f"torchvision=={torchvision.__version__.split('+')[0]}", "pillow", "numpy", "pandas"]
        meta = {**dict(metadata or {}), **{k: config[k] for k in ("class_names", "preprocessing", "output")}}
        mlflow.pyfunc.save_model(
            str(path),
            loader_module=LOADER_MODULE,
            data_path=str(data),
            code_paths=[str(loader)],
            signature=signature,
            input_example=example,
            pip_requirements=requirements,
            metadata=meta,
        )
    model = Model.load(str(path / "MLmodel"))
    # the same graph for torch users: mlflow.pytorch.load_model -> torch.export's module, pixel_values -> logits
    data_subpath = model.flavors["python_function"]["data"]
    model.add_flavor("pytorch", model_data=data_subpath, pytorch_version=str(torch.__version__), code=None)
    model.save(str(path / "MLmodel"))
    return path


class ServingModel:
    """What ``ModelExport`` hands to ``DualTrackLogger.log_model``: a ``.pt2``, its config and example images.

    ``save_mlflow_model(path)`` writes the MLflow model (see :func:`save_mlflow_model`).
    """

    def __init__(self, program_path: str | Path, config: Mapping[str, Any], example_images: Sequence[Any],
                 metadata: Mapping[str, Any] | None = None) -> None:
        self.program_path = Path(program_path)
        self.config = dict(config)
        self.example_images = list(example_images)
        self.metadata = dict(metadata or {})

    def save_mlflow_model(self, path: str | Path) -> Path:
        return save_mlflow_model(path, self.program_path, self.config, self.example_images, self.metadata)
