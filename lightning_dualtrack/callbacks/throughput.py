"""Throughput, latency, MFU, peak memory and system metrics, logged under ``perf/`` and ``system/``.

Built on :class:`lightning.fabric.utilities.throughput.Throughput` and ``get_available_flops``.

What is measured, and when the GPU is waited for (only where a measurement needs it):

* **Training** (``perf/train/...``): a clock that runs during the training loop and pauses during
  validation. Every ``log_every_n_steps`` batches the callback synchronises CUDA once, feeds the
  cumulative batch/sample counts to ``Throughput`` (window of ``window_size`` such updates, so short
  runs report after ``window_size - 1`` logging intervals) and logs ``samples_per_sec`` (all ranks),
  ``batches_per_sec`` (per rank), and, when the module has ``flops_per_batch`` (per device, forward
  and backward, e.g. from ``measure_flops``) ``flops_per_sec`` and, when Lightning knows the device's
  peak for the precision in use, ``mfu``. At the end of each epoch: ``epoch_samples_per_sec`` and
  ``epoch_time_s`` (one more sync), so a run shorter than the window still reports.
* **Validation / test** (``perf/val/...``, ``perf/test/...``): time of each batch from the batch-start
  to the batch-end hook (forward plus the step's callbacks; data loading excluded), with a CUDA sync
  at both ends when ``measure_latency`` is on (default) and the device is CUDA; never on CPU. Logged
  at the end of the loop: ``latency_p50_ms``, ``latency_p95_ms``, ``latency_mean_ms`` (the first
  ``warmup_batches`` left out when there are more), ``images_per_sec`` (samples / summed batch time),
  ``wall_images_per_sec`` (samples / loop wall time, data loading included) and ``mfu`` when the
  module has ``eval_flops_per_batch``. The sanity check is not measured.
* **Memory** (``perf/...``): ``cuda_peak_allocated_mb`` / ``cuda_peak_reserved_mb`` on CUDA,
  ``peak_rss_mb`` of the process everywhere (Unix).
* **System** (``system/...``), at most every ``system_interval_s`` seconds, checked from the batch
  hooks (no thread): ``cpu_percent`` (machine), ``process_cpu_percent``, ``ram_used_gb``,
  ``ram_percent``, ``process_rss_gb``; on CUDA with ``nvidia-ml-py`` installed ``gpu_utilization_percent``,
  ``gpu_memory_used_gb``, ``gpu_memory_percent`` of this process's device (skipped with one info
  message when the package is missing).

Each rank measures its own work; rank 0 logs, through ``log_metrics`` on every logger, at
``trainer.global_step``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psutil
import torch
from lightning.fabric.utilities.throughput import Throughput, get_available_flops
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from lightning_dualtrack.core.imports import _PYNVML_AVAILABLE

__all__ = ["ThroughputMonitor"]

_GB = 1024**3
_MB = 1024**2


def _find_batch_size(batch: Any) -> int | None:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else None
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            size = _find_batch_size(item)
            if size is not None:
                return size
    return None


def _batch_size(batch: Any) -> int:
    """Length of the first tensor found in the batch (depth first through mappings and sequences), or 1."""
    return _find_batch_size(batch) or 1


def _compute_dtype(trainer: Trainer) -> torch.dtype | str:
    try:  # private, but it is the mapping Lightning's own ThroughputMonitor uses
        from lightning.pytorch.callbacks.throughput_monitor import _plugin_to_compute_dtype

        return _plugin_to_compute_dtype(trainer.precision_plugin)
    except Exception:  # noqa: BLE001 - an unknown plugin only costs the MFU figure
        return torch.float32


def _percentiles(values: Sequence[float], qs: Sequence[float]) -> list[float]:
    """Linear-interpolation percentiles (numpy's default method), without numpy."""
    ordered = sorted(values)
    out = []
    for q in qs:
        position = (len(ordered) - 1) * q / 100
        low, high = math.floor(position), math.ceil(position)
        out.append(ordered[low] + (ordered[high] - ordered[low]) * (position - low))
    return out


class _NvmlReader:
    """GPU utilisation and memory of one device through NVML (``nvidia-ml-py``)."""

    def __init__(self, nvml: Any, handle: Any) -> None:
        self.nvml = nvml
        self.handle = handle

    @classmethod
    def open(cls, device: torch.device) -> _NvmlReader | None:
        if device.type != "cuda":
            return None
        if not _PYNVML_AVAILABLE:
            rank_zero_info(f"ThroughputMonitor: GPU utilisation is not logged: {_PYNVML_AVAILABLE}")
            return None
        try:
            import pynvml

            pynvml.nvmlInit()
            index = device.index if device.index is not None else torch.cuda.current_device()
            try:  # NVML numbers devices without CUDA_VISIBLE_DEVICES: find ours by UUID
                uuid = str(torch.cuda.get_device_properties(index).uuid)
                handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
            except Exception:  # noqa: BLE001
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            return cls(pynvml, handle)
        except Exception as error:  # noqa: BLE001 - no NVML driver, no GPU metrics
            rank_zero_info(f"ThroughputMonitor: GPU utilisation is not logged: NVML failed: {error}")
            return None

    def read(self) -> dict[str, float]:
        utilization = self.nvml.nvmlDeviceGetUtilizationRates(self.handle)
        memory = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
        return {
            "system/gpu_utilization_percent": float(utilization.gpu),
            "system/gpu_memory_used_gb": memory.used / _GB,
            "system/gpu_memory_percent": 100.0 * memory.used / memory.total if memory.total else 0.0,
        }


class _EvalTimer:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.samples = 0
        self.batch_start: float | None = None
        self.loop_start = time.perf_counter()


class ThroughputMonitor(Callback):
    """Training throughput, evaluation latency, MFU, peak memory and system metrics in every logger.

    Args:
        batch_size_fn: ``batch -> number of samples``; by default the length of the batch's first tensor.
        window_size: number of logging points in ``Throughput``'s rolling window (at least 2).
        log_every_n_steps: training batches between throughput logs; default ``trainer.log_every_n_steps``.
        measure_latency: time each validation/test batch (a CUDA sync at both ends on CUDA).
        warmup_batches: evaluation batches left out of the latency figures when there are more.
        system_interval_s: least seconds between two ``system/`` samples (``None``: never).
        stages: which of ``"train"``, ``"val"``, ``"test"`` to measure.

    Example:
        >>> monitor = ThroughputMonitor(window_size=3, system_interval_s=30)
        >>> monitor.window_size
        3
    """

    def __init__(
        self,
        batch_size_fn: Callable[[Any], int] | None = None,
        *,
        window_size: int = 3,
        log_every_n_steps: int | None = None,
        measure_latency: bool = True,
        warmup_batches: int = 1,
        system_interval_s: float | None = 10.0,
        stages: Sequence[str] = ("train", "val", "test"),
    ) -> None:
        super().__init__()
        if window_size < 2:
            raise ValueError(f"Expected argument `window_size` to be at least 2, but got {window_size}")
        if log_every_n_steps is not None and log_every_n_steps < 1:
            raise ValueError(
                f"Expected argument `log_every_n_steps` to be positive, but got {log_every_n_steps}"
            )
        unknown = set(stages) - {"train", "val", "test"}
        if unknown:
            raise ValueError(
                f"Expected argument `stages` within ('train', 'val', 'test'), but got {sorted(unknown)}"
            )
        self.batch_size_fn = batch_size_fn or _batch_size
        self.window_size = window_size
        self.log_every_n_steps = log_every_n_steps
        self.measure_latency = measure_latency
        self.warmup_batches = warmup_batches
        self.system_interval_s = system_interval_s
        self.stages = tuple(stages)
        self.available_flops: float | None = None
        self._cuda = False
        self._device: torch.device | None = None
        self._throughput: Throughput | None = None
        self._nvml: _NvmlReader | None = None
        self._nvml_checked = False
        self._last_system: float | None = None
        self._process = psutil.Process()
        self._eval: dict[str, _EvalTimer] = {}
        self._reset_train()

    def _reset_train(self) -> None:
        self._train_elapsed = 0.0
        self._train_resumed_at: float | None = None
        self._paused_for_val = False
        self._batches = 0
        self._samples = 0
        self._batches_at_update = 0
        self._epoch_batches = 0
        self._epoch_samples = 0
        self._epoch_elapsed_start = 0.0

    # ----------------------------------------------------------------- helpers
    def _sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize(self._device)

    def _log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if not metrics or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def _memory(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self._cuda:
            metrics["perf/cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated(self._device) / _MB
            metrics["perf/cuda_peak_reserved_mb"] = torch.cuda.max_memory_reserved(self._device) / _MB
        try:
            import resource

            # ru_maxrss is in KiB on Linux
            metrics["perf/peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        except ImportError:  # Windows
            pass
        return metrics

    def _system(self) -> dict[str, float]:
        memory = psutil.virtual_memory()
        metrics = {
            "system/cpu_percent": psutil.cpu_percent(interval=None),
            "system/process_cpu_percent": self._process.cpu_percent(interval=None),
            "system/ram_used_gb": (memory.total - memory.available) / _GB,
            "system/ram_percent": memory.percent,
            "system/process_rss_gb": self._process.memory_info().rss / _GB,
        }
        if self._nvml is not None:
            try:
                metrics.update(self._nvml.read())
            except Exception as error:  # noqa: BLE001
                rank_zero_info(f"ThroughputMonitor: GPU metrics stopped: {error}")
                self._nvml = None
        return metrics

    def _maybe_log_system(self, trainer: Trainer, force: bool = False) -> None:
        if self.system_interval_s is None or not trainer.is_global_zero:
            return
        now = time.monotonic()
        if not force and self._last_system is not None and now - self._last_system < self.system_interval_s:
            return
        self._last_system = now
        self._log(trainer, self._system())

    def _train_time(self) -> float:
        if self._train_resumed_at is None:
            return self._train_elapsed
        return self._train_elapsed + time.perf_counter() - self._train_resumed_at

    def _pause_train_clock(self) -> None:
        if self._train_resumed_at is not None:
            self._sync()
            self._train_elapsed += time.perf_counter() - self._train_resumed_at
            self._train_resumed_at = None

    def _resume_train_clock(self) -> None:
        if self._train_resumed_at is None:
            self._train_resumed_at = time.perf_counter()

    # ----------------------------------------------------------------- setup
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._device = trainer.strategy.root_device
        self._cuda = self._device.type == "cuda"
        self.available_flops = get_available_flops(self._device, _compute_dtype(trainer))
        if not self._nvml_checked:
            self._nvml_checked = True
            self._nvml = _NvmlReader.open(self._device)
        psutil.cpu_percent(interval=None)  # the first call only starts the measurement interval
        self._process.cpu_percent(interval=None)

    # ----------------------------------------------------------------- training
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if "train" not in self.stages:
            return
        self._reset_train()
        self._throughput = Throughput(
            available_flops=self.available_flops, world_size=trainer.world_size, window_size=self.window_size
        )
        self._sync()
        has_flops = getattr(pl_module, "flops_per_batch", None) is not None
        self._throughput.update(time=0.0, batches=0, samples=0, flops=0 if has_flops else None)
        self._resume_train_clock()
        self._maybe_log_system(trainer, force=True)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_batches = 0
        self._epoch_samples = 0
        self._epoch_elapsed_start = self._train_time()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._throughput is None:
            return
        size = self.batch_size_fn(batch)
        self._batches += 1
        self._samples += size
        self._epoch_batches += 1
        self._epoch_samples += size
        every = self.log_every_n_steps or trainer.log_every_n_steps or 50
        if self._batches - self._batches_at_update >= every:
            self._sync()
            flops_per_batch = getattr(pl_module, "flops_per_batch", None)
            new_batches = self._batches - self._batches_at_update
            self._throughput.update(
                time=self._train_time(),
                batches=self._batches,
                samples=self._samples,
                flops=None if flops_per_batch is None else int(flops_per_batch * new_batches),
            )
            self._batches_at_update = self._batches
            self._log(trainer, {**self._train_rates(), **self._memory()})
        self._maybe_log_system(trainer)

    def _train_rates(self) -> dict[str, float]:
        assert self._throughput is not None
        computed = self._throughput.compute()
        sep = self._throughput.separator
        names = {
            "samples_per_sec": computed.get("samples_per_sec", computed.get(f"device{sep}samples_per_sec")),
            "batches_per_sec": computed.get(f"device{sep}batches_per_sec"),
            "flops_per_sec": computed.get(f"device{sep}flops_per_sec"),
            "mfu": computed.get(f"device{sep}mfu"),
        }
        return {f"perf/train/{name}": float(value) for name, value in names.items() if value is not None}

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._throughput is None or self._epoch_batches == 0:
            return
        self._sync()
        elapsed = self._train_time() - self._epoch_elapsed_start
        metrics = {"perf/train/epoch_time_s": elapsed}
        if elapsed > 0:
            metrics["perf/train/epoch_samples_per_sec"] = self._epoch_samples * trainer.world_size / elapsed
        self._log(trainer, {**metrics, **self._memory()})

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._pause_train_clock()
        self._throughput = None
        self._maybe_log_system(trainer, force=True)

    # ----------------------------------------------------------------- evaluation
    def _eval_start(self, stage: str, trainer: Trainer) -> None:
        if stage == "val" and self._train_resumed_at is not None:
            self._pause_train_clock()  # validation inside fit must not count as training time
            self._paused_for_val = True
        if stage not in self.stages or trainer.sanity_checking:
            return
        self._sync()
        self._eval[stage] = _EvalTimer()

    def _eval_batch_start(self, stage: str) -> None:
        timer = self._eval.get(stage)
        if timer is not None and self.measure_latency:
            self._sync()
            timer.batch_start = time.perf_counter()

    def _eval_batch_end(self, stage: str, trainer: Trainer, batch: Any) -> None:
        timer = self._eval.get(stage)
        if timer is None:
            return
        if self.measure_latency and timer.batch_start is not None:
            self._sync()
            timer.latencies.append(time.perf_counter() - timer.batch_start)
            timer.batch_start = None
        timer.samples += self.batch_size_fn(batch)
        self._maybe_log_system(trainer)

    def _eval_end(self, stage: str, trainer: Trainer, pl_module: LightningModule) -> None:
        timer = self._eval.pop(stage, None)
        if stage == "val" and self._paused_for_val:
            self._paused_for_val = False
            self._resume_train_clock()
        if timer is None:
            return
        self._sync()
        wall = time.perf_counter() - timer.loop_start
        metrics: dict[str, float] = {}
        if wall > 0 and timer.samples:
            metrics[f"perf/{stage}/wall_images_per_sec"] = timer.samples / wall
        latencies = timer.latencies
        if latencies:
            total = sum(latencies)
            if total > 0:
                metrics[f"perf/{stage}/images_per_sec"] = timer.samples / total
            flops = getattr(pl_module, "eval_flops_per_batch", None)
            if flops is not None and self.available_flops and total > 0:
                metrics[f"perf/{stage}/mfu"] = flops * len(latencies) / total / self.available_flops
            measured = latencies[self.warmup_batches :] if len(latencies) > self.warmup_batches else latencies
            p50, p95 = _percentiles(measured, (50, 95))
            metrics[f"perf/{stage}/latency_p50_ms"] = 1000 * p50
            metrics[f"perf/{stage}/latency_p95_ms"] = 1000 * p95
            metrics[f"perf/{stage}/latency_mean_ms"] = 1000 * sum(measured) / len(measured)
        metrics[f"perf/{stage}/batches"] = float(len(latencies))
        self._log(trainer, {**metrics, **self._memory()})

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_start("val", trainer)

    def on_validation_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_start("val")

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_end("val", trainer, batch)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_end("val", trainer, pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_start("test", trainer)

    def on_test_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_start("test")

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_end("test", trainer, batch)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_end("test", trainer, pl_module)
