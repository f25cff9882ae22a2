"""The serving pyfunc without a server: same preprocessing as training, every input form, the saved MLflow model."""

from __future__ import annotations

import base64
import io
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lightning_dualtrack.callbacks.export import export_program
from lightning_dualtrack.har import ClipHarModule
from lightning_dualtrack.serving import (
    ClipHarPredictor,
    ServingModel,
    build_preprocess,
    encode_image,
    make_config,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ClipHarModule("dualtrack-tiny", pretrained=None).eval()


def _image(h: int, w: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4, "L": None}[mode]
    shape = (h, w) if channels is None else (h, w, channels)
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8), mode=mode)


@pytest.mark.parametrize(("h", "w", "mode"), [(64, 64, "RGB"), (120, 90, "RGB"), (50, 200, "L"), (80, 80, "RGB")])
def test_preprocess_is_the_training_eval_transform(model, h, w, mode):
    image = _image(h, w, mode)
    expected = model.eval_transform(image)
    got = build_preprocess(model.preprocess_cfg)(image)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_predictor_takes_paths_base64_bytes_and_uint8_arrays_alike(model, tmp_path):
    image = _image(96, 72, seed=3)
    image.save(tmp_path / "a.png")
    png = (tmp_path / "a.png").read_bytes()
    array = np.asarray(image)
    predictor = ClipHarPredictor(model, make_config(model.class_names, model.preprocess_cfg))
    forms = {
        "path": [str(tmp_path / "a.png")],
        "base64": [base64.b64encode(png).decode()],
        "data url": ["data:image/png;base64," + base64.b64encode(png).decode()],
        "bytes": [png],
        "array": [array],
        "batch array": array[None],
        "frame": pd.DataFrame({"image": [png]}),
        "pil": image,
    }
    with torch.no_grad():
        expected = model(model.eval_transform(image).unsqueeze(0)).softmax(-1)[0].numpy()
    for form, value in forms.items():
        out = predictor.predict(value)
        assert len(out) == 1, form
        np.testing.assert_allclose(out["probabilities"][0], expected, atol=1e-6, err_msg=form)
        assert out["class"][0] == model.class_names[int(expected.argmax())], form


def test_bad_input_names_the_value():
    from lightning_dualtrack.serving import to_pil

    with pytest.raises(ValueError, match="no such file, not base64"):
        to_pil("not/a/file.jpg")
    with pytest.raises(ValueError, match="float32"):
        to_pil(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="int"):
        to_pil(3)


def test_saved_mlflow_model_has_both_flavors_and_a_json_native_example(model, tmp_path):
    import mlflow.pyfunc
    import mlflow.pytorch

    x = torch.randn(2, 3, 64, 64)
    export_program(model, x, tmp_path / "model.pt2")
    config = make_config(model.class_names, model.preprocess_cfg)
    image = np.asarray(_image(64, 64, seed=5))
    ServingModel(tmp_path / "model.pt2", config, [image]).save_mlflow_model(tmp_path / "mlmodel")
    assert not list((tmp_path / "mlmodel").rglob("*.pkl"))  # no pickle anywhere
    stored = json.loads((tmp_path / "mlmodel" / "input_example.json").read_text())  # plain json, as a person does
    pyfunc = mlflow.pyfunc.load_model(str(tmp_path / "mlmodel"))
    out = pyfunc.predict(pd.DataFrame(stored["data"], columns=stored["columns"]))
    with torch.no_grad():
        expected = model(model.eval_transform(Image.fromarray(image)).unsqueeze(0)).softmax(-1)[0].numpy()
    np.testing.assert_allclose(out["probabilities"][0], expected, atol=1e-6)
    logits_module = mlflow.pytorch.load_model(str(tmp_path / "mlmodel"))
    with torch.no_grad():
        torch.testing.assert_close(logits_module(x), model(x), atol=1e-5, rtol=0)


def test_encode_image_round_trips():
    image = _image(10, 12, seed=7)
    decoded = Image.open(io.BytesIO(base64.b64decode(encode_image(image))))
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(image))
