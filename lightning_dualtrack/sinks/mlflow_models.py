"""MLflow 3 LoggedModels: an exported model as a first-class model of its run, its metrics and the registry.

``mlflow.<flavor>.log_model(name=...)`` does this inside the training process; here the shipper does it from the
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

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_dualtrack.sinks.base import PermanentError

MODEL_KEY_TAG = "dualtrack.model_key"
_MAX_PARAM = 6000


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:_MAX_PARAM]


def model_params(metadata: Mapping[str, Any]) -> dict[str, str]:
    """The model's metadata as LoggedModel params: ``class_names`` (JSON list, the logits' order),
    ``num_classes``, ``preprocess.<key>`` (size, mean, std, interpolation, resize_mode...), ``output``, ``source``."""
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
        version = call(client.create_model_version, name, source, run_id=sink.run_id,
                       description=description, model_id=model_id)
    for alias in aliases:
        call(client.set_registered_model_alias, name, alias, version.version)
    return version
