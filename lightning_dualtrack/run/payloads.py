"""Payload encoding: figures, images, tables, confusion matrices, text, models and checkpoints become
files in the run directory plus one journal record each (built with :mod:`lightning_dualtrack.core.records`).

Every method returns the record to append, or ``None`` when nothing is to be logged, having said why:

* a write refused by the disk (``ENOSPC`` full, ``EIO``, ``EROFS`` read-only, ``EDQUOT``, ``EFBIG``)
  is one warning per payload kind (the first full-disk table, the first full-disk image...) and
  the run goes on; in strict mode it raises ``OSError`` with the same message;
* an input that is not what the method takes (a figure that is not one, a ragged table) is a warning
  quoting its type and a short preview (strict mode: ``ValueError``);
* file names and text are redacted like params (credential-shaped parts become ``***``); an uploaded
  checkpoint is a copy whose saved hyperparameters are redacted (the local one is left as it is).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_dualtrack.core import records
from lightning_dualtrack.core.media import close_figure, image_to_png
from lightning_dualtrack.core.messages import Messages
from lightning_dualtrack.core.redact import KEY_MASK, redact_string, redact_tree
from lightning_dualtrack.core.values import DroppedValue, preview, short, to_float

DISK_ERRORS = frozenset({errno.ENOSPC, errno.EIO, errno.EROFS, errno.EDQUOT, errno.EFBIG})


def safe_relpath(path: str, messages: Messages | None = None, what: str = "artifact_path") -> str:
    """A relative POSIX path with no ``..``, absolute root, backslashes or credential (warns if it changed)."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    cleaned = redact_string("/".join(parts), KEY_MASK)
    if cleaned != path and messages is not None:
        messages.warn(f"{what} {short(path)!r} is not a plain relative path inside the run; stored as {short(cleaned)!r}")
    return cleaned



def _step_suffix(step: int | None) -> str:
    """``_step0000027``: zero-padded (as the classification report's names), so names sort in step order."""
    return "" if step is None else f"_step{int(step):07d}"


