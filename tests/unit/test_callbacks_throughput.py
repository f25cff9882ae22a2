import logging
import sys
import time
import types

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

import lightning_dualtrack.callbacks.throughput as throughput_module
from lightning_dualtrack.callbacks import ThroughputMonitor
from lightning_dualtrack.callbacks.throughput import _batch_size, _NvmlReader, _percentiles
from tests.recording_logger import PlainLogger, TinyClassifier

SLEEP_S = 0.02


class SlowEval(TinyClassifier):
    """Validation/test steps that take at least SLEEP_S, so latencies have a known floor."""

    def validation_step(self, batch, batch_idx):
        time.sleep(SLEEP_S)
        return super().validation_step(batch, batch_idx)

    def test_step(self, batch, batch_idx):
        time.sleep(SLEEP_S)
        return super().test_step(batch, batch_idx)


def _trainer(logger, callback, **kwargs):
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    defaults.update(kwargs)
    return Trainer(**defaults)


@pytest.fixture(scope="module")
def fitted():
    model = SlowEval(num_classes=4, n_train=16 * 12, n_val=16 * 4, batch_size=16)
    model.flops_per_batch = 2_000_000
    logger = PlainLogger()
    monitor = ThroughputMonitor(window_size=3, log_every_n_steps=2, system_interval_s=0.0)
    with pytest.MonkeyPatch.context() as patch:  # pretend the CPU has a known peak, for MFU
        patch.setattr(throughput_module, "get_available_flops", lambda device, dtype: 1e12)
        _trainer(logger, monitor, max_epochs=2, log_every_n_steps=1).fit(model)
    return types.SimpleNamespace(model=model, logger=logger, monitor=monitor)


