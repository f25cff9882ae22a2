"""MLflow models: saved in the training process (:func:`save_pytorch_model`) and, in delivery, made MLflow 3
LoggedModels.

LoggedModels: an exported model as a first-class model of its run, its metrics and the registry.

``mlflow.<flavor>.log_model(name=...)`` does this inside the training process; here delivery does it from the
model directory the logger saved (``save_pytorch_model``), with ``MlflowClient`` calls only:

1. ``create_logged_model(experiment_id, name, source_run_id, tags, params)``: the model appears in the run's
   "Logged models" column and the experiment's Models tab; class names, preprocessing and the output's meaning are
   its params (searchable, shown in the model page);
2. the directory's ``MLmodel`` gets the model's id, run id and artifact location (as ``log_model`` writes them);
   ``log_model_artifacts`` uploads it to the model's own artifact location; ``finalize_logged_model(READY)``;
3. ``log_outputs(run_id, [LoggedModelOutput(model_id, step)])`` links run -> model, and the run's latest metric
   values are logged again with ``model_id`` (what ``log_model`` does for the metrics of its step), so that the
   model page lists them;
4. registration: ``create_model_version(name, source="models:/<model_id>", run_id, model_id)`` and the aliases.

Replays are idempotent: a model is found again by its ``dualtrack.model_key`` tag (run id + artifact path), a
READY one is not uploaded twice, and a registered version with that ``model_id`` is reused.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lightning_dualtrack.core.errors import PermanentError
from lightning_dualtrack.core.imports import _MLFLOW_AVAILABLE
from lightning_dualtrack.core.messages import warn

MODEL_KEY_TAG = "dualtrack.model_key"
_MAX_PARAM = 6000


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:_MAX_PARAM]


def model_params(metadata: Mapping[str, Any]) -> dict[str, str]:
    """The model's metadata as LoggedModel params: ``class_names`` (JSON list, the logits' order),
    ``num_classes``, ``preprocess.<key>`` (size, mean, std, interpolation, resize_mode...), ``output``, ``source``,
    and the export's parity checks (``metadata["parity"]``: ``export/pt2_max_abs_diff``...)."""
    params: dict[str, str] = {}
    names = metadata.get("class_names")
    if names:
        params["class_names"] = _param_value(list(names))
        params["num_classes"] = str(len(names))
    for key, value in dict(metadata.get("preprocessing") or {}).items():
        params[f"preprocess.{key}"] = _param_value(value)
    for key in ("output", "source"):
        if metadata.get(key):
            params[key] = _param_value(metadata[key])
    for key, value in dict(metadata.get("parity") or {}).items():  # export/pt2_max_abs_diff...: the export's checks
        params[str(key)] = _param_value(value)
    return params


def _find(client: Any, call: Any, experiment_id: str, key: str) -> Any:
    found = call(client.search_logged_models, experiment_ids=[experiment_id],
                 filter_string=f"tags.`{MODEL_KEY_TAG}` = '{key}'", max_results=10)
    return next(iter(found), None)


def _stamp_mlmodel(src: Path, dst: Path, model: Any, run_id: str) -> None:
    """Copy the model directory, writing the LoggedModel's identity into ``MLmodel`` (as ``log_model`` does)."""
    from mlflow.models import Model

    shutil.copytree(src, dst)
    mlmodel = Model.load(str(dst / "MLmodel"))
    mlmodel.model_id = model.model_id
    mlmodel.model_uuid = model.model_id
    mlmodel.run_id = run_id
    mlmodel.artifact_path = model.artifact_location
    mlmodel.save(str(dst / "MLmodel"))


def _link_metrics(client: Any, call: Any, run_id: str, model_id: str) -> int:
    """Log the run's latest metric values again with ``model_id``: the model page then shows them."""
    from mlflow.entities import Metric

    run = call(client.get_run, run_id)
    latest = getattr(run.data, "_metric_objs", None) or []
    metrics = [
        Metric(key=m.key, value=m.value, timestamp=m.timestamp, step=m.step, run_id=run_id, model_id=model_id)
        for m in latest
        if not m.key.startswith("system/")
    ]
    for i in range(0, len(metrics), 1000):
        call(client.log_batch, run_id, metrics=metrics[i : i + 1000])
    return len(metrics)


