"""System metrics sampled in the delivery service: the interval argument, the sampler's figures, MLflow's names, the
hand-over from the sampling thread to a backend (best effort, kept while the backend cannot take them) and W&B's own
monitor pointed at the training process."""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from lightning_dualtrack.core.journal import JournalWriter, now_ms
from lightning_dualtrack.delivery.rundelivery import RunDelivery, acquire_lock
from lightning_dualtrack.delivery.sysmetrics import (
    DEFAULT_INTERVAL_S,
    SystemMonitor,
    SystemSampler,
    system_interval,
)
from lightning_dualtrack.sinks.base import RunContext
from lightning_dualtrack.sinks.mlflow.system import mlflow_name, system_metrics
from tests.unit.delivery.fakes import FakeSink, make_run, metrics, run_worker

# MLflow 3.17's own monitor (mlflow/system_metrics/metrics/*.py), for GPU 0
MLFLOWS_OWN = {
    "cpu_percent": "system/cpu_utilization_percentage",
    "memory_used_mb": "system/system_memory_usage_megabytes",
    "memory_percent": "system/system_memory_usage_percentage",
    "disk_used_mb": "system/disk_usage_megabytes",
    "disk_percent": "system/disk_usage_percentage",
    "disk_free_mb": "system/disk_available_megabytes",
    "net_recv_mb": "system/network_receive_megabytes",
    "net_sent_mb": "system/network_transmit_megabytes",
    "gpu/0/utilization_percent": "system/gpu_0_utilization_percentage",
    "gpu/0/memory_used_mb": "system/gpu_0_memory_usage_megabytes",
    "gpu/0/memory_percent": "system/gpu_0_memory_usage_percentage",
    "gpu/0/power_w": "system/gpu_0_power_usage_watts",
    "gpu/0/power_percent": "system/gpu_0_power_usage_percentage",
}


@pytest.mark.parametrize(("value", "expected"), [(True, DEFAULT_INTERVAL_S), (False, None), (None, None), (0, None),
                                                 (2, 2.0), (30.5, 30.5)])
def test_system_metrics_argument_is_an_interval_or_off(value, expected) -> None:
    assert system_interval(value) == (expected, None)


def test_a_too_short_interval_is_raised_to_the_minimum_with_a_warning_naming_the_value() -> None:
    interval, warning = system_interval(0.01)
    assert interval == 0.5 and "system_metrics=0.01" in warning


@pytest.mark.parametrize("bad", ["fast", -1, math.nan, [5]])
def test_an_interval_that_is_not_one_is_an_error_naming_the_value(bad) -> None:
    with pytest.raises(ValueError, match=r"`system_metrics`.*" + repr(bad).replace("[", r"\[").replace("]", r"\]")):
        system_interval(bad)


def test_the_logger_writes_the_interval_into_run_json_and_warns_about_a_changed_one(tmp_path: Path) -> None:
    from lightning_dualtrack import DualTrackLogger, DualTrackWarning

    with pytest.warns(DualTrackWarning, match="system_metrics=0.2"):
        logger = DualTrackLogger(save_dir=tmp_path, deliver=False, log_system_info=False, wandb_mode="offline",
                                 system_metrics=0.2)
    logger.log_metrics({"x": 1.0}, step=0)
    logger.finalize("success")
    assert json.loads((logger.run_dir / "run.json").read_text())["system_metrics"] == 0.5
    off = DualTrackLogger(save_dir=tmp_path, deliver=False, log_system_info=False, wandb=False, system_metrics=False)
    off.log_metrics({"x": 1.0}, step=0)
    off.finalize("success")
    assert json.loads((off.run_dir / "run.json").read_text())["system_metrics"] is None
    with pytest.raises(ValueError, match="system_metrics=0.2"):
        DualTrackLogger(save_dir=tmp_path, deliver=False, strict=True, system_metrics=0.2)


