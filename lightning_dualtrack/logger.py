"""``DualTrackLogger``: a Lightning logger that records every event once and ships it to MLflow and W&B.

A call on the training thread validates cheaply, writes any payload file into the run directory and
appends one record to the run's journal (one ``os.write``). A child process (the shipper) delivers the
journal to MLflow and W&B in the background, retrying through outages; ``dualtrack sync RUN_DIR``
delivers whatever was not delivered when the process ended.

Example:
    >>> from lightning_dualtrack import DualTrackLogger
    >>> with DualTrackLogger(experiment_name="demo", wandb_mode="offline") as run:  # doctest: +SKIP
    ...     run.log_params({"lr": 0.1})
    ...     run.log_metrics({"loss": 0.5}, step=1)
"""

from __future__ import annotations

import atexit
import json
import os
import re
import secrets
import shutil
import string
import subprocess
import sys
import tempfile
import time
import warnings
from argparse import Namespace
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lightning_dualtrack import metadata as _metadata
from lightning_dualtrack.journal import JournalError, JournalWriter, now_ms, repair_torn_tail
from lightning_dualtrack.media import close_figure, image_to_png
from lightning_dualtrack.normalize import (
    MLFLOW_MAX_PARAM_VALUE,
    DroppedValue,
    KeyMap,
    flatten_params,
    param_text,
    to_float,
)
from lightning_dualtrack.redact import redact_mapping, redact_string, split_url_credentials
from lightning_dualtrack.sinks.base import RUN_FILE, read_json, write_json_atomic

WandbMode = Literal["online", "offline", "disabled"]
_WANDB_MODES = ("online", "offline", "disabled")
_STATUSES = ("success", "failed", "aborted")
_ID_ALPHABET = string.ascii_lowercase + string.digits
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


class DualTrackWarning(UserWarning):
    """A problem the logger handled (and said what it did) without stopping training."""


def new_run_id() -> str:
    """An 8-character id, valid as a W&B run id and a directory name."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def _wandb_credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text() or "wandb" in netrc.read_text()
    except OSError:
        return False


def _safe_relpath(path: str, what: str = "artifact_path") -> str:
    """A relative POSIX path with no ``..``, absolute root or backslashes (warns if it had to change)."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    cleaned = "/".join(parts)
    if cleaned != path:
        warnings.warn(f"{what} {path!r} is not a plain relative path inside the run; stored as {cleaned!r}", DualTrackWarning, stacklevel=3)
    return cleaned


