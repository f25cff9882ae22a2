"""Inference throughput of the CLIP HAR classifier across runtimes, precisions and batch sizes.

The model is a ``ClipHarModule`` (``forward(pixel_values) -> logits``) from a Lightning checkpoint
(``--ckpt``), a registered MLflow model (``--mlflow-model models:/name@alias``) or built fresh by name
(``--model dualtrack-tiny|ViT-B-16``, random init: speed does not depend on the weights' values).
One invocation measures, side by side:

- runtimes: ``eager``, ``eager_channels_last``, ``compile`` (``torch.compile``, ``dynamic=False``: one
  graph per batch size), ``pt2`` (``torch.export``'s ``ExportedProgram`` loaded back with ``torch.export.load``, what
  ``ModelExport`` writes), ``aoti`` (that program compiled ahead of time by AOTInductor, within ``--compile-timeout``),
  ``torchscript`` and ``onnxruntime`` (the package's own ``export_program`` / ``export_torchscript`` /
  ``export_onnx``; ONNX Runtime's CPU EP on CPU, its CUDA EP on a GPU when ``onnxruntime-gpu`` is
  installed), ``tensorrt`` (ONNX Runtime's TensorRT EP, when installed and on a GPU);
- precisions ``fp32``, ``bf16``, ``fp16`` where the device has them (weights and inputs cast; on CPU
  bf16 is measured for eager only and fp16 not at all); anything not measured is listed with the reason;
- two modes per batch size: ``model`` (pre-made input tensors already on the device: the model alone) and
  ``e2e`` (JPEG decode from bytes + the ``HarDataModule`` eval transform + stacking + host-to-device copy
  + the model), single process, no DataLoader workers.

Per row: images/s (batch / median latency over ``--repeats`` timed calls after ``--warmup`` calls; the calls of
all runtimes and modes at one batch size take turns in ``--rounds`` rounds, so that a drifting load on a shared
machine hits them alike),
latency p50/p95 of one batch, FLOPs per image, MFU (achieved FLOP/s over the device's peak from
``lightning.fabric.utilities.throughput.get_available_flops``; blank where it is unknown, e.g. any CPU),
the max abs difference of the logits to eager fp32 on the same images (the fp32 target is <= 1e-4) and
top-1 agreement with eager fp32. On CUDA every timed call is bracketed by ``torch.cuda.synchronize()``.

FLOPs per image: ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add; matmul, bmm,
addmm and convolution; element-wise ops, norms, softmax and GELU are not counted) over an eager fp32
forward of a meta-device copy (``ClipHarModule.measure_flops_per_batch``), where attention is
decomposed into counted matmuls. On real tensors in inference, ``nn.MultiheadAttention`` takes its fused
fast path (``aten._native_multi_head_attention``), which the counter does not know: the QKV and output
projections and the attention matmuls go uncounted (ViT-B-16: 22.5 instead of 35.1 GFLOPs). Both
counts are in the JSON; MFU uses the full one.

Outputs: ``<out>/inference_throughput_<model>_<device>_<time>.{csv,json,png}``, a Markdown table on
stdout, and (unless ``--no-log``) a ``DualTrackLogger`` run (W&B offline, MLflow at ``--tracking-uri``,
default ``sqlite:///<out>/mlflow.db``) with the table, the plot, the CSV/JSON and the environment.

Examples::

    python benchmarks/inference_throughput.py --quick                 # the test suite's smoke run (< 2 min, 2 cores)
    python benchmarks/inference_throughput.py --model ViT-B-16 --batch-sizes 1,8 \\
        --runtimes eager,torchscript,onnxruntime --repeats 5          # CPU: what the README reports
    python benchmarks/inference_throughput.py --model ViT-B-16 --device cuda --batch-sizes 1,64,256,1024
    python benchmarks/inference_throughput.py --ckpt dualtrack_runs/<run>/checkpoints/best.ckpt
    python benchmarks/inference_throughput.py --mlflow-model models:/clip_har@champion --tracking-uri http://mlflow:5000
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import datetime as _dt
import functools
import gc
import io
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RUNTIMES = ("eager", "eager_channels_last", "compile", "pt2", "aoti", "torchscript", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "bf16", "fp16")
MODES = ("model", "e2e")
MODEL_NAMES = ("dualtrack-tiny", "ViT-B-16")
BASELINE = ("eager", "fp32")
FP32_ATOL = 1e-4  # parity target for fp32 runtimes against eager fp32 (issue 5)
GPU_TARGET_IMAGES_PER_S = 10_000  # ViT-B-16, bf16, model-only, H100 (issue 5)
QUICK_SKIPS = {
    "compile": "--quick skips torch.compile (compilation takes minutes on 2 CPU cores)",
    "eager_channels_last": "--quick measures eager, .pt2, TorchScript and ONNX Runtime only",
    "aoti": "--quick skips AOTInductor (a C++ compile of the whole model: a minute or more on 2 CPU cores)",
}
QUICK = {
    "model": "dualtrack-tiny",
    "batch_sizes": "1,8",
    "runtimes": ",".join(RUNTIMES),  # the rest is listed as skipped, with the reason
    "precisions": "fp32,bf16",
    "warmup": 2,
    "repeats": 5,
}

COLUMNS = [
    "model",
    "device",
    "mode",
    "runtime",
    "precision",
    "batch",
    "images_per_s",
    "latency_p50_ms",
    "latency_p95_ms",
    "speedup_vs_eager_fp32",
    "flops_per_image",
    "achieved_tflops",
    "mfu",
    "max_abs_diff",
    "top1_agreement",
    "parity_ok",
    "warmup",
    "repeats",
]
_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    module: Any  # ClipHarModule, eval, fp32, CPU
    source: str
    weights: str
    info: dict[str, Any] = field(default_factory=dict)


def load_model(
    model_name: str | None = None,
    ckpt: str | None = None,
    mlflow_model: str | None = None,
    tracking_uri: str | None = None,
) -> LoadedModel:
    """The classifier from a checkpoint, a registered MLflow model, or fresh (random init) by name."""
    from lightning_dualtrack.har import ClipHarModule

    if sum(x is not None for x in (ckpt, mlflow_model)) > 1:
        raise ValueError(f"Expected at most one of `--ckpt` and `--mlflow-model`, but got {ckpt!r} and {mlflow_model!r}")
    if ckpt is not None:
        module = ClipHarModule.load_from_checkpoint(ckpt, map_location="cpu")
        loaded = LoadedModel(module, f"checkpoint {ckpt}", "trained (from the checkpoint)")
    elif mlflow_model is not None:
        loaded = _load_mlflow_model(mlflow_model, tracking_uri, model_name)
    else:
        name = model_name or "ViT-B-16"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the "random init" warning: said once, below, in the report
            module = ClipHarModule(name, pretrained=None, mode="zeroshot")
        loaded = LoadedModel(module, f"fresh {name}", "random init (no pretrained weights; speed does not depend on the values)")
    module = loaded.module.float().cpu().eval()
    size = module.preprocess_cfg["size"]
    loaded.info = {
        "model_name": module.hparams.model_name,
        "source": loaded.source,
        "weights": loaded.weights,
        "params": sum(p.numel() for p in module.parameters()),
        "num_classes": module.num_classes,
        "input_size": size,
        "preprocess": module.preprocess_cfg,
    }
    return loaded


def _load_mlflow_model(uri: str, tracking_uri: str | None, model_name: str | None) -> LoadedModel:
    """A registered model: a pickled ``ClipHarModule`` is used as is; a ``torch.export`` program (the pytorch
    flavor of what ``ModelExport`` registers) or a TorchScript export has its weights loaded into a fresh ``ClipHarModule`` of the same
    architecture, so that every runtime starts from the same eager module. The architecture comes from
    the source run's ``model_name`` param, else ``--model``."""
    import mlflow
    import mlflow.pytorch
    import torch

    from lightning_dualtrack.har import ClipHarModule

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    obj = mlflow.pytorch.load_model(uri, map_location="cpu")
    if isinstance(obj, ClipHarModule):
        return LoadedModel(obj, f"MLflow model {uri}", "trained (from the registry)")
    if not isinstance(obj, torch.nn.Module):
        raise TypeError(f"Expected the MLflow model {uri} to be a torch module, but got {type(obj).__name__}")
    state = obj.state_dict()
    params = _registry_run_params(uri)
    name = next((v for k, v in params.items() if k.split("/")[-1] == "model_name" and v in _known_models()), None)
    name = name or model_name
    if name is None:
        raise ValueError(
            f"The MLflow model {uri} is a {type(obj).__name__} without its architecture name: pass `--model`"
            f" (one of {MODEL_NAMES} or another open_clip name)"
        )
    head = state.get("net.head.weight")
    if head is None:
        raise ValueError(f"Expected a `net.head.weight` entry in the MLflow model {uri}'s weights, but found {sorted(state)[:5]}...")
    class_names = _class_names_param(params, int(head.shape[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = ClipHarModule(name, pretrained=None, mode="zeroshot", class_names=class_names)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"The MLflow model {uri}'s weights do not fit {name!r}: missing {missing[:5]}, unexpected {unexpected[:5]};"
            " pass the right `--model`"
        )
    size = module.preprocess_cfg["size"]
    x = torch.randn(2, 3, *((size, size) if isinstance(size, int) else size), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        try:
            obj.eval()
        except NotImplementedError:  # torch.export's module (the pt2 flavor) is always in inference form
            pass
        diff = float((obj(x).float() - module.eval()(x).float()).abs().max())
    if not diff <= FP32_ATOL:
        raise ValueError(f"The rebuilt {name!r} module differs from the MLflow model {uri} by {diff:.3g} (> {FP32_ATOL:g})")
    return LoadedModel(module, f"MLflow model {uri} ({type(obj).__name__} weights in a {name} ClipHarModule,"
                       f" max abs diff {diff:.1e} to the registered model)", "trained (from the registry)")


def _known_models() -> set[str]:
    import open_clip

    return set(open_clip.list_models())


def _registry_run_params(uri: str) -> dict[str, str]:
    """Params of the run that produced a ``models:/name@alias`` or ``models:/name/version`` model ({} if unknown)."""
    from mlflow.tracking import MlflowClient

    if not uri.startswith("models:/"):
        return {}
    client = MlflowClient()
    ref = uri[len("models:/"):]
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, number = ref.rsplit("/", 1)
            version = client.get_model_version(name, number)
        return dict(client.get_run(version.run_id).data.params) if version.run_id else {}
    except Exception:  # noqa: BLE001 - no source run: fall back to --model
        return {}


def _class_names_param(params: dict[str, str], num_classes: int) -> list[str]:
    for key, value in params.items():
        if key.split("/")[-1] == "class_names":
            with contextlib.suppress(ValueError, TypeError):
                names = json.loads(value)
                if isinstance(names, list) and len(names) == num_classes:
                    return [str(n) for n in names]
    return [f"class_{i}" for i in range(num_classes)]


def count_flops_per_image(module: Any) -> dict[str, Any]:
    """FLOPs of one image's eager fp32 forward: on a meta copy (full count) and on real tensors (what the
    counter sees through the fused attention fast path)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    full = int(module.measure_flops_per_batch(1, training=False))
    size = module.preprocess_cfg["size"]
    h, w = (size, size) if isinstance(size, int) else size
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module(torch.zeros(1, 3, h, w))
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return {
        "flops_per_image": full,
        "flops_per_image_real_tensors": int(counter.get_total_flops()),
        "flops_by_op_real_tensors": by_op,
        "counted": "torch.utils.flop_counter.FlopCounterMode, 2 FLOPs per multiply-add: mm/addmm/bmm/convolution"
                   " only (no element-wise, norm, softmax, GELU). `flops_per_image` (used for MFU) is counted on a"
                   " meta-device copy, where attention decomposes into counted matmuls; on real tensors"
                   " nn.MultiheadAttention's fused inference path (aten._native_multi_head_attention) is not counted,"
                   " so QKV/output projections and attention matmuls are missed (`flops_per_image_real_tensors`).",
    }


# --------------------------------------------------------------------------------------------------
# Data: JPEG bytes and the DataModule's eval preprocessing
# --------------------------------------------------------------------------------------------------


def make_jpegs(count: int, size: int, quality: int = 90, seed: int = 0) -> list[bytes]:
    """``count`` synthetic HAR-like images (``size`` px square) as JPEG bytes."""
    from PIL import Image

    from lightning_dualtrack.har.classes import HAR_CLASSES
    from lightning_dualtrack.har.synthetic import synthetic_image

    out = []
    for i in range(count):
        array = synthetic_image(i % len(HAR_CLASSES), i // len(HAR_CLASSES), len(HAR_CLASSES), size, seed=seed)
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def make_preprocess(preprocess_cfg: dict[str, Any]) -> Callable[[Sequence[bytes]], Any]:
    """JPEG bytes -> ``(B, 3, H, W)`` float32 CPU batch: decode as ``HarDataModule`` loads files, its eval
    transform (the model's open_clip transform), then stack (the DataLoader's collation)."""
    import torch
    from PIL import Image

    from lightning_dualtrack.har import HarDataModule

    dm = HarDataModule()
    dm.set_preprocess_cfg(preprocess_cfg)
    transform = dm.eval_transform

    def preprocess(jpegs: Sequence[bytes]) -> torch.Tensor:
        images = []
        for data in jpegs:
            with Image.open(io.BytesIO(data)) as image:
                images.append(transform(image.convert("RGB")))
        return torch.stack(images)

    return preprocess


# --------------------------------------------------------------------------------------------------
# Runtimes
# --------------------------------------------------------------------------------------------------


class Skip(Exception):
    """A runtime/precision that is not measured, with the reason."""


@dataclass
class Prepared:
    """``to_input(host fp32 batch) -> runtime input on the device``; ``fn(input) -> output``."""

    fn: Callable[[Any], Any]
    to_input: Callable[[Any], Any]
    notes: dict[str, Any] = field(default_factory=dict)
    warm_batch: Callable[[Any], None] | None = None  # a first call that may take long (compilation), time-limited


def precision_support(device: Any, precision: str) -> str | None:
    """None when ``device`` runs ``precision``; else why not."""
    import torch

    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            return f"{torch.cuda.get_device_name(device)} has no bf16"
        return None
    if precision == "bf16":
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return "this CPU has no native bf16 (oneDNN reports none: no AVX512-BF16/AMX)"
        return None
    if {"avx512_fp16", "amx_fp16"} & _cpu_flags():
        return "fp16 on CPU is not measured: bf16 is the CPU half precision measured here"
    return "this CPU has no native fp16 matmul (no avx512_fp16/amx_fp16 in /proc/cpuinfo): fp16 would be emulated"


def _cpu_flags() -> set[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def runtime_support(runtime: str, precision: str, device: Any) -> str | None:
    """None when the combination is measured; else why not (before any work is done)."""
    import importlib.util

    if runtime == "tensorrt":
        if importlib.util.find_spec("tensorrt") is None:
            return "TensorRT is not installed (no `tensorrt` package)"
        if device.type != "cuda":
            return "TensorRT needs a CUDA device"
        if precision == "bf16":
            return "bf16 is not enabled through ONNX Runtime's TensorRT EP here (fp32/fp16 only)"
        return None
    if runtime == "onnxruntime":
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed (`pip install lightning-dualtrack[export]`)"
        if precision != "fp32":
            return f"only the fp32 ONNX export is measured: a {precision} graph needs a separate conversion (not done here)"
        if device.type == "cuda":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                return ("ONNX Runtime has no CUDA EP here (`onnxruntime-gpu` not installed); its CPU EP would time the"
                        " host, not the device")
        return None
    if device.type == "cpu" and precision != "fp32" and runtime != "eager":
        return f"{precision} on CPU is measured for eager only (keeps the run short on a shared CPU)"
    return None


def _cast(module: Any, device: Any, precision: str) -> Any:
    import torch

    return copy.deepcopy(module).to(device=device, dtype=getattr(torch, _DTYPES[precision])).eval()


def _torch_to_input(device: Any, precision: str, channels_last: bool = False) -> Callable[[Any], Any]:
    import torch

    dtype = getattr(torch, _DTYPES[precision])

    def to_input(x: torch.Tensor) -> torch.Tensor:
        if device.type == "cuda":
            x = x.pin_memory().to(device, non_blocking=True)  # what a pinned DataLoader batch does
        x = x.to(dtype)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    return to_input


def prepare(runtime: str, precision: str, module: Any, device: Any, example: Any, workdir: Path, args: Any) -> Prepared:
    """Build ``runtime`` at ``precision`` from the fp32 CPU ``module``; ``example`` is a small host fp32 batch."""
    import torch

    from lightning_dualtrack.callbacks.export import export_onnx, export_program, export_torchscript

    if runtime in ("eager", "eager_channels_last"):
        channels_last = runtime == "eager_channels_last"
        model = _cast(module, device, precision)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        return Prepared(model, _torch_to_input(device, precision, channels_last),
                        {"channels_last": "ViT: only the patch-embedding convolution sees the layout"} if channels_last else {})
    if runtime == "compile":
        model = _cast(module, device, precision)
        compiled = torch.compile(model.net, mode=args.compile_mode, dynamic=False)
        notes: dict[str, Any] = {"compile_mode": args.compile_mode, "dynamic": False, "compile_s": {}}

        def warm_batch(x: Any) -> None:
            t0 = time.perf_counter()
            compiled(x)
            _sync(device)
            notes["compile_s"][int(x.shape[0])] = round(time.perf_counter() - t0, 2)

        return Prepared(compiled, _torch_to_input(device, precision), notes, warm_batch)
    if runtime in ("pt2", "aoti"):
        model = _cast(module, device, precision)
        to_input = _torch_to_input(device, precision)
        t0 = time.perf_counter()
        program, diff = export_program(model, to_input(example), workdir / f"model_{precision}.pt2")
        notes = {"export_max_abs_diff": diff, "export_s": round(time.perf_counter() - t0, 2)}
        if runtime == "pt2":
            notes["how"] = "torch.export.export (dynamic batch) -> torch.export.load(path).module()"
            return Prepared(program.module(), to_input, notes)
        t0 = time.perf_counter()
        try:
            with time_limit(args.compile_timeout):
                package = torch._inductor.aoti_compile_and_package(
                    program, package_path=str(workdir / f"model_{precision}_aoti.pt2"))
        except _TimeLimit as err:
            raise Skip(f"AOTInductor compile took {err} (--compile-timeout)") from None
        notes.update(how="torch._inductor.aoti_compile_and_package -> aoti_load_package",
                     compile_s=round(time.perf_counter() - t0, 2))
        return Prepared(torch._inductor.aoti_load_package(package), to_input, notes)
    if runtime == "torchscript":
        model = _cast(module, device, precision)
        x = _torch_to_input(device, precision)(example)
        traced, diff = export_torchscript(model, x, workdir / f"model_{precision}.ts")
        return Prepared(traced, _torch_to_input(device, precision), {"export_max_abs_diff": diff, "how": "torch.jit.trace"})
    if runtime in ("onnxruntime", "tensorrt"):
        import onnxruntime as ort

        path = workdir / "model.onnx"
        notes = {}
        if not path.exists():
            t0 = time.perf_counter()
            notes["export_max_abs_diff"] = export_onnx(copy.deepcopy(module), example, path)
            notes["export_s"] = round(time.perf_counter() - t0, 2)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        if device.type == "cpu":
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            notes["providers"] = session.get_providers()
            return Prepared(lambda a: session.run(["logits"], {"pixel_values": a})[0],
                            lambda x: x.detach().cpu().float().contiguous().numpy(), notes)
        index = device.index or 0
        if runtime == "tensorrt":
            shape = "x".join(str(s) for s in example.shape[1:])
            top = max(args.batch_sizes)
            provider: tuple[str, dict[str, Any]] = ("TensorrtExecutionProvider", {
                "device_id": index,
                "trt_fp16_enable": precision == "fp16",
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(workdir / "trt_cache"),
                "trt_profile_min_shapes": f"pixel_values:1x{shape}",
                "trt_profile_opt_shapes": f"pixel_values:{top}x{shape}",
                "trt_profile_max_shapes": f"pixel_values:{top}x{shape}",
            })
        else:
            provider = ("CUDAExecutionProvider", {"device_id": index})
        session = ort.InferenceSession(str(path), options, providers=[provider, "CPUExecutionProvider"])
        notes["providers"] = session.get_providers()
        if session.get_providers()[0] != provider[0]:
            raise Skip(f"ONNX Runtime fell back to {session.get_providers()} instead of {provider[0]}")

        def run_bound(x: torch.Tensor) -> Any:
            binding = session.io_binding()
            binding.bind_input("pixel_values", "cuda", index, np.float32, tuple(x.shape), x.data_ptr())
            binding.bind_output("logits", "cuda", index)
            torch.cuda.current_stream(device).synchronize()  # ORT runs on its own stream: the input must be ready
            session.run_with_iobinding(binding)
            return binding

        return Prepared(run_bound, _torch_to_input(device, "fp32"), notes)
    raise ValueError(f"Expected a runtime among {RUNTIMES}, but got {runtime!r}")


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_numpy(out: Any) -> np.ndarray:
    if hasattr(out, "copy_outputs_to_cpu"):  # an ONNX Runtime IOBinding
        return np.asarray(out.copy_outputs_to_cpu()[0], dtype=np.float32)
    if isinstance(out, np.ndarray):
        return out.astype(np.float32, copy=False)
    return out.detach().float().cpu().numpy()


def time_calls(call: Callable[[], Any], warmup: int, repeats: int, device: Any) -> tuple[list[float], Any]:
    """Seconds per call of ``repeats`` calls after ``warmup`` calls, each bracketed by a device sync; and the last output."""
    out = None
    for _ in range(warmup):
        out = call()
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = call()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times, out


class _TimeLimit(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise ``_TimeLimit`` in the main thread after ``seconds`` (SIGALRM; no limit elsewhere)."""
    if not seconds or not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _TimeLimit(f"longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def summarise(latencies: list[float], batch: int) -> dict[str, float]:
    p50, p95 = np.percentile(np.asarray(latencies), [50, 95])
    return {"images_per_s": batch / p50, "latency_p50_ms": 1e3 * p50, "latency_p95_ms": 1e3 * p95}


def parity(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Max abs difference and top-1 agreement of ``out`` against ``ref`` (same images)."""
    return float(np.abs(out - ref).max()), float((out.argmax(-1) == ref.argmax(-1)).mean())


def peak_flops(device: Any, precision: str) -> float | None:
    """The device's peak FLOP/s for ``precision`` (Lightning's table; None where unknown, e.g. any CPU)."""
    import torch

    if device.type != "cuda":
        return None
    from lightning.fabric.utilities.throughput import get_available_flops

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = get_available_flops(device, getattr(torch, _DTYPES[precision]))
    return float(value) if value else None


def run_benchmark(args: Any, loaded: LoadedModel, device: Any, workdir: Path, log: Callable[[str], None] = print
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Every requested (runtime, precision) is prepared once; then, per batch size, every (runtime, mode) pair gets
    its warm-up and its timed calls are spread over ``args.rounds`` round-robin rounds (a drifting load on a shared
    machine then hits every pair alike). Returns the rows, the skipped combinations (with reasons) and notes."""
    import torch

    module = loaded.module
    flops = loaded.info["flops"]["flops_per_image"]
    top = max(args.batch_sizes)
    jpegs = make_jpegs(top, args.jpeg_size, args.jpeg_quality)
    preprocess = make_preprocess(module.preprocess_cfg)
    host = {b: preprocess(jpegs[:b]) for b in args.batch_sizes}
    example = host[top][:2] if top >= 2 else preprocess(jpegs[:1] * 2)  # >= 2: a dynamic batch axis in ONNX
    skipped: list[dict[str, Any]] = []
    notes: dict[str, Any] = {}
    prepared: dict[tuple[str, str], Prepared] = {}

    def drop(key: tuple[str, str], reason: str) -> None:
        prepared.pop(key, None)
        skipped.append({"runtime": key[0], "precision": key[1], "reason": reason})
        log(f"# {key[0]}/{key[1]}: skipped: {reason}")
        gc.collect()

    combos = [(r, p) for r in args.runtimes for p in args.precisions]
    combos.sort(key=lambda rp: rp != BASELINE)  # the baseline first: its outputs are the parity reference
    if BASELINE not in combos:
        combos.insert(0, BASELINE)
    for key in combos:
        runtime, precision = key
        reason = (runtime_support(runtime, precision, device) if runtime == "tensorrt" else None) \
            or precision_support(device, precision) or runtime_support(runtime, precision, device)
        if reason is None and args.quick:
            reason = QUICK_SKIPS.get(runtime)
        if reason is not None:
            skipped.append({"runtime": runtime, "precision": precision, "reason": reason})
            continue
        t0 = time.perf_counter()
        try:
            prepared[key] = prepare(runtime, precision, module, device, example, workdir, args)
        except Skip as err:
            drop(key, str(err))
            continue
        except Exception as err:  # noqa: BLE001 - one runtime failing to build must not end the run
            if key == BASELINE:
                raise
            drop(key, f"failed to build: {_one_line(err)}")
            continue
        notes[f"{runtime}/{precision}"] = {**prepared[key].notes, "prepare_s": round(time.perf_counter() - t0, 2)}
        log(f"# {runtime}/{precision}: ready in {notes[f'{runtime}/{precision}']['prepare_s']} s")

    rows: list[dict[str, Any]] = []
    with torch.inference_mode():
        for batch in args.batch_sizes:
            inputs: dict[tuple[str, str], Any] = {}
            for key, prep in list(prepared.items()):
                try:
                    inputs[key] = prep.to_input(host[batch])
                    if prep.warm_batch is not None:
                        with time_limit(args.compile_timeout):
                            prep.warm_batch(inputs[key])
                        log(f"# {key[0]}/{key[1]}: batch {batch} compiled in {prep.notes['compile_s'][batch]} s")
                except _TimeLimit as err:
                    drop(key, f"compiling batch {batch} took {err} (--compile-timeout)")
                except Exception as err:  # noqa: BLE001
                    if key == BASELINE:
                        raise
                    drop(key, f"failed at batch {batch}: {_one_line(err)}")
            # every (runtime, mode) pair of this batch size takes turns, so that a drifting load hits all alike
            calls: dict[tuple[tuple[str, str], str], Callable[[], Any]] = {}
            for key, prep in prepared.items():
                for mode in args.modes:
                    if mode == "model":
                        calls[key, mode] = functools.partial(prep.fn, inputs[key])
                    else:
                        calls[key, mode] = functools.partial(_end_to_end, prep.fn, prep.to_input, preprocess, jpegs[:batch])
            latencies: dict[tuple[tuple[str, str], str], list[float]] = {pair: [] for pair in calls}
            outputs: dict[tuple[tuple[str, str], str], Any] = {}
            per_round = -(-args.repeats // args.rounds)
            for round_index in range(args.rounds):
                for pair in list(calls):
                    if pair not in calls:  # its runtime failed in another mode this round
                        continue
                    key, mode = pair
                    n = min(per_round, args.repeats - len(latencies[pair]))
                    if n <= 0:
                        continue
                    try:
                        times, outputs[pair] = time_calls(calls[pair], _warmup(args, mode) if round_index == 0 else 0,
                                                          n, device)
                    except Exception as err:  # noqa: BLE001
                        if key == BASELINE:
                            raise
                        for other in [p for p in calls if p[0] == key]:
                            calls.pop(other)  # its rows of smaller batches stay: the reason names the batch
                        drop(key, f"failed at batch {batch} ({mode}): {_one_line(err)}")
                        continue
                    latencies[pair].extend(times)
            for (key, mode) in calls:
                diff, agree = parity(to_numpy(outputs[key, mode]), to_numpy(outputs[BASELINE, mode]))
                rows.append(make_row(args, loaded, device, mode, key, batch, latencies[key, mode], diff, agree, flops,
                                     _warmup(args, mode)))
                r = rows[-1]
                log(f"  {mode:5s} {key[0] + '/' + key[1]:28s} b={batch:<4d} {r['images_per_s']:10.2f} img/s  "
                    f"p50 {r['latency_p50_ms']:9.2f} ms  p95 {r['latency_p95_ms']:9.2f} ms  diff {diff:.2e}")
    prepared.clear()
    gc.collect()
    if "compile" in args.runtimes:
        torch._dynamo.reset()
    add_speedups(rows)
    order = {k: i for i, k in enumerate(combos)}
    rows.sort(key=lambda r: (MODES.index(r["mode"]), order[(r["runtime"], r["precision"])], r["batch"]))
    return rows, skipped, notes


def _warmup(args: Any, mode: str) -> int:
    """Untimed calls before a (runtime, mode)'s first timed call: the runtime is warm after its first mode."""
    return args.warmup if mode == args.modes[0] else 1


def _end_to_end(fn: Callable[[Any], Any], to_input: Callable[[Any], Any],
                preprocess: Callable[[Sequence[bytes]], Any], jpegs: Sequence[bytes]) -> Any:
    return fn(to_input(preprocess(jpegs)))


def make_row(args: Any, loaded: LoadedModel, device: Any, mode: str, key: tuple[str, str], batch: int,
             latencies: list[float], diff: float, agree: float, flops: int, warmup: int) -> dict[str, Any]:
    runtime, precision = key
    row: dict[str, Any] = {
        "model": loaded.info["model_name"],
        "device": args.device_label,
        "mode": mode,
        "runtime": runtime,
        "precision": precision,
        "batch": batch,
        **summarise(latencies, batch),
        "flops_per_image": flops,
        "warmup": warmup,
        "repeats": len(latencies),
        "max_abs_diff": diff,
        "top1_agreement": agree,
        "parity_ok": (diff <= FP32_ATOL) if precision == "fp32" else None,
    }
    achieved = row["images_per_s"] * flops
    peak = peak_flops(device, precision)
    row["achieved_tflops"] = achieved / 1e12
    row["mfu"] = achieved / peak if peak else None
    return row


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """``speedup_vs_eager_fp32``: images/s over eager fp32's at the same mode and batch."""
    base = {(r["mode"], r["batch"]): r["images_per_s"] for r in rows if (r["runtime"], r["precision"]) == BASELINE}
    for r in rows:
        b = base.get((r["mode"], r["batch"]))
        r["speedup_vs_eager_fp32"] = r["images_per_s"] / b if b else None


def headline(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per mode and batch: the fastest row and the fastest fp32 row, with their speed-up over eager fp32."""
    out = []
    for mode in MODES:
        for batch in sorted({r["batch"] for r in rows if r["mode"] == mode}):
            group = [r for r in rows if r["mode"] == mode and r["batch"] == batch]
            best = max(group, key=lambda r: r["images_per_s"])
            fp32 = [r for r in group if r["precision"] == "fp32"]
            best32 = max(fp32, key=lambda r: r["images_per_s"]) if fp32 else None
            out.append({
                "mode": mode,
                "batch": batch,
                "best": f"{best['runtime']} {best['precision']}",
                "best_images_per_s": best["images_per_s"],
                "best_speedup": best["speedup_vs_eager_fp32"],
                "best_fp32": f"{best32['runtime']} fp32" if best32 else None,
                "best_fp32_speedup": best32["speedup_vs_eager_fp32"] if best32 else None,
            })
    return out


# --------------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "NO"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ["mode", "runtime", "precision", "batch", "images/s", "p50 ms", "p95 ms", "× eager fp32",
            "GFLOPs/img", "MFU", "max abs diff", "top-1 agree"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
    for r in rows:
        cells = [
            r["mode"], r["runtime"], r["precision"], str(r["batch"]),
            _fmt(r["images_per_s"], ",.1f" if r["images_per_s"] >= 10 else ".2f"),
            _fmt(r["latency_p50_ms"], ".1f"), _fmt(r["latency_p95_ms"], ".1f"),
            _fmt(r["speedup_vs_eager_fp32"], ".2f"), _fmt(r["flops_per_image"] / 1e9, ".3g"),
            _fmt(r["mfu"], ".1%"), _fmt(r["max_abs_diff"], ".1e"), _fmt(r["top1_agreement"], ".0%"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], title: str) -> Any:
    """images/s against batch size, one line per runtime/precision; a panel per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False)
    labels = {"model": "model only (input on the device)", "e2e": "end to end (JPEG decode + preprocessing + copy + model)"}
    for ax, mode in zip(axes[0], modes, strict=True):
        series = sorted({(r["runtime"], r["precision"]) for r in rows if r["mode"] == mode},
                        key=lambda rp: (RUNTIMES.index(rp[0]), PRECISIONS.index(rp[1])))
        for runtime, precision in series:
            pts = sorted((r["batch"], r["images_per_s"]) for r in rows
                         if r["mode"] == mode and (r["runtime"], r["precision"]) == (runtime, precision))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{runtime} {precision}",
                    linestyle="--" if precision != "fp32" else "-")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["batch"] for r in rows}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("batch size")
        ax.set_ylabel("images/s")
        ax.set_ylim(bottom=0)
        ax.set_title(labels[mode], fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def environment(device: Any, threads: int) -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("torch", "torchvision", "lightning", "open_clip_torch", "onnx", "onnxscript", "onnxruntime",
                 "onnxruntime-gpu", "tensorrt", "numpy", "pillow", "mlflow", "wandb", "lightning-dualtrack"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    env: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "cpu": cpu,
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": threads,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    return env


def log_run(report: dict[str, Any], rows: list[dict[str, Any]], fig: Any, files: list[Path], args: Any) -> dict[str, Any]:
    """One DualTrackLogger run: environment and settings as params, the table, the plot, the files."""
    from lightning_dualtrack import DualTrackLogger

    out = Path(args.out).resolve()
    tracking_uri = args.tracking_uri or f"sqlite:///{out / 'mlflow.db'}"
    run_name = f"inference-{report['model']['model_name']}-{report['environment']['device']}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with DualTrackLogger(experiment_name=args.experiment_name, run_name=run_name, tracking_uri=tracking_uri,
                             wandb_mode="offline", save_dir=str(out / "dualtrack_runs"), finalize_timeout=120.0,
                             tags={"benchmark": "inference_throughput"}) as run:
            env = dict(report["environment"])
            versions = env.pop("versions")
            run.log_params({
                "env": env,
                "versions": versions,
                "model": {k: v for k, v in report["model"].items() if k != "flops"},
                "flops_per_image": report["model"]["flops"]["flops_per_image"],
                "settings": report["settings"],
            })
            run.log_table("inference/throughput", COLUMNS, [[r.get(c) for c in COLUMNS] for r in rows])
            run.log_figure(fig, "inference/throughput")
            for r in rows:
                run.log_metrics({f"inference/{r['mode']}/{r['runtime']}_{r['precision']}/images_per_s": r["images_per_s"]},
                                step=int(r["batch"]))
            for path in files:
                run.log_artifact(path, "benchmark")
            info = {"run_id": run.run_id, "run_dir": str(run.run_dir), "tracking_uri": tracking_uri}
        info["mlflow_run_id"] = run.mlflow_run_id
    return info


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def _csv_list(text: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"Expected `{what}` among {list(allowed)}, but got {text!r}")
    return items


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"Expected `--batch-sizes` as positive integers like 1,8,32, but got {text!r}")
    return sizes


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("model (default: a fresh ViT-B-16)")
    src.add_argument("--model", default=None,
                     help=f"open_clip model name, e.g. {' or '.join(MODEL_NAMES)} (random init; also the architecture"
                          " of a TorchScript --mlflow-model when its run does not name it)")
    src.add_argument("--ckpt", default=None, help="a ClipHarModule Lightning checkpoint")
    src.add_argument("--mlflow-model", default=None, help="a registered MLflow model URI, e.g. models:/clip_har@champion")
    src.add_argument("--tracking-uri", default=None,
                     help="MLflow tracking URI for --mlflow-model and for the benchmark run (default: sqlite in --out)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"comma list among {RUNTIMES}")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help=f"comma list among {PRECISIONS}")
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--modes", default=",".join(MODES), help="model (input pre-made on the device), e2e (JPEG bytes in)")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed calls per runtime and batch size before the first mode's timed calls (1 before the next mode's)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per row")
    p.add_argument("--rounds", type=int, default=3,
                   help="the timed calls are spread over this many round-robin rounds across the runtimes and modes")
    p.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime intra-op threads (default: usable cores)")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode")
    p.add_argument("--compile-timeout", type=float, default=300.0, help="seconds per batch size before compile is skipped")
    p.add_argument("--jpeg-size", type=int, default=256, help="side of the synthetic JPEGs decoded in e2e")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--save-plot", default=None, help="also copy the PNG here (e.g. docs/img/inference_cpu.png)")
    p.add_argument("--no-log", action="store_true", help="do not log a DualTrackLogger run")
    p.add_argument("--experiment-name", default="inference_throughput")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: dualtrack-tiny, batch 1,8, eager/pt2/torchscript/onnxruntime fp32 + eager bf16, few repeats")
    args = p.parse_args(argv)
    if args.quick:
        explicit = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]) if a.startswith("--")}
        for key, value in QUICK.items():
            if f"--{key.replace('_', '-')}" in explicit or (key == "model" and (args.ckpt or args.mlflow_model)):
                continue  # what the command line says wins
            setattr(args, key, value)
    try:
        args.runtimes = _csv_list(args.runtimes, RUNTIMES, "--runtimes")
        args.precisions = _csv_list(args.precisions, PRECISIONS, "--precisions")
        args.modes = _csv_list(args.modes, MODES, "--modes")
        args.batch_sizes = _batch_sizes(args.batch_sizes) if isinstance(args.batch_sizes, str) else args.batch_sizes
    except argparse.ArgumentTypeError as err:
        p.error(str(err))
    if args.warmup < 1 or args.repeats < 1 or args.rounds < 1:
        p.error(f"Expected `--warmup`, `--repeats` and `--rounds` of at least 1, but got {args.warmup}, {args.repeats}"
                f" and {args.rounds}")
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")  # exporter and deprecation chatter; failures are reported as skips
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # open_clip's "No pretrained weights loaded" (said in the report)
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here", file=sys.stderr)
        return 2
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    started = time.perf_counter()
    env = environment(device, args.threads)
    args.device_label = "cuda" if device.type == "cuda" else "cpu"

    loaded = load_model(args.model, args.ckpt, args.mlflow_model, args.tracking_uri)
    loaded.info["flops"] = count_flops_per_image(loaded.module)
    name = loaded.info["model_name"]
    print(f"# {name} from {loaded.source}: {loaded.weights}")
    print(f"# {env['device_name']} ({env['device']}), {env['cpus_usable']} usable cores, {args.threads} threads;"
          f" torch {env['versions']['torch']}, onnxruntime {env['versions']['onnxruntime']}; {env['date_utc']}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="inference_throughput_") as tmp:
        rows, skipped, notes = run_benchmark(args, loaded, device, Path(tmp))
    env["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = out / f"inference_throughput_{name}_{args.device_label}_{stamp}"
    command = "python benchmarks/inference_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    heads = headline(rows)
    fp32_parity = {f"{r['runtime']} b={r['batch']} {r['mode']}": r["max_abs_diff"]
                   for r in rows if r["precision"] == "fp32" and (r["runtime"], r["precision"]) != BASELINE}
    report: dict[str, Any] = {
        "command": command.strip(),
        "environment": env,
        "model": loaded.info,
        "settings": {k: getattr(args, k) for k in ("device", "runtimes", "precisions", "batch_sizes", "modes", "warmup",
                                                    "repeats", "rounds", "threads", "compile_mode", "compile_timeout", "jpeg_size",
                                                    "jpeg_quality", "quick")},
        "columns": COLUMNS,
        "results": rows,
        "skipped": skipped,
        "runtime_notes": notes,
        "headline": heads,
        "parity": {"fp32_atol": FP32_ATOL, "fp32_max_abs_diff": fp32_parity,
                   "fp32_ok": all(v <= FP32_ATOL for v in fp32_parity.values())},
        "wall_s": None,
        "logged_run": None,
    }
    title = (f"{name} ({loaded.weights.split(' (')[0]}), {env['device_name']}, {args.threads} threads, "
             f"torch {env['versions']['torch']}, {env['date_utc'][:10]}")
    fig = plot(rows, title) if rows else None
    png = base.with_suffix(".png")
    if fig is not None:
        fig.savefig(png, dpi=110)
        if args.save_plot:
            Path(args.save_plot).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, args.save_plot)
    with open(base.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    base.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))

    print()
    print(f"Inference throughput: {name} ({loaded.weights}); {env['device_name']}, {args.threads} threads;"
          f" median of {args.repeats} timed calls (after {args.warmup} warm-up) in {args.rounds} round-robin"
          f" rounds; {env['date_utc']}")
    print()
    print(markdown_table(rows))
    print()
    flops = loaded.info["flops"]
    print(f"FLOPs/image {flops['flops_per_image'] / 1e9:.3g} G (FlopCounterMode on a meta copy; on real tensors the"
          f" fused attention path hides part: {flops['flops_per_image_real_tensors'] / 1e9:.3g} G). MFU: "
          + ("against get_available_flops' peak." if device.type == "cuda" else "blank: no peak FLOP/s known for a CPU."))
    for h in heads:
        line = f"{h['mode']:5s} b={h['batch']}: best {h['best']} {h['best_images_per_s']:.4g} img/s = {_fmt(h['best_speedup'], '.2f')}x eager fp32"
        if h["best_fp32"]:
            line += f"; best fp32 {h['best_fp32']} = {_fmt(h['best_fp32_speedup'], '.2f')}x"
        print(line)
    if fp32_parity:
        worst = max(fp32_parity.values())
        print(f"fp32 parity vs eager fp32: max abs diff {worst:.2e} (target <= {FP32_ATOL:g}) "
              + ("PASS" if report["parity"]["fp32_ok"] else "FAIL"))
    if skipped:
        print("\nnot measured:")
        for s in skipped:
            print(f"- {s['runtime']} {s['precision']}: {s['reason']}")

    files = [base.with_suffix(".csv"), base.with_suffix(".json")] + ([png] if fig is not None else [])
    if not args.no_log and fig is not None:
        try:
            report["logged_run"] = log_run(report, rows, fig, files, args)
            base.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
            logged = report["logged_run"]
            mlflow_state = logged["mlflow_run_id"] or f"still pending: `dualtrack sync {logged['run_dir']}`"
            print(f"\nlogged DualTrackLogger run {logged['run_id']} (MLflow {mlflow_state}, {logged['tracking_uri']};"
                  f" W&B offline in {logged['run_dir']})")
        except Exception as err:  # noqa: BLE001 - results are on disk; logging is a convenience
            print(f"\nlogging the run failed: {_one_line(err)}", file=sys.stderr)
    print("\nwrote " + ", ".join(str(p) for p in files))
    print(f"command: {report['command']}  ({report['wall_s']} s)")
    return 0 if report["parity"]["fp32_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
