"""Checkpoints mirror the ``ModelCheckpoint`` callback: which removals become ``delete`` records (training side), what
the MLflow sink does with them on the embedded store (delivery side), and which W&B versions the public API deletes."""

from __future__ import annotations

from pathlib import Path
from unittest.mock import create_autospec

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_dualtrack.core import records
from lightning_dualtrack.core.io import RUN_FILE, write_json_atomic
from lightning_dualtrack.core.messages import Messages
from lightning_dualtrack.run.payloads import Payloads

# -- training side: which removals are delete records -------------------------------------------------------------


def _save(callback: ModelCheckpoint, name: str, score: float) -> str:
    path = Path(callback.dirpath) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "name": name}, path)
    callback.best_k_models[str(path)] = torch.tensor(score)
    return str(path)


def _payloads(tmp_path: Path) -> Payloads:
    return Payloads(tmp_path / "run", Messages(strict=False), "r1")


def test_a_checkpoint_the_callback_evicted_and_removed_is_one_delete_record(tmp_path: Path) -> None:
    callback = ModelCheckpoint(dirpath=tmp_path / "ckpts", monitor="score", save_top_k=1)
    payloads = _payloads(tmp_path)
    first = _save(callback, "a.ckpt", 0.5)
    assert [r["k"] for r in payloads.checkpoints(callback)] == ["model"]
    # what Lightning does on a better one: evict a.ckpt from the top k, save b.ckpt, call the logger, remove a.ckpt
    callback.best_k_models.pop(first)
    _save(callback, "b.ckpt", 0.1)
    assert [r["k"] for r in payloads.checkpoints(callback)] == ["model"]  # a.ckpt still on disk: not yet
    Path(first).unlink()
    out = payloads.checkpoints(callback)  # the next save, or finalize
    assert [(r["k"], r["path"], r["ap"]) for r in out] == [("delete", "artifacts/checkpoints/a.ckpt", "checkpoints")]
    assert out[0]["wandb_name"] == "model-r1" and out[0]["metadata"] == {"original_filename": "a.ckpt"}
    assert "save_top_k=1" in out[0]["reason"]
    assert payloads.checkpoints(callback) == []  # said once


def test_a_checkpoint_left_on_disk_or_still_kept_is_never_a_delete_record(tmp_path: Path) -> None:
    callback = ModelCheckpoint(dirpath=tmp_path / "ckpts", monitor="score", save_top_k=2)
    payloads = _payloads(tmp_path)
    first = _save(callback, "a.ckpt", 0.5)
    _save(callback, "b.ckpt", 0.4)
    payloads.checkpoints(callback)
    callback.best_k_models.pop(first)  # no longer among the top k, but the file stays (a resumed-from checkpoint)
    assert payloads.checkpoints(callback) == []
    callback.best_model_path = first  # kept as best elsewhere: even gone from disk, not deleted
    Path(first).unlink()
    assert payloads.checkpoints(callback) == []


def test_a_removed_checkpoint_is_not_deleted_while_another_callback_keeps_the_same_name(tmp_path: Path) -> None:
    payloads = _payloads(tmp_path)
    one = ModelCheckpoint(dirpath=tmp_path / "one", monitor="score", save_top_k=1)
    two = ModelCheckpoint(dirpath=tmp_path / "two", monitor="loss", save_top_k=1)
    gone = _save(one, "same.ckpt", 0.5)
    _save(two, "same.ckpt", 0.5)
    payloads.checkpoints(one)
    payloads.checkpoints(two)
    one.best_k_models.pop(gone)
    Path(gone).unlink()
    assert payloads.checkpoints(one) == []  # MLflow and W&B hold one copy of checkpoints/same.ckpt: two's


# -- delivery side: the MLflow sink on the embedded store ---------------------------------------------------------