def test_the_sampler_measures_the_machine_and_the_process_tree_it_watches() -> None:
    import psutil

    sampler = SystemSampler(os.getpid(), gpus=False, exclude_self=False)
    end = time.process_time() + 0.3
    while time.process_time() < end:  # 0.3 s of CPU in the watched process
        pass
    figures = sampler.sample()
    assert figures["proc_cpu_percent"] > 30  # 100 = one core busy for the whole interval
    tree = [psutil.Process(), *psutil.Process().children(recursive=True)]  # a test worker may have a server child
    assert figures["proc_rss_mb"] == pytest.approx(sum(p.memory_info().rss for p in tree) / 1e6, rel=0.2)
    assert figures["proc_count"] == pytest.approx(len(tree), abs=1)
    assert figures["proc_count"] >= 1 and figures["proc_threads"] >= 1
    assert 0 <= figures["cpu_percent"] <= 100
    memory = psutil.virtual_memory()  # MLflow's monitor: used / total, in 1e6-byte megabytes
    assert figures["memory_percent"] == pytest.approx(100 * memory.used / memory.total, abs=5)
    assert figures["memory_used_mb"] == pytest.approx(memory.used / 1e6, rel=0.2)
    assert figures["disk_free_mb"] == pytest.approx(psutil.disk_usage("/").free / 1e6, rel=0.05)
    assert figures["net_recv_mb"] >= 0 and figures["net_sent_mb"] >= 0  # since sampling began
    assert not [k for k in figures if k.startswith("gpu/")]


def test_the_delivery_service_does_not_count_itself_in_the_training_process_tree() -> None:
    sampler = SystemSampler(os.getpid(), gpus=False)  # this process is the "service": left out
    assert "proc_rss_mb" not in sampler.sample()


class _NvmlError(Exception):
    pass


def _fake_nvml(devices: int, power_fails: bool) -> types.ModuleType:
    nv = types.ModuleType("pynvml")
    nv.NVML_TEMPERATURE_GPU = 0
    nv.nvmlInit = lambda: None
    nv.nvmlDeviceGetCount = lambda: devices
    nv.nvmlDeviceGetHandleByIndex = lambda i: i
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=2e9 * (h + 1), total=8e9)
    nv.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=40 + h)

    def power(h):
        if power_fails and h == 1:
            raise _NvmlError("not supported")
        return 150_000

    nv.nvmlDeviceGetPowerUsage = power
    nv.nvmlDeviceGetEnforcedPowerLimit = lambda h: 300_000
    nv.nvmlDeviceGetTemperature = lambda h, sensor: 61
    nv.nvmlDeviceGetComputeRunningProcesses = lambda h: [types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=5e8),
                                                         types.SimpleNamespace(pid=1, usedGpuMemory=7e8)]
    return nv


def test_gpus_are_read_per_device_and_one_missing_reading_leaves_the_others(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(2, power_fails=True))
    sampler = SystemSampler(os.getpid(), exclude_self=False)
    figures = sampler.sample()
    assert sampler.note is None
    assert figures["gpu/0/utilization_percent"] == 40 and figures["gpu/1/utilization_percent"] == 41
    assert figures["gpu/0/memory_used_mb"] == 2000 and figures["gpu/1/memory_percent"] == 50
    assert figures["gpu/0/power_w"] == 150 and figures["gpu/0/power_percent"] == 50
    assert "gpu/1/power_w" not in figures  # that device has no power reading; its other figures are there
    assert figures["gpu/0/temperature_c"] == 61
    assert figures["gpu/0/proc_memory_mb"] == 500  # only what the watched tree holds


