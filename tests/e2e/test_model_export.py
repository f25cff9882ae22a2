"""ModelExport end to end: torch.export / ONNX parity, the MLflow 3 LoggedModel on a real server, the registry
version, what pyfunc and mlflow.pytorch load back, and the separate W&B artifacts (read from W&B's offline file)."""

from __future__ import annotations

import json
import warnings

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_dualtrack.callbacks import ModelExport, export_onnx, export_program, export_torchscript
from lightning_dualtrack.har import ClipHarModule, HarDataModule
from lightning_dualtrack.har.synthetic import synthetic_image
from lightning_dualtrack.logger import DualTrackLogger
from lightning_dualtrack.sinks.wandb.runfile import read_runs

TINY = "dualtrack-tiny"


@pytest.fixture(autouse=True)
def _one_thread_quiet():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*randomly initialised.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        yield
    torch.set_num_threads(previous)


def _tiny(**kwargs) -> ClipHarModule:
    torch.manual_seed(0)
    return ClipHarModule(model_name=TINY, pretrained=None, **kwargs).eval()


def test_export_program_is_dynamic_in_batch_and_matches_eager(tmp_path):
    model = _tiny()
    example = torch.randn(3, 3, 64, 64)
    _, diff = export_program(model, example, tmp_path / "model.pt2")
    assert diff <= 1e-4
    loaded = torch.export.load(str(tmp_path / "model.pt2")).module()  # what a user does, no package code
    for batch in (1, 5, 17):
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), atol=1e-4, rtol=0)


def test_export_program_from_a_single_image_example_stays_dynamic(tmp_path):
    model = _tiny()
    export_program(model, torch.randn(1, 3, 64, 64), tmp_path / "model.pt2")
    assert torch.export.load(str(tmp_path / "model.pt2")).module()(torch.randn(6, 3, 64, 64)).shape == (6, 15)