class Payloads:
    """Writes payload files under ``run_dir`` (the facade's thread; no backend is imported)."""

    def __init__(self, run_dir: Path, messages: Messages, run_id: str) -> None:
        self.run_dir = run_dir
        self.messages = messages
        self.run_id = run_id
        self.logged_ckpt_time: dict[str, float] = {}
        # per checkpoint callback (its state key): checkpoint path -> run-relative copy, for those logged and still kept
        self.logged_by_callback: dict[str, dict[str, str]] = {}

    # -- writing --------------------------------------------------------------------------------------
    def disk_error(self, kind: str, target: Any, err: OSError) -> None:
        """A refused write: a warning once per kind when the disk refused it, else every time."""
        name = errno.errorcode.get(err.errno or 0, "error")
        message = f"cannot write the {kind} {short(str(target))!r} into the run directory ({name}: {err.strerror or err}); this {kind} is not logged, training goes on"
        if self.messages.strict:
            raise OSError(err.errno, message) from err
        if err.errno in DISK_ERRORS:
            self.messages.warn_once(f"disk:{kind}", message + " (further failures of this kind are not reported)")
        else:
            self.messages.warn(message)

    def write(self, rel: str, data: bytes, kind: str) -> bool:
        """Write ``data`` to ``run_dir/rel`` whole (a temporary file, then a rename) or not at all."""
        path = self.run_dir / rel
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
            return True
        except OSError as err:
            _remove(tmp)
            self.disk_error(kind, rel, err)
            return False

    def write_json(self, rel: str, data: Any, kind: str) -> bool:
        return self.write(rel, json.dumps(data, default=repr, ensure_ascii=False, separators=(",", ":")).encode("utf-8"), kind)

    def png(self, image: Any, rel: str, kind: str, what: str) -> bool:
        try:
            image_to_png(image, self.run_dir / rel)
            return True
        except OSError as err:
            _remove(self.run_dir / rel)
            self.disk_error(kind, rel, err)
        except Exception as err:  # noqa: BLE001 - "a figure that is not one"
            self.messages.fail(f"{what}: {err} (got {preview(image)}); nothing logged")
        return False

    # -- kinds ------------------------------------------------------------------------------------------
    def image(self, image: Any, name: str, step: int | None, caption: str | None, close: bool) -> dict[str, Any] | None:
        key = safe_relpath(name, self.messages, "image name")
        rel = f"artifacts/images/{key}" + _step_suffix(step) + ".png"
        try:
            ok = self.png(image, rel, "image", f"log_image({short(name)!r})")
        finally:
            if close:
                close_figure(image)
        return records.image(key, rel, step, redact_string(caption) if caption else caption) if ok else None

    def table(self, key: str, columns: Sequence[Any], rows: Sequence[Sequence[Any]], step: int | None) -> dict[str, Any] | None:
        key = safe_relpath(key, self.messages, "table key")
        columns = [redact_string(str(c)) for c in columns]
        base = f"artifacts/tables/{key}" + _step_suffix(step)
        media: list[str] = []
        data = []
        for r, row in enumerate(rows):
            row = list(row)
            if len(row) != len(columns):
                self.messages.fail(f"log_table({short(key)!r}): row {r} has {len(row)} cells for {len(columns)} columns; nothing logged")
                return None
            cells: list[Any] = []
            for c, cell in enumerate(row):
                if isinstance(cell, str):
                    cells.append(redact_string(cell))
                elif cell is None or isinstance(cell, (int, float, bool)):
                    cells.append(cell)
                elif hasattr(cell, "shape") or hasattr(cell, "mode"):
                    rel = f"{base}_media/r{r}_c{c}.png"
                    try:
                        image_to_png(cell, self.run_dir / rel)
                    except OSError as err:
                        self.disk_error("table", f"{base}.json", err)
                        return None
                    except TypeError:
                        cells.append(preview(cell)[len(type(cell).__name__) + 1 :])
                        continue
                    media.append(rel)
                    cells.append({"_image": rel})
                else:
                    try:
                        cells.append(to_float(cell))
                    except DroppedValue:
                        cells.append(redact_string(str(cell)))
            data.append(cells)
        rel = f"{base}.json"
        if not self.write_json(rel, {"columns": columns, "data": data}, "table"):
            return None
        return records.table(key, rel, step, media)

    def confusion_matrix(self, conf_matrix: Any, class_names: Sequence[str], title: str, step: int | None, key: str) -> dict[str, Any] | None:
        import numpy as np

        try:
            matrix = np.asarray(conf_matrix.detach().cpu() if hasattr(conf_matrix, "detach") else conf_matrix)
        except Exception:  # noqa: BLE001
            matrix = np.zeros((0,))
        names = [redact_string(str(c)) for c in class_names]
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(names):
            self.messages.fail(
                f"log_confusion_matrix: expected a square matrix of {len(names)} classes, "
                f"but got shape {tuple(matrix.shape)} ({preview(conf_matrix)}); nothing logged"
            )
            return None
        key = safe_relpath(str(key), self.messages, "confusion matrix key")
        base = f"artifacts/{key}" + _step_suffix(step)
        cells = matrix.tolist()
        if not self.write_json(f"{base}.json", {"title": redact_string(str(title)), "class_names": names, "matrix": cells, "step": step}, "confusion matrix"):
            return None
        csv_lines = ["actual\\predicted," + ",".join(names)]
        csv_lines += [f"{n}," + ",".join(str(v) for v in row) for n, row in zip(names, cells, strict=True)]
        if not self.write(f"{base}.csv", ("\n".join(csv_lines) + "\n").encode("utf-8"), "confusion matrix"):
            return None
        return records.confusion_matrix(key, base, step)

    def file_bytes(self, data: bytes, name: str, kind: str) -> dict[str, Any] | None:
        rel = f"artifacts/{safe_relpath(str(name), self.messages, 'artifact name')}"
        return records.file(rel) if self.write(rel, data, kind) else None

    def text(self, text: str, name: str) -> dict[str, Any] | None:
        return self.file_bytes(redact_string(str(text)).encode("utf-8"), name, "text")

    def dict(self, data: Mapping[str, Any], name: str) -> dict[str, Any] | None:
        if not name.endswith(".json"):
            name += ".json"
        try:
            plain = json.loads(json.dumps(data, default=repr, ensure_ascii=False))
        except ValueError as err:  # a cycle
            self.messages.fail(f"log_dict({short(name)!r}): {err} ({preview(data)}); nothing logged")
            return None
        body = json.dumps(redact_tree(plain), indent=1, ensure_ascii=False)
        return self.file_bytes(body.encode("utf-8"), name, "dict")

    def artifact(self, path: str | os.PathLike, artifact_path: str | None) -> dict[str, Any] | None:
        src = Path(path)
        if not src.exists():
            self.messages.fail(f"log_artifact: {short(str(path))!r} does not exist; nothing logged")
            return None
        sub = safe_relpath(artifact_path, self.messages) if artifact_path else ""
        name = redact_string(src.name, KEY_MASK)
        if name != src.name:
            self.messages.warn(f"artifact file name {short(src.name)!r} holds a credential-shaped string; stored as {short(name)!r}")
        rel = "/".join(p for p in ("artifacts", sub, name) if p)
        dest = self.run_dir / rel
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dest, dirs_exist_ok=True)
                self._redact_names(dest)
            else:
                shutil.copy2(src, dest)
        except OSError as err:
            self.disk_error("artifact", str(path), err)
            return None
        return records.file(rel)

    def _redact_names(self, root: Path) -> None:
        """Rename files and folders of a copied directory whose names hold a credential."""
        for parent, dirs, files in os.walk(root, topdown=False):
            for name in [*files, *dirs]:
                clean = redact_string(name, KEY_MASK)
                if clean != name:
                    os.replace(os.path.join(parent, name), os.path.join(parent, clean))
                    self.messages.warn_once(f"artifact-name:{clean}", f"artifact file name {short(name)!r} holds a credential-shaped string; stored as {short(clean)!r}")

    def model(self, model: Any, artifact_path: str, signature: Any, input_example: Any) -> tuple[str, str] | None:
        """Save ``model`` as an MLflow PyTorch model directory; returns (run-relative path, artifact path)."""
        ap = safe_relpath(artifact_path, self.messages)
        rel = f"models/{ap}"
        target = self.run_dir / rel
        try:
            if target.exists():
                shutil.rmtree(target)
            # imported here, not at the top: only a call that saves a model pays for (and imports) mlflow
            from lightning_dualtrack.sinks.mlflow.models import save_pytorch_model

            save_pytorch_model(model, target, signature=signature, input_example=input_example)
        except OSError as err:
            self.disk_error("model", rel, err)
            return None
        except Exception as err:  # noqa: BLE001
            self.messages.fail(f"log_model({short(artifact_path)!r}): saving the model failed: {type(err).__name__}: {short(str(err))}")
            return None
        return rel, ap

    def checkpoints(self, checkpoint_callback: Any) -> list[dict[str, Any]]:
        """The checkpoints saved since the last call, as redacted copies in the run; their records. Then a
        ``delete`` record for each one logged before that the callback removed since (:meth:`evicted`)."""
        from lightning.pytorch.loggers.utilities import _scan_checkpoints

        out = []
        try:
            owned = self.logged_by_callback.setdefault(_callback_key(checkpoint_callback), {})
        except ReferenceError:  # Lightning hands over a weak proxy: its callback is gone with its trainer
            return []
        # "best" only where a metric decides it: a callback without ``monitor`` calls its latest save "best"
        best = getattr(checkpoint_callback, "best_model_path", None) if getattr(checkpoint_callback, "monitor", None) else None
        for mtime, path, score, _tag in _scan_checkpoints(checkpoint_callback, self.logged_ckpt_time):
            src = Path(path)
            name = redact_string(src.name, KEY_MASK)
            rel = f"artifacts/checkpoints/{name}"
            try:
                # a snapshot (Lightning overwrites last.ckpt in place), with the saved hyperparameters redacted
                redacted_checkpoint_copy(src, self.run_dir / rel)
            except OSError as err:
                self.disk_error("checkpoint", str(path), err)
                continue
            except Exception as err:  # noqa: BLE001 - not a checkpoint torch can read: not uploaded (it could hold secrets)
                self.messages.fail(f"cannot read checkpoint {short(str(path))!r} to redact it ({type(err).__name__}: {short(str(err))}); not uploaded")
                continue
            aliases = ["latest"] + (["best"] if path == best else [])
            epoch = re.search(r"epoch=(\d+)", src.name)
            if epoch:
                aliases.append(f"epoch-{int(epoch.group(1))}")
            meta = {"score": _score(score), "original_filename": name, **checkpoint_settings(checkpoint_callback)}
            out.append(records.checkpoint(rel, aliases, f"model-{self.run_id}", meta))
            self.logged_ckpt_time[path] = mtime
            owned[path] = rel
        return out + self.evicted(checkpoint_callback)

    def evicted(self, checkpoint_callback: Any) -> list[dict[str, Any]]:
        """``delete`` records for the logged checkpoints of this callback that it removed: no longer among those it
        keeps (``best_k_models``, ``best_model_path``, ``last_model_path``) and gone from disk. Lightning calls the
        logger just before it removes an evicted file, so an eviction is seen at the next save or at ``finalize``; a
        file the callback does not keep but leaves on disk (``save_top_k=-1`` without a monitor, a checkpoint resumed
        from) is never removed from the backends."""
        key = _callback_key(checkpoint_callback)
        owned = self.logged_by_callback.setdefault(key, {})
        kept = _kept_checkpoints(checkpoint_callback)
        out = []
        for path, rel in list(owned.items()):
            if path in kept or not _removed(path):
                continue
            del owned[path]
            self.logged_ckpt_time.pop(path, None)
            if any(rel in paths.values() for paths in self.logged_by_callback.values()):
                continue  # a checkpoint still kept was uploaded under the same name: the backends' copy stays
            reason = (f"removed by {checkpoint_callback.__class__.__name__}(monitor={getattr(checkpoint_callback, 'monitor', None)!r}, "
                      f"save_top_k={getattr(checkpoint_callback, 'save_top_k', None)}): not among the checkpoints it keeps")
            out.append(records.delete(rel, "checkpoints", reason, f"model-{self.run_id}", {"original_filename": Path(rel).name}))
        return out