def deliver_logged_model(sink: Any, rec: Mapping[str, Any]) -> str:
    """Create (or find) the LoggedModel for a ``model`` journal record, upload it, link it; returns its id."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    client, call = sink.client, sink.client_api.call
    local = sink.ctx.artifact_file(rec["path"])
    if not (local / "MLmodel").is_file():
        raise PermanentError(f"model directory {local} has no MLmodel file (deleted after it was logged?)")
    name = Path(rec["ap"]).name or "model"
    key = f"{sink.ctx.run_id}/{rec['ap']}"
    metadata = dict(rec.get("metadata") or {})
    model = _find(client, call, sink.experiment_id, key)
    if model is None:
        tags = {MODEL_KEY_TAG: key, "dualtrack.run_id": sink.ctx.run_id}
        if rec.get("description"):
            tags["mlflow.note.content"] = str(rec["description"])[:8000]
        model = call(client.create_logged_model, sink.experiment_id, name=name, source_run_id=sink.run_id,
                     tags=tags, params=model_params(metadata), model_type="image-classifier")
    if str(getattr(model.status, "name", model.status)).upper() != "READY":
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / "model"
            _stamp_mlmodel(local, staged, model, sink.run_id)
            call(client.log_model_artifacts, model.model_id, str(staged))
            sink.bytes_uploaded += sum(f.stat().st_size for f in staged.rglob("*") if f.is_file())
        call(client.finalize_logged_model, model.model_id, LoggedModelStatus.READY)
        call(client.log_outputs, sink.run_id, [LoggedModelOutput(model.model_id, step=int(rec.get("s") or 0))])
        _link_metrics(client, call, sink.run_id, model.model_id)
    if rec.get("registered_model_name"):
        register_logged_model(sink, model.model_id, rec["registered_model_name"], rec.get("description"),
                              rec.get("registry_aliases") or [])
    return model.model_id


_GLOBAL_URI = threading.Lock()


@contextlib.contextmanager
def store_global_uri(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's process-global tracking URI at this run's store for one call. An embedded (SQLAlchemy or file)
    registry resolves a ``models:/<model id>`` source through ``MlflowClient()`` -- the *global* URI, not the
    client's (a TODO in MLflow's ``create_model_version``) -- and the delivery service serves runs of several
    stores at once. One such call at a time; the previous URI is put back."""
    from mlflow.tracking._tracking_service import utils

    with _GLOBAL_URI:
        previous = utils._tracking_uri
        utils._tracking_uri = tracking_uri
        try:
            yield
        finally:
            utils._tracking_uri = previous


def register_logged_model(sink: Any, model_id: str, name: str, description: str | None, aliases: list[str]) -> Any:
    """A registry version of ``models:/<model_id>`` (reused on replay), with ``aliases`` pointing at it."""
    client, call = sink.client, sink.client_api.call
    try:
        call(client.create_registered_model, name)
    except PermanentError:
        pass  # already exists
    versions = call(client.search_model_versions, f"name='{name}'")
    source = f"models:/{model_id}"
    # over REST a version's model_id is not returned (MLflow 3.17's proto lacks it): match on the source too
    version = next((v for v in versions if getattr(v, "model_id", None) == model_id or v.source == source), None)
    if version is None:
        with store_global_uri(sink.tracking_uri):
            version = call(client.create_model_version, name, source, run_id=sink.run_id,
                           description=description, model_id=model_id)
    for alias in aliases:
        call(client.set_registered_model_alias, name, alias, version.version)
    return version


def example_from_model(model: Any) -> tuple[Any, str] | None:
    """An input batch the model itself declares, and where it came from; None if it declares none.

    * ``example_input_array`` (a LightningModule's own example; a tensor or array);
    * ``preprocess_cfg["size"]`` (the HAR module and open_clip towers: images of that size, 3 channels).

    A made-up shape is never guessed: a wrong one would export a graph that rejects real inputs.
    """
    import numpy as np

    declared = getattr(model, "example_input_array", None)
    if declared is not None and (hasattr(declared, "detach") or isinstance(declared, np.ndarray)):
        return declared, "the model's example_input_array"
    cfg = getattr(model, "preprocess_cfg", None)
    size = cfg.get("size") if isinstance(cfg, dict) else None
    if isinstance(size, int) or (isinstance(size, (tuple, list)) and len(size) == 2):
        h, w = (size, size) if isinstance(size, int) else size
        return np.zeros((2, 3, int(h), int(w)), dtype=np.float32), f"images of the model's preprocess size 3x{h}x{w}"
    return None


STATE_DICT_NOTE = "state_dict.json"


