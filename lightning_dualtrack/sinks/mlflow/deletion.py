"""Removing a checkpoint from the MLflow run when its ``ModelCheckpoint`` removed it (a journal ``delete`` record).

* Never one a registered model version of this run points to (its source is the file or a directory holding it):
  that version would lose its files. Said once in ``delivery.log``; the checkpoint stays.
* A server that proxies artifacts (``mlflow-artifacts:/``) is asked over REST (``DELETE
  /api/2.0/mlflow-artifacts/artifacts/<path>``); any other store through its artifact repository
  (``delete_artifacts``). A store that cannot delete (its repository keeps MLflow's do-nothing default, answers "Not
  implemented", a proxy that refuses the method) is said once, and the checkpoint stays; so is a refused deletion.
* Removing what is already gone succeeds: a replay removes nothing twice and fails on nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_dualtrack.core.errors import TransientError, classify
from lightning_dualtrack.sinks.mlflow.errors import classify_mlflow


def artifact_uri(sink: Any) -> str:
    """The run's artifact root (cached on the sink)."""
    if getattr(sink, "_artifact_uri", None) is None:
        from lightning_dualtrack.sinks.mlflow.rest import RestApi

        if isinstance(sink.api, RestApi):
            sink._artifact_uri = sink.api.artifact_uri(sink.run_id)
        else:
            sink._artifact_uri = sink.client_api.call(sink.client.get_run, sink.run_id).info.artifact_uri
    return sink._artifact_uri


def source_path(source: str, run_id: str, root: str) -> str | None:
    """A model version's source as a path inside this run's artifacts ("" for all of them), None when it is elsewhere.

    Example:
        >>> source_path("runs:/abc/checkpoints/best.ckpt", "abc", "mlflow-artifacts:/1/abc/artifacts")
        'checkpoints/best.ckpt'
        >>> source_path("mlflow-artifacts:/1/abc/artifacts/checkpoints", "abc", "mlflow-artifacts:/1/abc/artifacts")
        'checkpoints'
        >>> source_path("models:/m-123", "abc", "mlflow-artifacts:/1/abc/artifacts") is None
        True
    """
    if source.startswith("runs:/"):
        run, _, path = source[len("runs:/") :].partition("/")
        return path.strip("/") if run == run_id else None
    root = root.rstrip("/")
    if source == root:
        return ""
    if source.startswith(root + "/"):
        return source[len(root) + 1 :].strip("/")
    return None


def registered_holder(sink: Any, path: str) -> str | None:
    """The registered model version of this run whose source is ``path`` or holds it (``name vN``), else None."""
    versions = sink.client_api.call(sink.client.search_model_versions, f"run_id='{sink.run_id}'")
    root = artifact_uri(sink)
    for version in versions:
        inside = source_path(str(version.source or ""), sink.run_id, root)
        if inside is not None and (inside == "" or path == inside or path.startswith(inside + "/")):
            return f"{version.name} v{version.version}"
    return None


def delete_checkpoint(sink: Any, rec: dict[str, Any]) -> None:
    """Deliver a ``delete`` record: remove ``<ap>/<file name>`` from the run's artifacts (see the module docstring)."""
    path = "/".join(p for p in (str(rec.get("ap") or "").strip("/"), Path(rec["path"]).name) if p)
    try:
        holder = registered_holder(sink, path)
    except TransientError:
        raise
    except Exception as err:  # noqa: BLE001 - a registry that cannot be asked: keep the file rather than guess
        sink.note(f"delete-unsure:{path}", f"{path} is kept in MLflow: the model registry could not be asked whether a "
                                           f"version points to it ({str(err)[:200]})")
        return
    if holder:
        sink.note(f"delete-registered:{path}", f"{path} is kept in MLflow although its callback removed it: registered "
                                               f"model version {holder} points to it")
        return
    from lightning_dualtrack.sinks.mlflow.rest import RestApi

    root = artifact_uri(sink)
    try:
        if isinstance(sink.api, RestApi) and sink.api.delete_artifact(root, path):
            return
        from mlflow.store.artifact.artifact_repo import ArtifactRepository
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repo = get_artifact_repository(root)
        if type(repo).delete_artifacts is ArtifactRepository.delete_artifacts:  # MLflow's base class: does nothing
            raise NotImplementedError("its artifact repository does not implement deletion")
        repo.delete_artifacts(path)
    except TransientError:
        raise  # the server away, throttling, credentials refused: retried (or blocked) like any other request
    except Exception as err:  # noqa: BLE001 - "Not implemented yet" (Databricks), no permission: the file stays
        if isinstance(err, NotImplementedError) or "not implemented" in str(err).lower():
            _unsupported(sink, root, str(err)[:200])
            return
        found = classify_mlflow(err) or classify(err)
        if isinstance(found, TransientError):
            raise found from err
        sink.note(f"delete-failed:{path}", f"{path} is kept in MLflow: deleting it failed ({str(err)[:200]})")


def _unsupported(sink: Any, root: str, why: str) -> None:
    scheme = root.split(":", 1)[0] if ":" in root else "file"
    sink.note("delete-unsupported", f"MLflow's artifact store ({scheme}:) cannot delete artifacts ({why}): checkpoints "
                                    "their callback removed stay in the MLflow run")