def _callback_key(callback: Any) -> str:
    """Which checkpoint callback logged a checkpoint (two callbacks may share a directory): its state key."""
    return str(getattr(callback, "state_key", None) or getattr(callback, "dirpath", None) or callback.__class__.__name__)


def _kept_checkpoints(callback: Any) -> set[str]:
    """The checkpoint files the callback keeps (what ``_scan_checkpoints`` would log)."""
    kept = {str(p) for p in (getattr(callback, "best_k_models", None) or {})}
    for attr in ("best_model_path", "last_model_path"):
        if getattr(callback, attr, None):
            kept.add(str(getattr(callback, attr)))
    return kept


def _removed(path: str) -> bool:
    """Whether a checkpoint the callback no longer keeps is gone: a local file no longer on disk (a remote one, which
    cannot be looked at cheaply, is taken as removed, as Lightning removes those it evicts)."""
    return "://" in path or not os.path.exists(path)


# The callback settings WandbLogger puts in a checkpoint artifact's metadata (under the callback's class name).
_CKPT_SETTINGS = ("monitor", "mode", "save_last", "save_top_k", "save_weights_only", "_every_n_train_steps")


def checkpoint_settings(callback: Any) -> dict[str, dict[str, Any]]:
    """``{"ModelCheckpoint": {monitor, mode, save_last, save_top_k, ...}}``, as WandbLogger's metadata has it."""
    values = {k: getattr(callback, k) for k in _CKPT_SETTINGS if hasattr(callback, k)}
    values = {k: v for k, v in values.items() if v is None or isinstance(v, (str, int, float, bool))}
    return {callback.__class__.__name__: values} if values else {}  # __class__: Lightning passes a weakref.proxy


def _score(score: Any) -> int | float | None:
    """A monitored score as a Python number (a tensor's ``item()``: an int stays an int)."""
    if score is None:
        return None
    value = score.item() if hasattr(score, "item") else score
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    try:
        return to_float(value)
    except DroppedValue:
        return None


# Checkpoint entries that hold what the user configured (and so may hold a secret).
_CKPT_CONFIG_KEYS = ("hyper_parameters", "datamodule_hyper_parameters")


def redacted_checkpoint_copy(src: Path, dest: Path) -> None:
    """Write ``dest``: the checkpoint ``src`` with its saved hyperparameters redacted; ``src`` is not touched."""
    import torch

    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    if isinstance(ckpt, dict):
        for key in _CKPT_CONFIG_KEYS:
            if key in ckpt:
                ckpt[key] = redact_tree(ckpt[key])
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, dest)
    except BaseException:
        _remove(tmp)
        raise
    stat = src.stat()
    os.utime(dest, (stat.st_atime, stat.st_mtime))


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
