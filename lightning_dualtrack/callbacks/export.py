"""Export at the end of fit: ``torch.export`` (``.pt2``) and ONNX, checked against eager, logged and registered.

``forward(pixel_values) -> logits`` is exported with a dynamic batch dimension:

* ``pt2``: an ``ExportedProgram`` saved with ``torch.export.save`` (``torch.export.load(path).module()`` runs it;
  AOTInductor can compile it ahead of time);
* ``onnx``: the dynamo-based ONNX exporter (``torch.onnx.export(..., dynamo=True)``), run by ONNX Runtime;
* ``torchscript``: only when asked for (``formats=[..., "torchscript"]``); ``torch.jit`` is deprecated in torch 2.15,
  whose FutureWarnings are silenced for this explicit opt-in.

The pure functions (:func:`export_program`, :func:`export_onnx`, :func:`export_torchscript`) are also what the
inference benchmark uses. The callback exports the best checkpoint's weights when there is one (else the final
weights), on a real batch from the validation data, and:

* measures ``export/<format>_max_abs_diff`` (each loaded back and compared with eager on that batch, and for ``pt2``
  and ``onnx`` also on a batch of another size; a difference above ``atol`` is a loud warning, and the file is
  still logged so that it can be inspected). They belong to the export, not to training: ``export/parity.json``
  beside the files, and the logged model's params (MLflow LoggedModel) and metadata (W&B artifact); a stock logger
  gets them as metrics;
* logs ``export/model.pt2``, ``export/model.onnx`` (and ``export/model.ts``) and ``export/clip_har.json`` (class
  names, preprocessing, output meaning) to both backends;
* logs an MLflow model (see :mod:`lightning_dualtrack.serving`): its pyfunc takes images and returns class names
  and probabilities, its ``pytorch`` flavor is the same ``.pt2`` (``mlflow.pytorch.load_model`` -> logits); in
  MLflow 3 it is a LoggedModel linked to the run, registered as ``registered_model_name`` with
  ``registry_alias``; in W&B it is a ``model`` artifact of its own (checkpoints are another artifact).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from lightning_dualtrack.callbacks._logging import call_rich, is_rich

DEFAULT_OPSET = 18
FORMATS = ("pt2", "onnx", "torchscript")
def _exportable(module: torch.nn.Module) -> torch.nn.Module:
    """Let tracing inspect a LightningModule that is not attached to a Trainer (as ``to_torchscript`` does)."""
    for sub in module.modules():
        if isinstance(sub, LightningModule):
            sub._jit_is_scripting = True
    return module


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """TorchScript was asked for explicitly: its deprecation (torch 2.15) need not be repeated three times."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit.*")
        yield


def _other_batch(example: torch.Tensor) -> torch.Tensor:
    """A batch of another size (and other values) than ``example``: checks that the batch axis is dynamic."""
    n = example.shape[0] + 3
    g = torch.Generator().manual_seed(0)
    noise = torch.randn((n, *example.shape[1:]), generator=g, dtype=torch.float32)
    return (noise * example.float().std().clamp_min(1e-3) + example.float().mean()).to(example.device, example.dtype)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float().cpu() - b.detach().float().cpu()).abs().max())


@torch.no_grad()
def export_program(
    module: torch.nn.Module, example: torch.Tensor, path: str | Path
) -> tuple[torch.export.ExportedProgram, float]:
    """``torch.export`` ``module.forward(pixel_values)`` with a dynamic batch dimension and save it as ``.pt2``.

    Returns the program as loaded back from ``path`` and its max abs difference to eager, over ``example`` and a
    batch of another size (which a program specialised to one batch size would reject).

    Example:
        >>> from lightning_dualtrack.har import ClipHarModule
        >>> model = ClipHarModule("dualtrack-tiny", pretrained=None)  # doctest: +SKIP
        >>> program, diff = export_program(model, torch.randn(2, 3, 64, 64), "model.pt2")  # doctest: +SKIP
        >>> torch.export.load("model.pt2").module()(torch.randn(5, 3, 64, 64)).shape  # doctest: +SKIP
        torch.Size([5, 15])
    """
    module = module.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    # a (B, 3, H, W) input with B = 1 would be specialised to 1: export with at least 2 rows
    x = example if example.shape[0] > 1 else torch.cat([example, example])
    program = torch.export.export(module, (x,), dynamic_shapes={"pixel_values": {0: batch}})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path))
    runner = loaded.module()
    diff = max(_max_diff(runner(t), module(t)) for t in (example, _other_batch(example)))
    return loaded, diff


@torch.no_grad()
def export_torchscript(
    module: torch.nn.Module, example: torch.Tensor, path: str | Path
) -> tuple[torch.jit.ScriptModule, float]:
    """Trace ``module.forward`` on ``example``, save it, and return it with its max abs difference to eager.

    TorchScript is deprecated upstream (torch 2.15); prefer :func:`export_program`. Kept for runtimes that still
    load ``.ts`` files (libtorch C++ apps, older serving stacks).
    """
    module = _exportable(module.eval())
    with _quiet_jit():
        traced = torch.jit.trace(module, example, check_trace=False)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path), map_location=example.device)
        diff = _max_diff(loaded(example), module(example))
    return loaded, diff