def test_onnx_dynamo_export_matches_eager_on_two_batch_sizes(tmp_path):
    import onnxruntime as ort

    model = _tiny()
    diff = export_onnx(model, torch.randn(2, 3, 64, 64), tmp_path / "model.onnx")
    assert diff <= 1e-4
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(7, 3, 64, 64)
    (logits,) = session.run(["logits"], {"pixel_values": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(x).numpy(), atol=1e-4)


def test_torchscript_is_opt_in_and_quiet(tmp_path):
    assert "torchscript" not in ModelExport().formats
    model = _tiny()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, diff = export_torchscript(model, torch.randn(2, 3, 64, 64), tmp_path / "model.ts")
    assert diff <= 1e-4
    assert not [w for w in caught if "jit" in str(w.message).lower()]


def test_unknown_format_is_named():
    with pytest.raises(ValueError, match="bogus"):
        ModelExport(formats=["pt2", "bogus"])


def _images(num_classes: int, per_class: int, start: int = 1000) -> tuple[list[np.ndarray], list[int]]:
    images, labels = [], []
    for c in range(num_classes):
        for i in range(per_class):
            images.append(synthetic_image(c, start + i, num_classes, image_size=64))
            labels.append(c)
    return images, labels


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory, mlflow_server):
    """A few seconds of fine-tuning on synthetic HAR data, exported and registered on the real server."""
    import os

    root = tmp_path_factory.mktemp("export_run")
    previous_cwd = os.getcwd()
    os.chdir(root)
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(root / "wandb_dir"),
           "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    (root / "wandb_dir").mkdir()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*randomly initialised.*")
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            torch.manual_seed(0)
            model = ClipHarModule(model_name=TINY, pretrained=None, lr=3e-3, backbone_lr=3e-3)
            data = HarDataModule(synthetic_samples_per_class=30, batch_size=32, val_fraction=0.2, test_fraction=0.1,
                                 seed=0)
            logger = DualTrackLogger(experiment_name="export_test", tracking_uri=mlflow_server.url,
                                     save_dir=root / "runs", wandb_mode="offline", log_model=True)
            export = ModelExport(registered_model_name="clip_har_export_test")
            trainer = L.Trainer(max_epochs=8, accelerator="cpu", logger=logger, enable_progress_bar=False,
                                enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=5,
                                callbacks=[ModelCheckpoint(monitor="val/acc", mode="max", save_top_k=1), export])
            trainer.fit(model, datamodule=data)
            logger.finalize("success")
        yield {"logger": logger, "model": model.eval(), "export": export, "server": mlflow_server, "root": root}
    finally:
        os.chdir(previous_cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.slow
def test_export_metrics_show_parity(exported_run):
    results = exported_run["export"].results
    assert results["export/pt2_max_abs_diff"] <= 1e-4
    assert results["export/onnx_max_abs_diff"] <= 1e-4
    assert "best checkpoint" in results["source"]


@pytest.mark.slow
def test_logged_model_is_linked_to_run_metrics_and_registry(exported_run):
    from mlflow import MlflowClient

    client = MlflowClient(exported_run["server"].url)
    run_id = exported_run["logger"].mlflow_run_id
    run = client.get_run(run_id)
    (model,) = client.search_logged_models([run.info.experiment_id],
                                            filter_string=f"source_run_id = '{run_id}'")
    assert model.name == "model" and str(model.status) in ("READY", "LoggedModelStatus.READY")
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
    assert json.loads(model.params["class_names"]) == exported_run["model"].class_names
    assert json.loads(model.params["preprocess.mean"]) == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert model.params["preprocess.size"] == "64" and model.params["output"].startswith("logits")
    assert "val/acc" in {m.key for m in model.metrics}  # the run's metrics at the export, on the model's page
    # the parity checks are the export's own figures: its params, not single-point charts among the run's metrics
    assert float(model.params["export/pt2_max_abs_diff"]) <= 1e-4 and float(model.params["export/onnx_max_abs_diff"]) <= 1e-4
    assert not [k for k in run.data.metrics if k.startswith("export/")]
    assert "export/parity.json" in {a.path for a in client.list_artifacts(run_id, "export")}
    version = client.get_model_version_by_alias("clip_har_export_test", "champion")
    assert version.source == f"models:/{model.model_id}"  # (the REST answer carries no model_id field)
    assert version.run_id == run_id


@pytest.mark.slow
def test_registered_model_pyfunc_classifies_images_and_pytorch_flavor_gives_logits(exported_run):
    import mlflow

    mlflow.set_tracking_uri(exported_run["server"].url)
    uri = "models:/clip_har_export_test@champion"
    info = mlflow.models.get_model_info(uri)
    assert info.metadata["class_names"] == exported_run["model"].class_names
    assert info.metadata["output"]["name"] == "logits"
    assert set(info.flavors) == {"python_function", "pytorch"}

    pyfunc = mlflow.pyfunc.load_model(uri)
    images, labels = _images(15, 2)
    import pandas as pd

    out = pyfunc.predict(pd.DataFrame({"image": images}))  # uint8 arrays, one per row
    names = exported_run["model"].class_names
    assert np.allclose([sum(p) for p in out["probabilities"]], 1.0, atol=1e-5)

    torch_model = mlflow.pytorch.load_model(uri)  # the .pt2 program: pixel_values -> logits
    x = torch.stack([exported_run["model"].eval_transform(__import__("PIL.Image").Image.fromarray(im)) for im in images])
    with torch.no_grad():
        eager = exported_run["model"].cpu().eval()(x)
        logits = torch_model(x)
    # the pyfunc's own preprocessing gives what the training eval transform + eager module give
    np.testing.assert_allclose(logits.softmax(-1).numpy(), np.stack(out["probabilities"]), atol=1e-5)
    assert list(out["class"]) == [names[i] for i in eager.argmax(-1).tolist()]
    accuracy = np.mean([c == names[y] for c, y in zip(out["class"], labels, strict=True)])
    print(f"pyfunc accuracy on 30 unseen synthetic images: {accuracy:.2f}")
    assert accuracy >= 0.6, list(out["class"])  # it learned (chance: 1/15)


@pytest.mark.slow
def test_input_example_round_trips_through_the_stored_signature(exported_run, tmp_path):
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(exported_run["server"].url)
    local = mlflow.artifacts.download_artifacts("models:/clip_har_export_test@champion", dst_path=str(tmp_path))
    stored = json.loads((tmp_path / "input_example.json").read_text()) if (tmp_path / "input_example.json").exists() \
        else json.loads(next(p for p in __import__("pathlib").Path(local).rglob("input_example.json")).read_text())
    frame = pd.DataFrame(stored["data"], columns=stored["columns"])  # plain json, as a person would read it
    out = mlflow.pyfunc.load_model(local).predict(frame)
    assert list(out.columns) == ["class", "probability", "probabilities"] and len(out) == 1


def _log_model_names_its_wandb_artifact() -> bool:
    import inspect

    return "wandb_name" in inspect.signature(DualTrackLogger.log_model).parameters


@pytest.mark.slow
@pytest.mark.xfail(not _log_model_names_its_wandb_artifact(), strict=True,
                   reason="DualTrackLogger.log_model has no `wandb_name` yet (logger.py, owned by the facade work):"
                          " the export lands in the checkpoints' `model-<run>` collection")
def test_wandb_keeps_checkpoints_and_the_export_apart_with_one_best(exported_run):
    logger = exported_run["logger"]
    run = read_runs(logger.run_dir, logger.run_id)
    models = [a for a in run.artifacts if a["type"] == "model"]
    by_name: dict[str, list] = {}
    for art in models:
        by_name.setdefault(art["name"], []).append(art)
    exports = [n for n in by_name if n.endswith("-export")]
    checkpoints = [n for n in by_name if n.startswith("model-")]
    assert len(exports) == 1 and len(checkpoints) == 1, sorted(by_name)
    (export_art,) = by_name[exports[0]]
    assert "MLmodel" in export_art["paths"] and "data/clip_har/model.pt2" in export_art["paths"]
    assert all(p.endswith(".ckpt") for a in by_name[checkpoints[0]] for p in a["paths"])
    assert sum("best" in a["aliases"] for a in models) == 1


@pytest.mark.slow
def test_mlflow_models_serve_answers_an_image_over_http(exported_run, tmp_path):
    """``mlflow models serve -m models:/<name>@champion --env-manager local``: a real HTTP request with images."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    import requests

    from lightning_dualtrack.serving import encode_image
    from lightning_dualtrack.testing import free_port

    port = free_port()
    # the scoring server is `uvicorn` from the same environment as this Python
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = {**os.environ, "MLFLOW_TRACKING_URI": exported_run["server"].url, "PATH": path}
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    mlflow_cli = [sys.executable, "-m", "mlflow"]
    proc = subprocess.Popen(
        [*mlflow_cli, "models", "serve", "-m", "models:/clip_har_export_test@champion", "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1).status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        images, labels = _images(15, 1, start=2000)  # one unseen synthetic image per class
        body = {"dataframe_split": {"columns": ["image"], "data": [[encode_image(im)] for im in images]}}
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        names = exported_run["model"].class_names
        served = [p["class"] for p in predictions]
        # the same answer as the trained module on the training eval transform, and mostly the true class
        from PIL import Image

        x = torch.stack([exported_run["model"].eval_transform(Image.fromarray(im)) for im in images])
        with torch.no_grad():
            eager = exported_run["model"].eval()(x).softmax(-1)
        assert served == [names[i] for i in eager.argmax(-1).tolist()]
        np.testing.assert_allclose([p["probability"] for p in predictions], eager.max(-1).values.numpy(), atol=1e-5)
        right = sum(s == names[y] for s, y in zip(served, labels, strict=True))
        print(f"served classes right for {right}/15 unseen synthetic images")
        assert right >= 9, served
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _doc_python_blocks() -> list[str]:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text()
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


@pytest.mark.slow
def test_the_use_the_trained_model_snippets_run(exported_run, monkeypatch, capsys):
    """docs/models.md's snippets, as written (but for the server's address and the model's name)."""
    from PIL import Image

    blocks = _doc_python_blocks()
    assert len(blocks) == 3  # pyfunc, .pt2, ONNX Runtime
    logger = exported_run["logger"]
    monkeypatch.chdir(logger.run_dir)  # "from the run directory"
    image = synthetic_image(4, 3000, 15, image_size=64)
    Image.fromarray(image).save("photo.jpg")
    names = exported_run["model"].class_names
    namespace: dict = {}
    for block in blocks:
        code = block.replace("sqlite:///mlflow.db", exported_run["server"].url).replace("http://127.0.0.1:5000", exported_run["server"].url)
        code = code.replace("clip_har_quickstart", "clip_har_export_test")
        exec(compile(code, "docs/models.md", "exec"), namespace)
    printed = capsys.readouterr().out.strip().splitlines()
    x = exported_run["model"].eval_transform(Image.open("photo.jpg")).unsqueeze(0)
    with torch.no_grad():
        expected = names[int(exported_run["model"].eval()(x).argmax())]
    assert printed[-2:] == [expected, expected]  # the .pt2 and ONNX answers
    assert expected in printed[0] or expected in "\n".join(printed[:-2])  # the pyfunc's DataFrame


@pytest.mark.slow
def test_logged_model_delivery_replays_without_duplicates(exported_run):
    """A resent `model` record (a replay after a lost answer) finds its LoggedModel and registry version again."""
    import types

    from mlflow import MlflowClient

    from lightning_dualtrack.sinks.mlflow.models import deliver_logged_model
    from lightning_dualtrack.sinks.mlflow.rest import ClientApi

    logger = exported_run["logger"]
    records = [json.loads(line) for line in (logger.run_dir / "journal.jsonl").read_text().splitlines()]
    (rec,) = [r for r in records if r.get("k") == "model" and not r.get("checkpoint")]
    client = MlflowClient(exported_run["server"].url)
    run = client.get_run(logger.mlflow_run_id)
    sink = types.SimpleNamespace(
        client=client, client_api=ClientApi(client), experiment_id=run.info.experiment_id, run_id=run.info.run_id,
        ctx=types.SimpleNamespace(run_id=logger.run_id, artifact_file=lambda rel: logger.run_dir / rel),
        bytes_uploaded=0,
    )
    before = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    model_id = deliver_logged_model(sink, rec)
    after = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    assert [m.model_id for m in after] == [m.model_id for m in before] == [model_id]
    assert sink.bytes_uploaded == 0  # READY already: nothing uploaded again
    assert len(client.search_model_versions("name='clip_har_export_test'")) == 1


def test_save_pytorch_model_saves_a_plain_module_as_pt2_without_pickle(tmp_path, caplog):
    import logging

    import mlflow.pytorch

    from lightning_dualtrack.sinks.mlflow.models import save_pytorch_model

    model = _tiny()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)  # one row, float64: what a user may well pass
    with caplog.at_level(logging.WARNING):
        save_pytorch_model(model, tmp_path / "m", signature="infer", input_example=x)
    assert not [r for r in caplog.records if "pickle" in r.getMessage().lower()]
    assert (tmp_path / "m" / "data" / "model.pt2").is_file() and not list((tmp_path / "m").rglob("*.pth"))
    loaded = mlflow.pytorch.load_model(str(tmp_path / "m"))
    batch = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), model(batch), atol=1e-4, rtol=0)