class DualTrackLogger(Logger):
    """Log to MLflow and Weights & Biases at once, without slowing training or losing data.

    Args:
        experiment_name: MLflow experiment (created if missing); the default W&B project.
        run_name: display name of the run in both backends.
        tags: ``{key: value}``; MLflow tags and W&B ``key:value`` tags.
        mlflow: deliver to MLflow.
        tracking_uri: MLflow tracking URI; else ``MLFLOW_TRACKING_URI`` (read when the logger is built),
            else ``sqlite:///mlflow.db`` in the working directory. Credentials in the URI
            (``user:pass@``) are used but never written anywhere.
        wandb: deliver to W&B.
        wandb_project: else ``WANDB_PROJECT``, else ``experiment_name``.
        wandb_entity: W&B entity (team or user).
        wandb_group: W&B run group.
        wandb_mode: ``online | offline | disabled``; else ``WANDB_MODE``; else online when W&B credentials
            exist, offline otherwise.
        save_dir: where run directories are made (``save_dir/<run id>/``).
        log_model: ``False``; ``True`` (best and last checkpoint at the end); ``"all"`` (every checkpoint).
        run_id: continue this run (its directory under ``save_dir``) or start one with this id.
        resume: continue the most recent run in ``save_dir`` (ignored when ``run_id`` is given).
        flush_interval: seconds between deliveries (records reach the journal at once regardless).
        strict: raise on backend failures instead of warning.
        finalize_timeout: at most this many seconds in ``finalize`` waiting for delivery; the rest
            stays in the journal for ``dualtrack sync``.
    """

    def __init__(
        self,
        experiment_name: str = "lightning_dualtrack",
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        *,
        mlflow: bool = True,
        tracking_uri: str | None = None,
        wandb: bool = True,
        wandb_project: str | None = None,
        wandb_entity: str | None = None,
        wandb_group: str | None = None,
        wandb_mode: WandbMode | None = None,
        save_dir: str | os.PathLike = "dualtrack_runs",
        log_model: bool | Literal["all"] = False,
        run_id: str | None = None,
        resume: bool = False,
        flush_interval: float = 1.0,
        strict: bool = False,
        finalize_timeout: float = 30.0,
        log_system_info: bool = True,
        start_shipper: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(experiment_name, str) or not experiment_name.strip():
            raise ValueError(f"Expected argument `experiment_name` to be a non-empty string, but got {experiment_name!r}")
        if log_model not in (False, True, "all"):
            raise ValueError(f"Expected argument `log_model` to be False, True or 'all', but got {log_model!r}")
        if not (isinstance(flush_interval, (int, float)) and flush_interval > 0):
            raise ValueError(f"Expected argument `flush_interval` to be a positive number, but got {flush_interval!r}")
        if tags is not None and not isinstance(tags, Mapping):
            raise TypeError(f"Expected argument `tags` to be a mapping, but got {type(tags).__name__}")
        self._experiment_name = experiment_name
        self._run_name = run_name
        self._tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self._mlflow_enabled = bool(mlflow)
        self._wandb_enabled = bool(wandb)
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
        self._tracking_uri, self._mlflow_user, self._mlflow_password = split_url_credentials(uri)
        self._wandb_project = wandb_project or os.environ.get("WANDB_PROJECT") or experiment_name
        self._wandb_entity = wandb_entity or os.environ.get("WANDB_ENTITY")
        self._wandb_group = wandb_group
        self._wandb_mode, self._wandb_mode_reason = self._resolve_wandb_mode(wandb_mode)
        if self._wandb_mode == "disabled":
            self._wandb_enabled = False
        self._root = Path(save_dir)
        self._log_model = log_model
        self._run_id = run_id or (self._latest_run_id() if resume else None) or new_run_id()
        self._resuming = (self._root / self._run_id / RUN_FILE).exists()
        self._flush_interval = float(flush_interval)
        self._strict = bool(strict)
        self._finalize_timeout = float(finalize_timeout)
        self._log_system_info = log_system_info
        self._start_shipper = start_shipper
        self._reset_runtime()

    # -- construction helpers --------------------------------------------------------------------
    def _reset_runtime(self) -> None:
        self._journal: JournalWriter | None = None
        self._shipper: subprocess.Popen | None = None
        self._run_dir: Path | None = None
        self._finalized = False
        self._keymap = KeyMap()
        self._params: dict[str, Any] = {}
        self._param_versions: dict[str, int] = {}
        self._warned: set[str] = set()
        self._auto_step = 0
        self._logged_ckpt_time: dict[str, float] = {}
        self._dropped_records = 0
        self._last_health_check = 0.0
        self._atexit_registered = False

    @staticmethod
    def _resolve_wandb_mode(mode: str | None) -> tuple[str, str]:
        if mode is None:
            env = os.environ.get("WANDB_MODE")
            if env:
                mode, reason = env, "WANDB_MODE"
            elif _wandb_credentials_present():
                mode, reason = "online", "W&B credentials found"
            else:
                mode, reason = "offline", "no W&B credentials found (WANDB_API_KEY or ~/.netrc)"
        else:
            reason = "wandb_mode argument"
        mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
        if mode not in _WANDB_MODES:
            raise ValueError(f"Expected `wandb_mode` to be one of {_WANDB_MODES}, but got {mode!r}")
        return mode, reason

    def _latest_run_id(self) -> str | None:
        runs = sorted(self._root.glob(f"*/{RUN_FILE}"), key=lambda p: p.stat().st_mtime)
        return runs[-1].parent.name if runs else None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_journal"] = None  # live handles do not cross processes (ddp_spawn)
        state["_shipper"] = None
        return state

    # -- Lightning's Logger interface -------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._experiment_name

    @property
    def version(self) -> str:
        return self._run_id

    @property
    def root_dir(self) -> str:
        return str(self._root)

    @property
    def save_dir(self) -> str:
        """The run directory: Lightning saves LightningCLI's config and checkpoints under it."""
        return str(self._run_dir or self._root / self._run_id)

    @property
    def log_dir(self) -> str:
        return self.save_dir

    @property
    def run_dir(self) -> Path:
        return Path(self.save_dir)

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def tracking_uri(self) -> str:
        return self._tracking_uri

    @property
    def mlflow_run_id(self) -> str | None:
        """The MLflow run id once the shipper has created (or found) the run; None before."""
        return (read_json(self.run_dir / "state" / "mlflow.json", {}) or {}).get("identity", {}).get("run_id")

    @property
    def wandb_run_id(self) -> str | None:
        return self._run_id if self._wandb_enabled else None

    @property
    @rank_zero_experiment
    def experiment(self) -> DualTrackLogger:
        """The run itself (started on first use); on ranks other than zero, a no-op stand-in."""
        self._ensure_started()
        return self

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        self.log_params(params)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Record metrics at ``step`` (Lightning's global step; an own counter when None)."""
        journal = self._journal or self._ensure_started()
        if step is None:
            step = self._auto_step
            self._auto_step += 1
        elif not isinstance(step, int):
            try:
                step = int(step)
            except (TypeError, ValueError):
                self._warn_once(f"step:{step!r}", f"step {step!r} is not an integer; used {self._auto_step} instead")
                step = self._auto_step
        values: dict[str, float] = {}
        keymap = self._keymap
        for key, value in metrics.items():
            if type(key) is not str:
                self._warn_once(f"key-type:{key!r}", f"metric key {key!r} is a {type(key).__name__}; stored as {str(key)!r}")
                key = str(key)
            if type(value) is not float:
                try:
                    value = to_float(value)
                except DroppedValue as why:
                    self._warn_once(f"value:{key}", f"metric {key!r} dropped: {why}")
                    continue
            if key not in keymap.forward:
                self._register_key(key)
            values[key] = value
        if values:
            self._append(journal, {"k": "metrics", "t": now_ms(), "s": step, "v": values})
        if self._shipper is not None:
            self._shipper.check()
        if self._strict:
            self._check_health()

    @rank_zero_only
    def save(self) -> None:
        """Nothing to do: every record is already in the journal when its log call returns."""

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """End the run in both backends (bounded by ``finalize_timeout``). Idempotent."""
        if self._journal is None or self._finalized:
            return
        if self._log_model is True and getattr(self, "_checkpoint_callback", None) is not None:
            self._log_checkpoints(self._checkpoint_callback)
        self._finalized = True
        if status not in _STATUSES:
            status = "failed" if status not in ("finished", "FINISHED") else "success"
        if status == "failed" and isinstance(sys.exc_info()[1], KeyboardInterrupt):
            status = "aborted"
        self._append(self._journal, {"k": "end", "t": now_ms(), "status": status})
        self._journal.close()
        self._journal = None  # a later log call (e.g. trainer.test after fit) continues the run
        report = self._wait_for_shipper()
        self._print_report(report)
        if self._strict and status == "success":  # on failure Lightning is handling the original error: never mask it
            failed = {n: s for n, s in report.items() if not s.get("closed")}
            if failed:
                raise RuntimeError(self._pending_message(failed))

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """With ``log_model="all"`` upload each new checkpoint; with True, the best and last at the end."""
        if not self._log_model:
            return
        if self._log_model == "all" or getattr(checkpoint_callback, "save_top_k", None) == -1:
            self._log_checkpoints(checkpoint_callback)
        else:
            self._checkpoint_callback = checkpoint_callback

    # -- tracker API (direct use) -------------------------------------------------------------------
    def start_run(self, run_name: str | None = None) -> DualTrackLogger:
        """Start (or resume) the run; returns the logger. Called for you on first use."""
        if run_name is not None and self._journal is None:
            self._run_name = run_name
        self._ensure_started()
        return self

    def end_run(self, status: str = "success") -> None:
        self.finalize(status)

    def __enter__(self) -> DualTrackLogger:
        return self.start_run()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            status = "success"
        elif issubclass(exc_type, KeyboardInterrupt):
            status = "aborted"
        else:
            status = "failed"
        self.end_run(status)

    @rank_zero_only
    def log_params(self, params: Mapping[str, Any] | Namespace | Any) -> None:
        """Record params, flattened with ``/``; secrets redacted; see the README for the policies."""
        journal = self._journal or self._ensure_started()
        try:
            flat = flatten_params(params)
        except TypeError as err:
            self._fail(f"log_params: {err}; nothing logged")
            return
        flat = redact_mapping(flat)
        new: dict[str, Any] = {}
        mlflow_text: dict[str, str] = {}
        latest: dict[str, Any] = {}  # changed params: W&B's config keeps the latest value under the key
        for key, value in flat.items():
            if key in self._params:
                if self._params[key] == value:
                    continue
                old = self._params[key]
                n = self._param_versions.get(key, 1) + 1
                self._param_versions[key] = n
                renamed = f"{key}.v{n}"
                self._warn_once(
                    f"param-change:{key}:{n}",
                    f"param {key!r} changed from {str(old)[:80]!r} to {str(value)[:80]!r}; MLflow params cannot "
                    f"change, so the new value is stored as {renamed!r} (W&B config keeps the latest under {key!r})",
                )
                self._params[key] = value
                new_key = renamed
                latest[key] = value
            else:
                self._params[key] = value
                new_key = key
            self._register_key(new_key)
            text = param_text(value)
            if len(text) > MLFLOW_MAX_PARAM_VALUE:
                rel = f"artifacts/params/{_safe_relpath(self._keymap.get(new_key) or new_key)}.txt"
                self._write_payload(rel, text.encode("utf-8"))
                self._append(journal, {"k": "file", "t": now_ms(), "path": rel})
                note = f" ...[{len(text)} chars; full value in artifact {rel[len('artifacts/'):]}]"
                mlflow_text[new_key] = text[: MLFLOW_MAX_PARAM_VALUE - len(note)] + note
            new[new_key] = value
        if new:
            record: dict[str, Any] = {"k": "params", "t": now_ms(), "v": new}
            if mlflow_text:
                record["mlflow"] = mlflow_text
            if latest:
                record["wandb"] = latest
            self._append(journal, record)

    @rank_zero_only
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        journal = self._journal or self._ensure_started()
        clean = redact_mapping({str(k): str(v) for k, v in tags.items()})
        for key in clean:
            self._register_key(key)
        if clean:
            self._append(journal, {"k": "tags", "t": now_ms(), "v": clean})

    @rank_zero_only
    def log_figure(self, figure: Any, name: str, step: int | None = None, close: bool = True) -> None:
        """A matplotlib Figure (or PIL image / image array) as PNG: MLflow artifact and W&B image."""
        self.log_image(figure, name, step=step, close=close)

    @rank_zero_only
    def log_image(self, image: Any, name: str, step: int | None = None, caption: str | None = None, close: bool = False) -> None:
        journal = self._journal or self._ensure_started()
        key = _safe_relpath(str(name), "image name")
        rel = f"artifacts/images/{key}" + (f"_step{step}" if step is not None else "") + ".png"
        try:
            image_to_png(image, self.run_dir / rel)
        except Exception as err:  # noqa: BLE001 - "a figure that is not one"
            self._fail(f"log_image({name!r}): {err}; nothing logged")
            return
        finally:
            if close:
                close_figure(image)
        self._append(journal, {"k": "image", "t": now_ms(), "s": step if step is not None else 0, "key": key, "path": rel, "caption": caption})

    @rank_zero_only
    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int | None = None) -> None:
        """A table: JSON artifact in MLflow, ``wandb.Table`` in W&B. Image cells (PIL/arrays) become images."""
        journal = self._journal or self._ensure_started()
        key = _safe_relpath(str(key), "table key")
        columns = [str(c) for c in columns]
        base = f"artifacts/tables/{key}" + (f"_step{step}" if step is not None else "")
        media: list[str] = []
        data = []
        for r, row in enumerate(rows):
            row = list(row)
            if len(row) != len(columns):
                self._fail(f"log_table({key!r}): row {r} has {len(row)} cells for {len(columns)} columns; nothing logged")
                return
            cells = []
            for c, cell in enumerate(row):
                if cell is None or isinstance(cell, (str, int, float, bool)):
                    cells.append(cell)
                elif hasattr(cell, "shape") or hasattr(cell, "mode"):
                    rel = f"{base}_media/r{r}_c{c}.png"
                    try:
                        image_to_png(cell, self.run_dir / rel)
                    except TypeError:
                        cells.append(repr(cell))
                        continue
                    media.append(rel)
                    cells.append({"_image": rel})
                else:
                    try:
                        cells.append(to_float(cell))
                    except DroppedValue:
                        cells.append(str(cell))
            data.append(cells)
        rel = f"{base}.json"
        write_json_atomic(self.run_dir / rel, {"columns": columns, "data": data}, indent=None)
        self._append(journal, {"k": "table", "t": now_ms(), "s": step if step is not None else 0, "key": key, "path": rel, "media": media})

    @rank_zero_only
    def log_text(self, text: str, name: str) -> None:
        """A text file artifact (``name`` like ``notes/summary.txt``) in both backends."""
        self._log_bytes(str(text).encode("utf-8"), name)

    @rank_zero_only
    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        """A JSON artifact in both backends."""
        if not name.endswith(".json"):
            name += ".json"
        self._log_bytes(json.dumps(data, indent=1, default=repr, ensure_ascii=False).encode("utf-8"), name)

    @rank_zero_only
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Copy a file or directory into the run and upload it to both backends."""
        journal = self._journal or self._ensure_started()
        src = Path(path)
        if not src.exists():
            self._fail(f"log_artifact: {str(path)!r} does not exist; nothing logged")
            return
        sub = _safe_relpath(artifact_path) if artifact_path else ""
        rel = "/".join(p for p in ("artifacts", sub, src.name) if p)
        dest = self.run_dir / rel
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dest, dirs_exist_ok=True)
            else:
                shutil.copy2(src, dest)
        except OSError as err:
            self._fail(f"log_artifact({str(path)!r}): cannot copy into the run directory: {err}")
            return
        self._append(journal, {"k": "file", "t": now_ms(), "path": rel})

    @rank_zero_only
    def log_confusion_matrix(
        self,
        conf_matrix: Any,
        class_names: Sequence[str],
        title: str = "Confusion matrix",
        step: int | None = None,
        key: str = "confusion_matrix",
    ) -> None:
        """A confusion matrix: JSON + CSV + PNGs (counts, row-normalised) in MLflow; W&B's native chart."""
        journal = self._journal or self._ensure_started()
        import numpy as np

        matrix = np.asarray(conf_matrix.detach().cpu() if hasattr(conf_matrix, "detach") else conf_matrix)
        names = [str(c) for c in class_names]
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(names):
            self._fail(
                f"log_confusion_matrix: expected a square matrix of {len(names)} classes, "
                f"but got shape {tuple(matrix.shape)}; nothing logged"
            )
            return
        key = _safe_relpath(str(key), "confusion matrix key")
        base = f"artifacts/{key}" + (f"_step{step}" if step is not None else "")
        cells = matrix.tolist()
        write_json_atomic(self.run_dir / f"{base}.json", {"title": title, "class_names": names, "matrix": cells, "step": step}, indent=None)
        csv_lines = ["actual\\predicted," + ",".join(names)]
        csv_lines += [f"{n}," + ",".join(str(v) for v in row) for n, row in zip(names, cells, strict=True)]
        self._write_payload(f"{base}.csv", ("\n".join(csv_lines) + "\n").encode("utf-8"))
        self._append(
            journal,
            {
                "k": "cm",
                "t": now_ms(),
                "s": step if step is not None else 0,
                "key": key,
                "path": f"{base}.json",
                "csv": f"{base}.csv",
                "png": f"{base}.png",
                "png_norm": f"{base}_normalized.png",
            },
        )

    @rank_zero_only
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
    ) -> None:
        """Save ``model`` as an MLflow PyTorch model in the run and log it to both backends.

        MLflow: the model directory as artifacts at ``artifact_path`` (loadable with
        ``mlflow.pytorch.load_model``), registered as ``registered_model_name`` when given. W&B: a model
        artifact with ``aliases`` (plus ``latest``).
        """
        journal = self._journal or self._ensure_started()
        ap = _safe_relpath(artifact_path)
        rel = f"models/{ap}"
        target = self.run_dir / rel
        if target.exists():
            shutil.rmtree(target)
        try:
            from lightning_dualtrack.sinks.mlflow import save_pytorch_model

            save_pytorch_model(model, target, signature=signature, input_example=input_example)
        except Exception as err:  # noqa: BLE001
            self._fail(f"log_model({artifact_path!r}): saving the model failed: {err}")
            return
        self._append(
            journal,
            {
                "k": "model",
                "t": now_ms(),
                "path": rel,
                "ap": ap,
                "aliases": list(aliases),
                "registered_model_name": registered_model_name,
                "description": description,
                "registry_aliases": list(registry_aliases),
                "metadata": dict(metadata or {}),
            },
        )

    @rank_zero_only
    def register_model(
        self, model_name: str, model_uri: str | None = None, description: str | None = None, aliases: Sequence[str] = (), artifact_path: str = "model"
    ) -> None:
        """Register a logged model (``artifact_path`` of this run, or ``model_uri``) in the MLflow registry."""
        journal = self._journal or self._ensure_started()
        self._append(
            journal,
            {"k": "register", "t": now_ms(), "name": model_name, "model_uri": model_uri, "ap": artifact_path, "description": description, "aliases": list(aliases)},
        )

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
        """
        journal = self._journal or self._ensure_started()
        from lightning_dualtrack.hub import push_to_hub as _push

        folder = self.run_dir / "artifacts" / "hub"
        try:
            url = _push(model, repo_id, folder, commit_message=commit_message, private=private, metrics=metrics, api=api)
        except Exception as err:  # noqa: BLE001 - network, credentials, missing package
            self._fail(f"push_to_hub({repo_id!r}) failed: {type(err).__name__}: {err}; the folder is in {folder}")
            return None
        self._append(journal, {"k": "file", "t": now_ms(), "path": "artifacts/hub"})
        self.set_tags({"hf.repo_id": repo_id, "hf.repo_url": url})
        return url

    # -- internals ------------------------------------------------------------------------------------
    def _warn_once(self, key: str, message: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        warnings.warn(message, DualTrackWarning, stacklevel=3)

    def _fail(self, message: str) -> None:
        if self._strict:
            raise ValueError(message)
        warnings.warn(message, DualTrackWarning, stacklevel=3)

    def _register_key(self, key: str) -> None:
        stored, changed = self._keymap.add(key)
        if changed and self._journal is not None:
            self._append(self._journal, {"k": "keymap", "t": now_ms(), "v": {key: stored}})
            self._warn_once(f"key:{key}", f"key {key!r} is not valid in MLflow; stored there as {stored!r}")

    def _append(self, journal: JournalWriter, record: dict[str, Any]) -> None:
        try:
            journal.append(record)
        except (JournalError, ValueError, TypeError) as err:
            self._dropped_records += 1
            if self._strict:
                raise
            self._warn_once("journal", f"DUALTRACK: cannot write the run journal ({err}); records are being LOST")

    def _write_payload(self, rel: str, data: bytes) -> None:
        path = self.run_dir / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        except OSError as err:
            self._fail(f"cannot write {path}: {err}")

    def _log_bytes(self, data: bytes, name: str) -> None:
        journal = self._journal or self._ensure_started()
        rel = f"artifacts/{_safe_relpath(str(name), 'artifact name')}"
        self._write_payload(rel, data)
        self._append(journal, {"k": "file", "t": now_ms(), "path": rel})

    def _make_run_dir(self) -> Path:
        run_dir = self._root / self._run_id
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            probe = run_dir / ".write_test"
            probe.write_bytes(b"")
            probe.unlink()
            return run_dir
        except OSError as err:
            if self._strict:
                raise OSError(f"save_dir {str(self._root)!r} is not writable: {err}") from err
            fallback = Path(tempfile.mkdtemp(prefix=f"dualtrack-{self._run_id}-"))
            warnings.warn(
                f"DUALTRACK: save_dir {str(self._root)!r} is not writable ({err}); this run is journalled in "
                f"{fallback} instead",
                DualTrackWarning,
                stacklevel=4,
            )
            return fallback

    def _settings(self) -> dict[str, Any]:
        return {
            "run_id": self._run_id,
            "experiment_name": self._experiment_name,
            "run_name": self._run_name,
            "tags": redact_mapping(self._tags),
            "created_ms": now_ms(),
            "flush_interval": self._flush_interval,
            "strict": self._strict,  # the shipper's sinks do not fall back (e.g. W&B online -> offline)
            "mlflow": {"enabled": self._mlflow_enabled, "tracking_uri": self._tracking_uri},
            "wandb": {
                "enabled": self._wandb_enabled,
                "project": self._wandb_project,
                "entity": self._wandb_entity,
                "group": self._wandb_group,
                "mode": self._wandb_mode,
            },
        }

    @rank_zero_only
    def _ensure_started(self) -> JournalWriter:
        if self._journal is not None:
            return self._journal
        if self._finalized:
            # Lightning finalizes at the end of fit and then tests with the same logger: continue the run
            self._finalized = False
        self._run_dir = self._make_run_dir()
        run_file = self._run_dir / RUN_FILE
        previous = read_json(run_file)
        settings = self._settings()
        if previous:
            settings["created_ms"] = previous.get("created_ms", settings["created_ms"])
            if self._run_name is None:
                settings["run_name"] = previous.get("run_name")
            self._restore_from_journal()
        write_json_atomic(run_file, settings)
        if self._wandb_enabled and "wandb-mode" not in self._warned:
            self._warned.add("wandb-mode")
            print(f"[dualtrack] W&B mode: {self._wandb_mode} ({self._wandb_mode_reason})", file=sys.stderr)
        repair_torn_tail(self._run_dir)
        self._journal = JournalWriter(self._run_dir)
        start: dict[str, Any] = {"k": "start", "t": now_ms(), "run_id": self._run_id, "resumed": bool(previous)}
        self._append(self._journal, start)
        for key in self._tags:
            self._register_key(key)
        if self._log_system_info and not getattr(self, "_metadata_logged", False):
            self._metadata_logged = True
            self._log_system_metadata()
        if self._start_shipper and (self._mlflow_enabled or self._wandb_enabled):
            self._spawn_shipper()
        if not self._atexit_registered:
            atexit.register(self._atexit)
            self._atexit_registered = True
        if self._strict and self._shipper is not None:
            self._wait_until_open()
        return self._journal

    def _restore_from_journal(self) -> None:
        """On resume: the key map and params of the earlier sessions (a changed param is then seen)."""
        from lightning_dualtrack.journal import JournalReader

        for rec in JournalReader(self._run_dir):
            kind = rec.get("k")
            if kind == "keymap":
                for key, stored in rec["v"].items():
                    self._keymap.restore(key, stored)
            elif kind == "params":
                self._params.update(rec["v"])
                self._params.update(rec.get("wandb") or {})  # the latest value of a changed param
                for key in rec["v"]:  # `lr.v2`: the next change of `lr` is `lr.v3`, not `lr.v2` again
                    base, dot, n = key.rpartition(".v")
                    if dot and n.isdigit() and base in self._params:
                        self._param_versions[base] = max(self._param_versions.get(base, 1), int(n))
            elif kind == "metrics" and isinstance(rec.get("s"), int):
                self._auto_step = max(self._auto_step, rec["s"] + 1)

    def _log_system_metadata(self) -> None:
        meta = _metadata.collect()
        meta["command"] = redact_string(meta.get("command", ""))
        tags = {f"dualtrack.{k}": str(v) for k, v in meta.items()}
        tags["dualtrack.run_dir"] = str(self.run_dir.resolve())
        self._append(self._journal, {"k": "tags", "t": now_ms(), "v": tags})
        rel = "artifacts/dualtrack/requirements.txt"
        self._write_payload(rel, _metadata.requirements_text().encode("utf-8"))
        self._append(self._journal, {"k": "file", "t": now_ms(), "path": rel})

    def _shipper_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["MLFLOW_TRACKING_URI"] = self._tracking_uri
        if self._mlflow_user:
            env["MLFLOW_TRACKING_USERNAME"] = self._mlflow_user
        if self._mlflow_password:
            env["MLFLOW_TRACKING_PASSWORD"] = self._mlflow_password
        # the training script's directory, so that pickled models' classes import in the shipper
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*paths[:3], *env.get("PYTHONPATH", "").split(os.pathsep)])).strip(os.pathsep)
        return env

    def _spawn_shipper(self) -> None:
        from lightning_dualtrack.delivery.process import ShipperProcess

        names = [n for n, on in (("mlflow", self._mlflow_enabled), ("wandb", self._wandb_enabled)) if on]
        shipper = ShipperProcess(self.run_dir, self._shipper_env(), names,
                                 warn=lambda m: warnings.warn(m, DualTrackWarning, stacklevel=4))
        try:
            shipper.start()
            self._shipper = shipper
        except OSError as err:
            self._fail(f"cannot start the delivery process ({err}); deliver later with `dualtrack sync {self.run_dir}`")

    def _sink_states(self) -> dict[str, dict[str, Any]]:
        names = [n for n, on in (("mlflow", self._mlflow_enabled), ("wandb", self._wandb_enabled)) if on]
        return {n: read_json(self.run_dir / "state" / f"{n}.json", {}) or {} for n in names}

    def _wait_until_open(self, timeout: float = 120.0) -> None:
        self._shipper.wait_until_open(timeout)

    def _check_health(self) -> None:
        now = time.monotonic()
        if now - self._last_health_check < self._flush_interval:
            return
        self._last_health_check = now
        for name, state in self._sink_states().items():
            if state.get("failed"):
                raise RuntimeError(f"strict mode: {name} rejected {state['failed']} record(s); see `dualtrack status {self.run_dir}`")
            if state.get("last_error") and not state.get("open"):
                raise RuntimeError(f"strict mode: {name} is failing: {state['last_error']}")

    def _wait_for_shipper(self) -> dict[str, dict[str, Any]]:
        shipper = self._shipper
        if shipper is None:
            return self._sink_states()
        self._shipper_restarts = getattr(self, "_shipper_restarts", 0) + shipper.restarts
        self._shipper = None
        return shipper.finish(self._finalize_timeout)

    def _pending_message(self, pending: Mapping[str, Any]) -> str:
        from lightning_dualtrack.delivery.report import sync_command

        names = ", ".join(sorted(pending))
        return (
            f"[dualtrack] not everything reached {names} before finalize_timeout={self._finalize_timeout:g}s; "
            f"it is safe in the journal. Deliver it with:  {sync_command(self.run_dir)}"
        )

    def _print_report(self, report: Mapping[str, Mapping[str, Any]]) -> None:
        from lightning_dualtrack.delivery.report import final_report

        print(final_report(self.run_dir, dict(report), finalize_timeout=self._finalize_timeout,
                           restarts=getattr(self, "_shipper_restarts", 0)), file=sys.stderr)
        self.last_report = dict(report)

    def _log_checkpoints(self, checkpoint_callback: Any) -> None:
        from lightning.pytorch.loggers.utilities import _scan_checkpoints

        journal = self._journal or self._ensure_started()
        best = getattr(checkpoint_callback, "best_model_path", None)
        for mtime, path, score, _tag in _scan_checkpoints(checkpoint_callback, self._logged_ckpt_time):
            src = Path(path)
            rel = f"artifacts/checkpoints/{src.name}"
            try:
                (self.run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, self.run_dir / rel)  # a snapshot: Lightning overwrites last.ckpt in place
            except OSError as err:
                self._fail(f"cannot copy checkpoint {path}: {err}")
                continue
            aliases = ["latest"] + (["best"] if path == best else [])
            epoch = re.search(r"epoch=(\d+)", src.name)
            if epoch:
                aliases.append(f"epoch-{int(epoch.group(1))}")
            self._append(
                journal,
                {
                    "k": "model",
                    "t": now_ms(),
                    "path": rel,
                    "ap": "checkpoints",
                    "aliases": aliases,
                    "wandb_name": f"model-{self._run_id}",
                    "metadata": {"score": float(score) if score is not None else None, "original_filename": src.name},
                    "checkpoint": True,
                },
            )
            self._logged_ckpt_time[path] = mtime

    def _atexit(self) -> None:
        if self._journal is not None and not self._finalized:
            self.finalize("success")


def create_tracker(
    use_mlflow: bool = True,
    use_wandb: bool = True,
    experiment_name: str = "lightning_dualtrack",
    wandb_project: str | None = None,
    wandb_group: str | None = None,
    **kwargs: Any,
) -> DualTrackLogger:
    """The reference project's factory: a :class:`DualTrackLogger` with the given backends."""
    return DualTrackLogger(
        experiment_name=experiment_name,
        mlflow=use_mlflow,
        wandb=use_wandb,
        wandb_project=wandb_project,
        wandb_group=wandb_group,
        **kwargs,
    )