def test_training_rates_are_consistent_and_start_after_the_window_fills(fitted):
    samples = fitted.logger.metric_values("perf/train/samples_per_sec")
    batches = dict(fitted.logger.metric_values("perf/train/batches_per_sec"))
    # logged every 2 batches; the window (3 updates, one at t=0) is full from the 2nd logging point on
    assert [step for step, _ in samples][:3] == [4, 6, 8]
    assert len(samples) == 2 * (12 // 2) - 1
    for step, value in samples:
        assert value > 0 and value / batches[step] == pytest.approx(16)


def test_mfu_is_flops_rate_over_device_peak(fitted):
    flops = dict(fitted.logger.metric_values("perf/train/flops_per_sec"))
    batches = dict(fitted.logger.metric_values("perf/train/batches_per_sec"))
    for step, mfu in fitted.logger.metric_values("perf/train/mfu"):
        assert flops[step] == pytest.approx(2_000_000 * batches[step])
        assert mfu == pytest.approx(flops[step] / 1e12)


def test_epoch_rate_excludes_validation_time():
    class SlowValidation(TinyClassifier):
        def training_step(self, batch, batch_idx):
            time.sleep(0.01)
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            time.sleep(0.1)
            return super().validation_step(batch, batch_idx)

    logger = PlainLogger()
    model = SlowValidation(num_classes=4, n_train=64, n_val=48, batch_size=16)
    trainer = _trainer(logger, ThroughputMonitor(system_interval_s=None), max_epochs=1)
    start = time.perf_counter()
    trainer.fit(model)
    fit_wall = time.perf_counter() - start
    ((_, epoch_time),) = logger.metric_values("perf/train/epoch_time_s")
    ((_, rate),) = logger.metric_values("perf/train/epoch_samples_per_sec")
    # 4 training batches of >= 10 ms; the 3 validation batches (>= 300 ms) inside the epoch do not count
    assert 0.04 <= epoch_time <= fit_wall - 0.3
    assert rate == pytest.approx(64 / epoch_time)


def test_validation_latency_percentiles(fitted):
    p50 = fitted.logger.metric_values("perf/val/latency_p50_ms")
    p95 = dict(fitted.logger.metric_values("perf/val/latency_p95_ms"))
    ips = dict(fitted.logger.metric_values("perf/val/images_per_sec"))
    assert [step for step, _ in p50] == [12, 24]
    for step, value in p50:
        assert SLEEP_S * 1000 <= value <= p95[step] < 2000
        assert ips[step] <= 16 / SLEEP_S
    assert fitted.logger.metric_values("perf/val/batches")[0][1] == 4.0


def test_memory_and_system_metrics(fitted):
    logged = fitted.logger.all_metrics()
    assert logged["perf/peak_rss_mb"] > 10
    assert 0 <= logged["system/cpu_percent"] <= 100
    assert 0 < logged["system/ram_percent"] <= 100
    assert 0 < logged["system/process_rss_gb"] * 1024 <= logged["perf/peak_rss_mb"] * 1.01
    assert "perf/cuda_peak_allocated_mb" not in logged  # CPU run
    assert not any(key.startswith("system/gpu") for key in logged)


def test_test_stage_and_system_interval():
    logger = PlainLogger()
    monitor = ThroughputMonitor(system_interval_s=3600, warmup_batches=1)
    _trainer(logger, monitor).test(SlowEval(num_classes=4, n_val=48, batch_size=16), verbose=False)
    ((_, p50),) = logger.metric_values("perf/test/latency_p50_ms")
    assert p50 >= SLEEP_S * 1000
    assert logger.metric_values("perf/test/batches") == [(0, 3.0)]
    # one sample at most per interval: the first check only
    assert len(logger.metric_values("system/cpu_percent")) == 1


def test_no_latency_measurement_still_reports_wall_rate():
    logger = PlainLogger()
    monitor = ThroughputMonitor(measure_latency=False, system_interval_s=None)
    _trainer(logger, monitor).validate(SlowEval(num_classes=4, n_val=32, batch_size=16), verbose=False)
    logged = logger.all_metrics()
    assert (
        "perf/val/latency_p50_ms" not in logged and 0 < logged["perf/val/wall_images_per_sec"] <= 16 / SLEEP_S
    )
    assert not any(key.startswith("system/") for key in logged)


def test_sanity_check_is_not_measured():
    logger = PlainLogger()
    _trainer(
        logger,
        ThroughputMonitor(system_interval_s=None),
        num_sanity_val_steps=2,
        max_steps=1,
        limit_val_batches=0,
    ).fit(SlowEval(num_classes=4, n_val=32))
    assert logger.metric_values("perf/val/latency_p50_ms") == []


def test_percentiles_match_numpy():
    values = [5.0, 1.0, 3.0, 2.0, 10.0, 7.0]
    assert _percentiles(values, (50, 95)) == pytest.approx(np.percentile(values, [50, 95]).tolist())


def test_batch_size_inference():
    assert _batch_size((torch.zeros(7, 3), torch.zeros(7))) == 7
    assert _batch_size({"meta": "x", "pixel_values": torch.zeros(5, 3, 2, 2)}) == 5
    assert _batch_size("no tensors") == 1


def test_missing_nvml_is_one_info_message(monkeypatch, caplog):
    monkeypatch.setattr(throughput_module, "_PYNVML_AVAILABLE", False)
    with caplog.at_level(logging.INFO):
        assert _NvmlReader.open(torch.device("cuda", 0)) is None
    assert [r.getMessage() for r in caplog.records if "GPU utilisation" in r.getMessage()] == [
        "ThroughputMonitor: GPU utilisation is not logged: False"
    ]
    assert _NvmlReader.open(torch.device("cpu")) is None


def test_nvml_reader_reports_utilisation_and_memory(monkeypatch):
    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: None
    fake.nvmlDeviceGetHandleByUUID = lambda uuid: ("uuid", uuid)
    fake.nvmlDeviceGetHandleByIndex = lambda index: ("index", index)
    fake.nvmlDeviceGetUtilizationRates = lambda handle: types.SimpleNamespace(gpu=37, memory=12)
    fake.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(used=2 * 1024**3, total=8 * 1024**3)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(throughput_module, "_PYNVML_AVAILABLE", True)
    reader = _NvmlReader.open(torch.device("cuda", 0))  # no CUDA here: falls back to the NVML index
    assert reader.handle == ("index", 0)
    assert reader.read() == {
        "system/gpu_utilization_percent": 37.0,
        "system/gpu_memory_used_gb": 2.0,
        "system/gpu_memory_percent": 25.0,
    }


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="window_size"):
        ThroughputMonitor(window_size=1)
    with pytest.raises(ValueError, match="stages"):
        ThroughputMonitor(stages=("predict",))