def save_state_dict_model(model: Any, path: Path) -> None:
    """The weights without a traced graph: MLflow's state-dict layout (``state_dict.pth``, what
    ``mlflow.pytorch.save_state_dict`` writes; readable with ``torch.load(weights_only=True)``, no
    arbitrary code) plus a note naming the class to load them into."""
    import mlflow.pytorch

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    mlflow.pytorch.save_state_dict(state, str(path))
    cls = type(model)
    (path / STATE_DICT_NOTE).write_text(json.dumps({
        "format": "state_dict",
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "parameters": int(sum(v.numel() for v in state.values())),
        "load": "model.load_state_dict(torch.load('state_dict.pth', weights_only=True))",
        "why": "no input_example was given and the model declares none, so no pt2 graph was exported",
    }, indent=1))


def save_pytorch_model(model: Any, path: Path, signature: Any = None, input_example: Any = None) -> None:
    """Write ``model`` as an MLflow model directory (MLmodel, weights, requirements); no pickle by default.

    Runs in the caller's process (the model lives there); delivery uploads the directory.

    * an object with ``save_mlflow_model(path)`` (``lightning_dualtrack.serving.ServingModel``: images -> class
      names, plus the ``.pt2`` as the pytorch flavor) writes itself;
    * a ``torch.nn.Module`` is saved with ``serialization_format="pt2"`` (``torch.export``, dynamic batch), which
      needs an input example (a float tensor or array with a batch of at least 2 rows; one row is repeated).
      Without ``input_example`` the model's own is used (:func:`example_from_model`); a model that declares
      none is saved as its weights only (:func:`save_state_dict_model`: not loadable with
      ``mlflow.pytorch.load_model``);
    * a ``torch.jit.ScriptModule`` can only be pickled (MLflow warns that pickle is unsafe).

    ``signature`` may be an MLflow ``ModelSignature`` or "infer" (from ``input_example``).
    What was done instead of what was asked is a warning naming it.
    """
    if not _MLFLOW_AVAILABLE:
        raise ModuleNotFoundError(str(_MLFLOW_AVAILABLE))
    path.parent.mkdir(parents=True, exist_ok=True)
    if callable(getattr(model, "save_mlflow_model", None)):
        model.save_mlflow_model(path)
        return
    import mlflow.pytorch
    import numpy as np
    import torch

    example = input_example
    if example is None and not isinstance(model, torch.jit.ScriptModule) and isinstance(model, torch.nn.Module):
        found = example_from_model(model)
        if found is None:
            _weights_only(model, path, f"no `input_example` given and {type(model).__name__} declares none (example_input_array)")
            return
        example, source = found
        try:
            save_pytorch_model(model, path, signature, example)
        except Exception as err:  # noqa: BLE001 - the declared example does not export: keep the weights
            _weights_only(model, path, f"no `input_example` given, and exporting with {source} failed "
                                       f"({type(err).__name__}: {str(err)[:200]})")
            return
        warn(f"log_model: no `input_example` given: exported the pt2 graph with {source} (shape {tuple(example.shape)})")
        return
    if example is not None:
        example = example.detach().cpu().numpy() if hasattr(example, "detach") else np.asarray(example)
        if example.dtype == np.float64:
            example = example.astype(np.float32)  # the model's dtype; float64 would fail the signature
        if example.ndim >= 1 and example.shape[0] == 1:
            example = np.concatenate([example, example])  # a batch of 1 would be exported as static
    if signature == "infer" or (signature is None and example is not None):
        if example is None:
            raise ValueError("Expected an `input_example` to infer the signature from, but got None")
        from mlflow.models import infer_signature

        with torch.no_grad():
            was_training = model.training
            model.eval()
            device = next(iter(model.parameters()), torch.empty(0)).device
            out = model(torch.as_tensor(example).to(device))
            model.train(was_training)
        signature = infer_signature(example, out.detach().float().cpu().numpy())
    if isinstance(model, torch.jit.ScriptModule):
        fmt = "pickle"  # MLflow's pt2 does not take TorchScript
    else:
        fmt = "pt2"
        if example is None:
            raise ValueError("Saving a torch model as pt2 needs an `input_example` (a batch of model inputs)")
    mlflow.pytorch.save_model(model, str(path), signature=signature, input_example=example, serialization_format=fmt)


def _weights_only(model: Any, path: Path, why: str) -> None:
    import shutil

    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    save_state_dict_model(model, path)
    warn(f"log_model: {why}: saved its weights only (state_dict.pth, MLflow's state-dict layout, loadable with "
          "torch.load(weights_only=True); not an MLflow model: mlflow.pytorch.load_model cannot load it). "
          "Pass input_example= (a batch of inputs) for a pt2 model")