def test_without_nvidia_ml_py_there_are_no_gpu_figures_and_a_note_says_why(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    sampler = SystemSampler(os.getpid())
    assert "nvidia-ml-py" in sampler.note and not [k for k in sampler.sample() if k.startswith("gpu/")]


def test_mlflow_gets_its_own_monitors_names_with_the_sample_count_as_step() -> None:
    assert {figure: mlflow_name(figure) for figure in MLFLOWS_OWN} == MLFLOWS_OWN
    assert mlflow_name("gpu/3/temperature_c") == "system/gpu_3_temperature_celsius"
    assert mlflow_name("something_new") is None and mlflow_name("gpu/x/power_w") is None
    out = system_metrics([(7, 1000, {"cpu_percent": 12.5, "something_new": 1.0}), (8, 6000, {"cpu_percent": 20.0})])
    assert out == [("system/cpu_utilization_percentage", 12.5, 1000, 7), ("system/cpu_utilization_percentage", 20.0, 6000, 8)]


class _SystemSink(FakeSink):
    """A fake backend that records system samples; its first ``fail_first`` reports fail."""

    fail_first = 0

    def __init__(self, ctx: RunContext, **kwargs) -> None:
        super().__init__(ctx, **kwargs)
        self.system: list[tuple[int, int, dict[str, float]]] = []
        self.reports = 0

    def report_system(self, samples):
        self.reports += 1
        if self.reports <= self.fail_first:
            raise ConnectionError("server away")
        self.system.extend(samples)


def test_samples_reach_the_backend_and_a_failed_report_keeps_them_for_the_next(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, metrics(3))
    sink = _SystemSink(RunContext.load(run_dir))
    sink.fail_first = 1
    worker, messages = run_worker(run_dir, sink, sink_cls=_SystemSink)
    assert worker.wants_system
    for t in (1, 2):
        worker.offer_system(t, {"cpu_percent": float(t)})
    worker.sink = sink
    worker._report_system()  # the server is away: nothing lost
    assert sink.system == [] and any("system metrics not recorded for now" in m for m in messages)
    worker.offer_system(3, {"cpu_percent": 3.0})
    worker._report_system()
    assert sink.system == [(0, 1, {"cpu_percent": 1.0}), (1, 2, {"cpu_percent": 2.0}), (2, 3, {"cpu_percent": 3.0})]
    assert worker.state["system_samples"] == 3  # the next sample (this process or a later one) is number 3


def test_a_backend_without_report_system_is_never_offered_samples(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, metrics(1))
    worker, _ = run_worker(run_dir, FakeSink(RunContext.load(run_dir)), sink_cls=FakeSink)
    worker.offer_system(1, {"cpu_percent": 1.0})
    assert not worker.wants_system and not worker._system


class _Counting:
    note = None

    def __init__(self) -> None:
        self.n = 0

    def sample(self) -> dict[str, float]:
        self.n += 1
        return {"cpu_percent": float(self.n)}


def test_the_monitor_hands_samples_over_only_while_the_run_is_in_a_session() -> None:
    got: list[tuple[int, dict[str, float]]] = []
    active, stop = threading.Event(), threading.Event()
    sampler = _Counting()
    monitor = SystemMonitor(123, 0.01, [lambda t, f: got.append((t, f))], active=active.is_set, stop=stop,
                            sampler=lambda: sampler)
    monitor.start()
    time.sleep(0.1)
    assert got == [] and sampler.n > 0  # sampled (rates stay per interval) but not handed over
    active.set()
    time.sleep(0.1)
    stop.set()
    monitor.join(2)
    assert not monitor.is_alive() and len(got) >= 3 and all(t > 0 for t, _ in got)


def _follow(run_dir: Path, **kwargs) -> RunDelivery:
    return RunDelivery(run_dir, acquire_lock(run_dir), follow=True, system_pid=os.getpid(), log=lambda m: None, **kwargs)


def test_a_followed_run_is_in_a_session_until_its_end_record(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, metrics(1), end=False)
    (run_dir / "run.json").write_text(json.dumps({"run_id": "run1", "experiment_name": "x", "system_metrics": 5.0,
                                                  "wandb": {"enabled": False}}))
    delivery = _follow(run_dir)
    try:
        assert delivery.ctx.system_interval == 5.0 and delivery.in_session()
        journal = JournalWriter(run_dir)
        journal.append({"k": "end", "t": now_ms(), "status": "success"})
        journal.close()
        assert not delivery.in_session()
    finally:
        delivery.close()


def test_wandbs_own_monitor_watches_the_training_process_tree_and_is_off_in_sync(tmp_path: Path) -> None:
    from lightning_dualtrack.sinks.wandb.sink import WandbSink

    run_dir = make_run(tmp_path, [])
    settings = {"run_id": "run1", "experiment_name": "x", "system_metrics": 2.0, "wandb": {"enabled": True, "mode": "offline"}}
    ctx = RunContext(run_dir, settings, system_pid=4242)
    assert WandbSink(ctx)._stats_settings() == {"x_disable_stats": False, "x_disable_machine_info": False,
                                                 "x_stats_pid": 4242, "x_stats_track_process_tree": True,
                                                 "x_stats_sampling_interval": 2.0}
    assert WandbSink(RunContext(run_dir, settings))._stats_settings()["x_disable_stats"] is True  # dualtrack sync
    off = RunContext(run_dir, {**settings, "system_metrics": None}, system_pid=4242)
    assert WandbSink(off)._stats_settings()["x_disable_stats"] is True