def export_onnx(module: torch.nn.Module, example: torch.Tensor, path: str | Path, opset: int = DEFAULT_OPSET) -> float:
    """Export to ONNX with the dynamo exporter (``torch.export`` based, dynamic batch axis) and return ONNX
    Runtime's max abs difference to eager over ``example`` and a batch of another size."""
    import onnxruntime as ort

    module = _exportable(module.eval())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    x = example if example.shape[0] > 1 else torch.cat([example, example])
    with warnings.catch_warnings():
        # the exporter's own progress chatter (not a problem with the model)
        warnings.filterwarnings("ignore", message=r".*torch\.export.*strict.*")
        program = torch.onnx.export(
            module,
            (x,),
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch", min=1, max=4096)}},
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    eager_module = module.float().cpu()
    diffs = []
    for t in (example, _other_batch(example)):
        t = t.detach().cpu().float()
        out = session.run(["logits"], {"pixel_values": t.numpy()})[0]
        with torch.no_grad():
            diffs.append(_max_diff(torch.from_numpy(out), eager_module(t)))
    return max(diffs)


def _example_batch(trainer: Trainer, max_items: int) -> torch.Tensor | None:
    """A real batch of inputs from the validation (else training) data."""
    for source in ("val_dataloaders", "train_dataloader"):
        loaders = getattr(trainer, source, None)
        if loaders is None and trainer.datamodule is not None:
            try:
                loaders = getattr(trainer.datamodule, source.replace("loaders", "loader").rstrip("s"))()
            except Exception:  # noqa: BLE001
                loaders = None
        if loaders is None:
            continue
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        batch = next(iter(loader))
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        if isinstance(x, dict):
            x = x.get("pixel_values", next(iter(x.values())))
        return x[:max_items]
    return None


def _denormalize(x: torch.Tensor, preprocessing: dict[str, Any]) -> list[Any]:
    """Normalised ``(B, 3, H, W)`` inputs back to ``(H, W, 3)`` uint8 images (the model's input example)."""
    mean = torch.tensor(preprocessing["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing["std"]).view(1, 3, 1, 1)
    images = ((x.detach().cpu().float() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
    return [im.permute(1, 2, 0).numpy() for im in images]


def _accepts(function: Any, name: str) -> bool:
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class ModelExport(Callback):
    """``torch.export`` (``.pt2``) + ONNX export, parity check, MLflow model and registry at the end of fit.

    Args:
        formats: any of ``"pt2"``, ``"onnx"``, ``"torchscript"`` (deprecated upstream; off unless listed).
        opset: ONNX opset.
        atol: max abs difference to eager above which the export is reported as a mismatch.
        use_best: export the best checkpoint's weights when a ``ModelCheckpoint`` has one.
        log_mlflow_model: log the MLflow model (pyfunc over images + the ``.pt2``; needs ``"pt2"``) at
            ``artifact_path``: an MLflow 3 LoggedModel of the run, and a W&B ``model`` artifact.
        registered_model_name: register that model under this name (None: do not register).
        registry_alias: alias set on the registered version (e.g. ``champion``).
        example_size: how many items of the real batch to export and compare with.
    """

    def __init__(
        self,
        formats: tuple[str, ...] | list[str] = ("pt2", "onnx"),
        opset: int = DEFAULT_OPSET,
        atol: float = 1e-4,
        use_best: bool = True,
        log_mlflow_model: bool = True,
        artifact_path: str = "model",
        registered_model_name: str | None = None,
        registry_alias: str | None = "champion",
        example_size: int = 4,
    ) -> None:
        unknown = set(formats) - set(FORMATS)
        if unknown:
            raise ValueError(f"Expected `formats` among {FORMATS}, but got {sorted(unknown)}")
        if log_mlflow_model and "pt2" not in formats:
            rank_zero_warn(
                f"ModelExport: `log_mlflow_model=True` needs the 'pt2' format, but `formats` is {list(formats)};"
                " no MLflow model will be logged"
            )
        self.formats = tuple(formats)
        self.opset = opset
        self.atol = atol
        self.use_best = use_best
        self.log_mlflow_model = log_mlflow_model
        self.artifact_path = artifact_path
        self.registered_model_name = registered_model_name
        self.registry_alias = registry_alias
        self.example_size = example_size
        self.results: dict[str, Any] = {}

    def _module_to_export(self, trainer: Trainer, pl_module: LightningModule) -> tuple[torch.nn.Module, str]:
        module = copy.deepcopy(pl_module).cpu().float().eval()
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if self.use_best else ""
        if best and Path(best).is_file():
            ckpt = torch.load(best, map_location="cpu", weights_only=False)
            module.load_state_dict(ckpt["state_dict"])
            return module, f"best checkpoint {Path(best).name} (epoch {ckpt.get('epoch')}, step {ckpt.get('global_step')})"
        return module, f"final weights (epoch {trainer.current_epoch}, step {trainer.global_step})"

    def _config(self, pl_module: LightningModule, source: str) -> dict[str, Any]:
        from lightning_dualtrack.serving import make_config

        names = list(getattr(pl_module, "class_names", None) or [])
        preprocessing = dict(getattr(pl_module, "preprocess_cfg", None) or {})
        hp = getattr(pl_module, "hparams", {}) or {}
        return make_config(names, preprocessing, architecture=type(pl_module).__name__,
                           model_name=hp.get("model_name"), source=source)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        example = _example_batch(trainer, self.example_size)
        if example is None:
            rank_zero_warn("ModelExport: no data to export with (no validation or training dataloader); skipped")
            return
        module, source = self._module_to_export(trainer, pl_module)
        example = example.detach().cpu().float()
        rich = [lg for lg in trainer.loggers if is_rich(lg)]
        out_dir = Path(rich[0].run_dir if rich else trainer.default_root_dir) / "export"
        out_dir.mkdir(parents=True, exist_ok=True)
        config = self._config(pl_module, source)
        (out_dir / "clip_har.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
        metrics: dict[str, float] = {}
        files = ["clip_har.json"]
        if "pt2" in self.formats:
            _, diff = export_program(module, example, out_dir / "model.pt2")
            metrics["export/pt2_max_abs_diff"] = diff
            files.append("model.pt2")
            self._check("torch.export (.pt2)", diff)
        if "onnx" in self.formats:
            try:
                diff = export_onnx(module, example, out_dir / "model.onnx", self.opset)
                metrics["export/onnx_max_abs_diff"] = diff
                files.append("model.onnx")
                self._check("ONNX", diff)
            except ImportError as err:
                rank_zero_warn(
                    f"ModelExport: ONNX export needs `pip install lightning-dualtrack[export]` ({err}); skipped"
                )
        if "torchscript" in self.formats:
            _, diff = export_torchscript(module, example, out_dir / "model.ts")
            metrics["export/torchscript_max_abs_diff"] = diff
            files.append("model.ts")
            self._check("TorchScript", diff)
        self.results = {"source": source, **metrics, "dir": str(out_dir)}
        rank_zero_info(f"ModelExport: exported {source} to {out_dir}: {metrics}")
        for logger in trainer.loggers:
            if not is_rich(logger):  # a stock logger keeps them where it can: its metrics
                logger.log_metrics(metrics, step=trainer.global_step)
        # the parity errors describe the export, not training: with the exported files and in the logged model's
        # params and metadata, not as single-point charts ahead of the model's own on MLflow's Model metrics tab
        (out_dir / "parity.json").write_text(json.dumps({"source": source, "atol": self.atol, **metrics}, indent=1),
                                             encoding="utf-8")
        files.append("parity.json")
        for logger in rich:
            for name in files:
                call_rich("ModelExport", logger, "log_artifact", out_dir / name, "export")
            if self.log_mlflow_model and (out_dir / "model.pt2").exists():
                self._log_model(logger, pl_module, out_dir, example, config, source, metrics)

    def _log_model(self, logger: Any, pl_module: LightningModule, out_dir: Path, example: torch.Tensor,
                   config: dict[str, Any], source: str, parity: dict[str, float]) -> None:
        from lightning_dualtrack.serving import ServingModel

        names = config["class_names"]
        model = ServingModel(out_dir / "model.pt2", config, _denormalize(example[:1], config["preprocessing"]),
                             metadata={"source": source, "formats": list(self.formats)})
        description = (
            f"{type(pl_module).__name__} ({source}), exported with torch.export. pyfunc: images (path, base64, bytes"
            f" or uint8 array) -> class, probability, probabilities; pytorch flavor: pixel_values float32"
            f" (B, 3, {config['input']['shape'][2]}, {config['input']['shape'][3]}) -> logits over {len(names)}"
            f" classes: {', '.join(names)}"
        )
        kwargs: dict[str, Any] = dict(
            artifact_path=self.artifact_path,
            aliases=[],  # `best` belongs to the checkpoint artifact; this artifact holds one export per fit
            registered_model_name=self.registered_model_name,
            description=description,
            registry_aliases=[self.registry_alias] if self.registry_alias else [],
            metadata={
                "source": source,
                "class_names": names,
                "preprocessing": config["preprocessing"],
                "output": config["output"]["meaning"],
                "flavors": ["python_function (images -> classes)", "pytorch (pt2: pixel_values -> logits)"],
                "parity": dict(parity),  # export/<format>_max_abs_diff against eager
            },
        )
        if _accepts(getattr(logger, "log_model", None), "wandb_name"):
            kwargs["wandb_name"] = f"{self.registered_model_name or type(pl_module).__name__}-export"
        call_rich("ModelExport", logger, "log_model", model, **kwargs)

    def _check(self, what: str, diff: float) -> None:
        if not diff <= self.atol:  # also catches NaN
            rank_zero_warn(
                f"ModelExport: the {what} export DIFFERS from eager: max abs difference {diff:.3g} > atol {self.atol:g}. "
                "The file is logged for inspection; do not serve it before finding out why."
            )