@pytest.fixture
def mlflow_sink(tmp_path: Path):
    from lightning_dualtrack.sinks.base import RunContext
    from lightning_dualtrack.sinks.mlflow.sink import MlflowSink

    run_dir = tmp_path / "run"
    (run_dir / "artifacts" / "checkpoints").mkdir(parents=True)
    for name in ("a.ckpt", "b.ckpt"):
        (run_dir / "artifacts" / "checkpoints" / name).write_bytes(b"weights")
    write_json_atomic(run_dir / RUN_FILE, {"run_id": "r1", "experiment_name": "mirror",
                                           "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}})
    sink = MlflowSink(RunContext.load(run_dir))
    notes: list[tuple[str, str]] = []
    sink.on_note = lambda subject, message: notes.append((subject, message))
    sink.open({})
    for name in ("a.ckpt", "b.ckpt"):
        sink._deliver_model(records.checkpoint(f"artifacts/checkpoints/{name}", ["latest"], "model-r1", {}))
    sink.notes = notes
    return sink


def _listed(sink) -> set[str]:
    return {Path(a.path).name for a in sink.client.list_artifacts(sink.run_id, "checkpoints")}


def _delete(name: str) -> dict:
    return records.delete(f"artifacts/checkpoints/{name}", "checkpoints", "test", "model-r1")


def test_the_sink_removes_the_artifact_and_a_second_delivery_succeeds(mlflow_sink) -> None:
    assert _listed(mlflow_sink) == {"a.ckpt", "b.ckpt"}
    mlflow_sink._deliver_delete(_delete("a.ckpt"))
    assert _listed(mlflow_sink) == {"b.ckpt"}
    mlflow_sink._deliver_delete(_delete("a.ckpt"))  # a replay: already gone is done
    assert _listed(mlflow_sink) == {"b.ckpt"} and mlflow_sink.notes == []


def test_a_checkpoint_a_registered_version_points_to_is_kept_and_said(mlflow_sink) -> None:
    mlflow_sink._deliver_register({"name": "mirror-model", "ap": "checkpoints/a.ckpt", "aliases": []})
    mlflow_sink._deliver_delete(_delete("a.ckpt"))
    mlflow_sink._deliver_delete(_delete("b.ckpt"))
    assert _listed(mlflow_sink) == {"a.ckpt"}
    assert [s for s, _ in mlflow_sink.notes] == ["delete-registered:checkpoints/a.ckpt"]
    assert "mirror-model v1" in mlflow_sink.notes[0][1]


def test_a_store_that_cannot_delete_is_said_once_and_the_files_stay(mlflow_sink, monkeypatch) -> None:
    from mlflow.store.artifact.artifact_repo import ArtifactRepository
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    # a third-party store whose repository keeps MLflow's default (a method that does nothing)
    monkeypatch.setattr(LocalArtifactRepository, "delete_artifacts", ArtifactRepository.delete_artifacts)
    mlflow_sink._deliver_delete(_delete("a.ckpt"))
    mlflow_sink._deliver_delete(_delete("b.ckpt"))
    assert _listed(mlflow_sink) == {"a.ckpt", "b.ckpt"}
    assert [s for s, _ in mlflow_sink.notes] == ["delete-unsupported", "delete-unsupported"]  # the worker says it once
    assert "cannot delete artifacts" in mlflow_sink.notes[0][1]


# -- W&B online: the versions the public API deletes --------------------------------------------------------------


def _version(number: int, filename: str, aliases: list[str], linked: list | None = None):
    from wandb import Artifact

    version = create_autospec(Artifact, instance=True)
    version.version = f"v{number}"
    version.metadata = {"original_filename": filename}
    version.aliases = aliases
    version.linked_artifacts = linked or []
    return version


def test_wandb_deletes_the_removed_versions_but_not_one_carrying_best_or_linked_to_the_registry() -> None:
    from wandb import Api

    from lightning_dualtrack.sinks.wandb.artifacts import delete_versions

    evicted = _version(0, "a.ckpt", ["epoch-0"])
    best = _version(1, "b.ckpt", ["best", "epoch-1"])
    linked = _version(2, "c.ckpt", ["epoch-2"], linked=[object()])
    kept = _version(3, "d.ckpt", ["latest", "epoch-3"])
    api = create_autospec(Api, instance=True)
    api.artifacts.return_value = [evicted, best, linked, kept]
    notes: list[str] = []
    deleted = delete_versions(api, "e/p/model-r1", ["a.ckpt", "b.ckpt", "c.ckpt"], lambda s, m: notes.append(s))
    assert deleted == ["e/p/model-r1:v0"]
    evicted.delete.assert_called_once_with(delete_aliases=True)
    best.delete.assert_not_called(), linked.delete.assert_not_called(), kept.delete.assert_not_called()
    assert notes == ["wandb-keep:e/p/model-r1:v1", "wandb-keep:e/p/model-r1:v2"]
