"""The logger's model calls: ``log_model``, ``register_model`` and ``push_to_hub``.

A mixin of :class:`~lightning_dualtrack.logger.DualTrackLogger` (it uses the logger's ``_run``, ``_config``,
``_ensure_started``, ``_append`` and ``mlflow_run_id``), so that ``logger.py`` stays the Lightning adapter.
Saving a model imports ``mlflow`` (only ``log_model`` does, on the calling thread); registering waits, bounded,
for the delivery process's answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lightning_dualtrack.core import records
from lightning_dualtrack.run import compat


class RegisteredModelVersion(NamedTuple):
    """What :meth:`ModelLogging.register_model` answers: read like MLflow's ``ModelVersion`` (``mv.name``,
    ``mv.version``) or unpacked as a pair (``name, version = ...``).

    ``version`` is MLflow's version number as a string (``"1"``), or None when it was not known in time
    (``wait=False``, or the delivery service had not registered it within 60 s).

    Example:
        >>> mv = RegisteredModelVersion("clip_har", "3")
        >>> mv.version, tuple(mv)
        ('3', ('clip_har', '3'))
    """

    name: str
    version: str | None


class ModelLogging:
    """Model-saving, registry and Hub calls of the logger."""

    @rank_zero_only
    @compat.guarded("log_model")
    def log_model(
        self,
        model: Any,
        artifact_path: str = "model",
        signature: Any = None,
        input_example: Any = None,
        aliases: Sequence[str] = (),
        registered_model_name: str | None = None,
        description: str | None = None,
        registry_aliases: Sequence[str] = (),
        metadata: Mapping[str, Any] | None = None,
        wandb_name: str | None = None,
    ) -> None:
        """Save ``model`` as an MLflow PyTorch model in the run and log it to both backends.

        MLflow: the model directory as artifacts at ``artifact_path`` (loadable with
        ``mlflow.pytorch.load_model``), registered as ``registered_model_name`` when given. W&B: a model
        artifact with ``aliases`` (plus ``latest``) in the collection ``wandb_name`` (default
        ``model-<run id>``, which holds the checkpoints). Saving imports ``mlflow`` (only this call does).
        """
        self._ensure_started()
        saved = self._run.payloads.model(model, artifact_path, signature, input_example)
        if saved is not None:
            rel, ap = saved
            self._append(records.model(rel, ap, aliases, registered_model_name, description, registry_aliases, metadata,
                                       wandb_name=wandb_name))

    @rank_zero_only
    def register_model(
        self, model_name: str, model_uri: str | None = None, description: str | None = None, aliases: Sequence[str] = (),
        artifact_path: str = "model", wait: bool = True,
    ) -> RegisteredModelVersion | None:
        """Register a logged model (``artifact_path`` of this run, or ``model_uri``: ``runs:/last/<path>`` is this
        run's) in the MLflow registry. Returns a :class:`RegisteredModelVersion` (``.name``, ``.version``; unpacks as
        ``name, version``) once the delivery process has registered it (blocking, at most 60 s; ``version`` None
        after that or with ``wait=False``); None when MLflow is off. A bad URI raises ``ValueError``."""
        compat.check_model_uri(model_uri)
        self._ensure_started()
        self._append(records.register(model_name, model_uri, artifact_path, description, aliases))
        if not self._config.enabled("mlflow"):
            return None
        version = compat.wait_for_version(self.tracking_uri, model_name, self.mlflow_run_id) if wait else None
        return RegisteredModelVersion(model_name, version)

    @rank_zero_only
    def push_to_hub(
        self,
        model: Any,
        repo_id: str,
        commit_message: str = "Upload model (lightning_dualtrack)",
        private: bool | None = None,
        metrics: Mapping[str, float] | None = None,
        api: Any = None,
    ) -> str | None:
        """Upload safetensors weights, config (class names, preprocessing) and a model card to the HF Hub.

        The folder is kept in the run (``hub/``) and logged to both backends; the Hub URL becomes the
        ``hf.repo_url`` tag. A failed upload is a warning (strict mode: an error); returns the commit URL.
        After ``end_run()`` the folder is written and uploaded, but the ended run is not reopened: no tag, a warning.
        """
        from lightning_dualtrack.hub import push_from_logger

        return push_from_logger(self, model, repo_id, commit_message=commit_message, private=private, metrics=metrics, api=api)
