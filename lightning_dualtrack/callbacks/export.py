"""Export at the end of fit: TorchScript and ONNX, checked against eager, logged and registered.

The pure functions (:func:`export_torchscript`, :func:`export_onnx`) are also what the inference
benchmark uses. The callback exports the best checkpoint's weights when there is one (else the final
weights), on a real batch from the validation data, and:

* logs ``export/torchscript_max_abs_diff`` and ``export/onnx_max_abs_diff`` (a difference above
  ``atol`` is a loud warning, and the file is still logged so it can be inspected);
* logs ``export/model.ts`` and ``export/model.onnx`` to both backends;
* logs an MLflow PyTorch model built from the TorchScript module (loads with
  ``mlflow.pytorch.load_model`` or ``mlflow.pyfunc.load_model`` without this package) with a
  signature and input example, registers it as ``registered_model_name`` with ``registry_alias``;
  in W&B the same directory is a ``model`` artifact with the ``best`` and ``latest`` aliases.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from lightning_dualtrack.callbacks._logging import call_rich, is_rich

DEFAULT_OPSET = 18


def _exportable(module: torch.nn.Module) -> torch.nn.Module:
    """Let tracing inspect a LightningModule that is not attached to a Trainer (as ``to_torchscript`` does)."""
    for sub in module.modules():
        if isinstance(sub, LightningModule):
            sub._jit_is_scripting = True
    return module


@torch.no_grad()
def export_torchscript(
    module: torch.nn.Module, example: torch.Tensor, path: str | Path
) -> tuple[torch.jit.ScriptModule, float]:
    """Trace ``module.forward`` on ``example``, save it, and return it with its max abs difference to eager."""
    module = _exportable(module.eval())
    traced = torch.jit.trace(module, example, check_trace=False)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(path))
    loaded = torch.jit.load(str(path), map_location=example.device)
    diff = (loaded(example).float() - module(example).float()).abs().max().item()
    return loaded, float(diff)


def export_onnx(module: torch.nn.Module, example: torch.Tensor, path: str | Path, opset: int = DEFAULT_OPSET) -> float:
    """Export to ONNX (``torch.export``-based exporter, dynamic batch axis) and return ONNX Runtime's
    max abs difference to eager on ``example``."""
    import onnxruntime as ort

    module = _exportable(module.eval())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    program = torch.onnx.export(
        module,
        (example,),
        input_names=["pixel_values"],
        output_names=["logits"],
        dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}},
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = example.detach().cpu().float().numpy()
    out = session.run(["logits"], {"pixel_values": x})[0]
    with torch.no_grad():
        eager = module.float().cpu()(example.detach().cpu().float()).numpy()
    return float(abs(out - eager).max())


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


class ModelExport(Callback):
    """TorchScript + ONNX export, parity check, and model registry at the end of fit.

    Args:
        formats: any of ``"torchscript"``, ``"onnx"``.
        opset: ONNX opset.
        atol: max abs difference to eager above which the export is reported as a mismatch.
        use_best: export the best checkpoint's weights when a ``ModelCheckpoint`` has one.
        log_mlflow_model: log an MLflow model (from the TorchScript module) at ``artifact_path``.
        registered_model_name: register that model under this name (None: do not register).
        registry_alias: alias set on the registered version (e.g. ``champion``).
        example_size: how many items of the real batch to export and compare with.
    """

    def __init__(
        self,
        formats: tuple[str, ...] | list[str] = ("torchscript", "onnx"),
        opset: int = DEFAULT_OPSET,
        atol: float = 1e-4,
        use_best: bool = True,
        log_mlflow_model: bool = True,
        artifact_path: str = "model",
        registered_model_name: str | None = None,
        registry_alias: str | None = "champion",
        example_size: int = 4,
    ) -> None:
        unknown = set(formats) - {"torchscript", "onnx"}
        if unknown:
            raise ValueError(f"Expected `formats` among 'torchscript' and 'onnx', but got {sorted(unknown)}")
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
            state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
            module.load_state_dict(state)
            return module, f"best checkpoint {Path(best).name}"
        return module, "final weights"

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        example = _example_batch(trainer, self.example_size)
        if example is None:
            rank_zero_warn(
                "ModelExport: no data to export with (no validation or training dataloader); skipped"
            )
            return
        module, source = self._module_to_export(trainer, pl_module)
        example = example.detach().cpu().float()
        rich = [lg for lg in trainer.loggers if is_rich(lg)]
        out_dir = Path(rich[0].run_dir if rich else trainer.default_root_dir) / "export"
        metrics: dict[str, float] = {}
        traced = None
        if "torchscript" in self.formats:
            traced, diff = export_torchscript(module, example, out_dir / "model.ts")
            metrics["export/torchscript_max_abs_diff"] = diff
            self._check("TorchScript", diff)
        if "onnx" in self.formats:
            try:
                diff = export_onnx(module, example, out_dir / "model.onnx", self.opset)
                metrics["export/onnx_max_abs_diff"] = diff
                self._check("ONNX", diff)
            except ImportError as err:
                rank_zero_warn(
                    f"ModelExport: ONNX export needs `pip install lightning-dualtrack[export]` ({err}); skipped"
                )
        self.results = {"source": source, **metrics, "dir": str(out_dir)}
        rank_zero_info(f"ModelExport: exported {source} to {out_dir}: {metrics}")
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        for logger in rich:
            for name in ("model.ts", "model.onnx"):
                if (out_dir / name).exists():
                    call_rich("ModelExport", logger, "log_artifact", out_dir / name, "export")
            if self.log_mlflow_model and traced is not None:
                call_rich(
                    "ModelExport",
                    logger,
                    "log_model",
                    traced,
                    artifact_path=self.artifact_path,
                    signature="infer",
                    input_example=example[:2],
                    aliases=["best"] if "best" in source else [],
                    registered_model_name=self.registered_model_name,
                    description=f"{type(pl_module).__name__} ({source}), TorchScript; classes: {getattr(pl_module, 'class_names', '?')}",
                    registry_aliases=[self.registry_alias] if self.registry_alias else [],
                    metadata={
                        "source": source,
                        "class_names": list(getattr(pl_module, "class_names", []) or []),
                    },
                )

    def _check(self, what: str, diff: float) -> None:
        if not diff <= self.atol:  # also catches NaN
            rank_zero_warn(
                f"ModelExport: the {what} export DIFFERS from eager: max abs difference {diff:.3g} > atol {self.atol:g}. "
                "The file is logged for inspection; do not serve it before finding out why."
            )
