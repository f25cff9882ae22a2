"""System metrics of the training process, sampled in the delivery service, never on the training thread.

:class:`SystemSampler` reads the machine and the training process tree (psutil; NVIDIA GPUs through NVML when
``nvidia-ml-py`` is installed) and answers one flat mapping of *generic* figure names. Each sink names them as its
backend does (MLflow: ``system/cpu_utilization_percentage``...; see ``sinks/mlflow/system.py``); a sink whose
backend has its own monitor (W&B) ignores them. The vocabulary:

=========================  ============================================================================
``cpu_percent``            the machine's CPU utilization since the previous sample, 0-100
``memory_used_mb``         the machine's used memory, MB (1e6 bytes, as MLflow's monitor counts)
``memory_percent``         used / total memory, 0-100
``disk_used_mb``           used space of the root file system (``/``), MB; ``disk_free_mb`` the free space
``disk_percent``           used / total space of the root file system, 0-100
``disk_read_mb``           the machine's disk reads since sampling began, MB; ``disk_write_mb`` the writes
``net_recv_mb``            the machine's network bytes received since sampling began, MB; ``net_sent_mb`` sent
``proc_cpu_percent``       CPU used by the training process tree (the training process and its children, the
                           delivery service excluded) since the previous sample; 100 = one core
``proc_rss_mb``            the tree's resident memory, MB; ``proc_threads`` its threads; ``proc_count`` its processes
``gpu/<i>/<figure>``       per NVML device ``i``: ``utilization_percent``, ``memory_used_mb``, ``memory_percent``,
                           ``power_w``, ``power_percent`` (of the enforced limit), ``temperature_c``,
                           ``proc_memory_mb`` (what the training process tree holds on it)
=========================  ============================================================================

:class:`SystemMonitor` is the thread of one run's delivery that samples every ``interval`` seconds while the run is in
a session and hands each sample to the run's workers (which send it with their next requests, best effort).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

DEFAULT_INTERVAL_S = 5.0  # MLflow's monitor samples every 10 s and W&B's every 15 s; runs of minutes want more points
MIN_INTERVAL_S = 0.5  # W&B's monitor refuses less than 0.1 s; below half a second the figures are mostly noise
_MB = 1e6


def system_interval(value: Any) -> tuple[float | None, str | None]:
    """The logger's ``system_metrics`` argument as a sampling interval in seconds (None: off), and a warning when the
    value was changed. ``True``: every :data:`DEFAULT_INTERVAL_S` s; ``False``/``None``/``0``: off; a number: that
    many seconds (at least :data:`MIN_INTERVAL_S`). Anything else raises ``ValueError`` naming the value.

    Example:
        >>> system_interval(True), system_interval(False), system_interval(2)
        ((5.0, None), (None, None), (2.0, None))
    """
    if value is None or value is False:
        return None, None
    if value is True:
        return DEFAULT_INTERVAL_S, None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and value >= 0:
        if value == 0:
            return None, None
        if value < MIN_INTERVAL_S:
            return MIN_INTERVAL_S, (f"system_metrics={value!r}: sampling more often than every {MIN_INTERVAL_S:g} s "
                                    f"measures mostly noise; sampling every {MIN_INTERVAL_S:g} s")
        return float(value), None
    raise ValueError(f"Expected argument `system_metrics` to be True, False or a sampling interval in seconds (> 0), "
                     f"but got {value!r}")


class _Nvml:
    """NVIDIA GPUs through ``nvidia-ml-py`` (imported as ``pynvml``); None from :meth:`open` when unavailable."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]

    @classmethod
    def open(cls) -> tuple[_Nvml | None, str | None]:
        try:
            import pynvml
        except ImportError:
            return None, "no GPU figures: nvidia-ml-py is not installed (pip install nvidia-ml-py)"
        try:
            pynvml.nvmlInit()
            return cls(pynvml), None
        except Exception as err:  # noqa: BLE001 - no driver, no device: no GPU figures
            return None, f"no GPU figures: NVML failed ({type(err).__name__}: {err})"

    def read(self, pids: set[int]) -> dict[str, float]:
        nv, out = self.nvml, {}
        for i, handle in enumerate(self.handles):
            base = f"gpu/{i}/"
            # each reading on its own: a device without power readings still reports its memory
            try:
                mem = nv.nvmlDeviceGetMemoryInfo(handle)
                out[base + "memory_used_mb"] = mem.used / _MB
                out[base + "memory_percent"] = 100.0 * mem.used / mem.total if mem.total else 0.0
            except Exception:  # noqa: BLE001
                pass
            try:
                out[base + "utilization_percent"] = float(nv.nvmlDeviceGetUtilizationRates(handle).gpu)
            except Exception:  # noqa: BLE001
                pass
            try:
                power = nv.nvmlDeviceGetPowerUsage(handle)
                out[base + "power_w"] = power / 1000.0
                limit = nv.nvmlDeviceGetEnforcedPowerLimit(handle)
                if limit:
                    out[base + "power_percent"] = 100.0 * power / limit
            except Exception:  # noqa: BLE001
                pass
            try:
                out[base + "temperature_c"] = float(nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU))
            except Exception:  # noqa: BLE001
                pass
            try:
                procs = nv.nvmlDeviceGetComputeRunningProcesses(handle)
                used = sum(p.usedGpuMemory or 0 for p in procs if p.pid in pids)
                out[base + "proc_memory_mb"] = used / _MB
            except Exception:  # noqa: BLE001
                pass
        return out


class SystemSampler:
    """One sample per :meth:`sample` call: the generic figures (module docstring) of the machine and of the process
    tree rooted at ``pid`` (this process and its children left out: delivery is not training).

    Args:
        pid: the training process (None: machine figures only).
        disk_path: the file system whose space is reported (MLflow's and W&B's monitors report ``/``).
        gpus: read NVIDIA GPUs when NVML is available (False: never try).
        exclude_self: leave this process and its children out of the tree (the delivery service is not training).
    """

    def __init__(self, pid: int | None, disk_path: str = os.sep, gpus: bool = True, exclude_self: bool = True) -> None:
        import psutil

        self.psutil = psutil
        self.pid = pid
        self.disk_path = disk_path
        self.note: str | None = None  # why a group of figures is missing (said once by the caller)
        self.nvml: _Nvml | None = None
        if gpus:
            self.nvml, self.note = _Nvml.open()
        self._own = os.getpid() if exclude_self else None
        self._cpu = psutil.cpu_times()
        self._net0 = self._counters(psutil.net_io_counters)
        self._disk0 = self._counters(psutil.disk_io_counters)
        self._proc_cpu: dict[tuple[int, float], float] = {}  # (pid, create time) -> CPU seconds at the last sample
        self._t = time.monotonic()
        self._tree()  # the first CPU reading of the tree: the next sample measures from here

    @staticmethod
    def _counters(read: Callable[[], Any]) -> tuple[float, float] | None:
        try:
            c = read()
        except Exception:  # noqa: BLE001 - not available in this container
            return None
        if c is None:
            return None
        return (float(getattr(c, "bytes_recv", getattr(c, "read_bytes", 0))),
                float(getattr(c, "bytes_sent", getattr(c, "write_bytes", 0))))

    def _cpu_percent(self) -> float:
        now = self.psutil.cpu_times()
        before, self._cpu = self._cpu, now
        total = sum(now) - sum(before)
        idle = (getattr(now, "idle", 0) + getattr(now, "iowait", 0)) - (getattr(before, "idle", 0) + getattr(before, "iowait", 0))
        return max(0.0, min(100.0, 100.0 * (total - idle) / total)) if total > 0 else 0.0

    def _tree(self) -> tuple[list[Any], float]:
        """The training process tree (without this process and its children) and its CPU seconds since the last
        call (processes born since count from zero, those gone since are not counted)."""
        if self.pid is None:
            return [], 0.0
        ps = self.psutil
        try:
            root = ps.Process(self.pid)
            members = [root, *root.children(recursive=True)]
        except ps.Error:
            return [], 0.0
        own: set[int] = set()
        if self._own is not None:
            own.add(self._own)
            try:
                own.update(c.pid for c in ps.Process(self._own).children(recursive=True))
            except ps.Error:
                pass
        tree, used, seen = [], 0.0, {}
        for proc in members:
            if proc.pid in own:
                continue
            try:
                with proc.oneshot():
                    key = (proc.pid, proc.create_time())
                    times = proc.cpu_times()
                    total = times.user + times.system
            except ps.Error:
                continue
            used += max(0.0, total - self._proc_cpu.get(key, 0.0))
            seen[key] = total
            tree.append(proc)
        self._proc_cpu = seen
        return tree, used

    def sample(self) -> dict[str, float]:
        ps = self.psutil
        now = time.monotonic()
        elapsed, self._t = max(now - self._t, 1e-6), now
        out: dict[str, float] = {"cpu_percent": self._cpu_percent()}
        mem = ps.virtual_memory()
        out["memory_used_mb"] = mem.used / _MB
        out["memory_percent"] = 100.0 * mem.used / mem.total if mem.total else 0.0
        try:
            disk = ps.disk_usage(self.disk_path)
            out["disk_used_mb"], out["disk_free_mb"], out["disk_percent"] = disk.used / _MB, disk.free / _MB, disk.percent
        except OSError:
            pass
        for names, read, base in ((("net_recv_mb", "net_sent_mb"), ps.net_io_counters, self._net0),
                                  (("disk_read_mb", "disk_write_mb"), ps.disk_io_counters, self._disk0)):
            counters = self._counters(read)
            if counters is not None and base is not None:
                out[names[0]] = max(0.0, counters[0] - base[0]) / _MB
                out[names[1]] = max(0.0, counters[1] - base[1]) / _MB
        tree, cpu_s = self._tree()
        pids: set[int] = set()
        if tree:
            rss = threads = 0
            for proc in tree:
                try:
                    with proc.oneshot():
                        rss += proc.memory_info().rss
                        threads += proc.num_threads()
                    pids.add(proc.pid)
                except ps.Error:
                    continue
            out["proc_cpu_percent"] = 100.0 * cpu_s / elapsed
            out["proc_rss_mb"] = rss / _MB
            out["proc_threads"] = float(threads)
            out["proc_count"] = float(len(pids))
        if self.nvml is not None:
            out.update(self.nvml.read(pids))
        return out


class SystemMonitor(threading.Thread):
    """Every ``interval`` seconds, while ``active()`` (the run is in a session), one sample handed to each ``feed``
    as ``feed(t_ms, figures)``. Ends with ``stop`` or once ``running()`` is False (the run's workers are done); a
    sampler that fails is reported once through ``log``."""

    def __init__(self, pid: int | None, interval: float, feeds: list[Callable[[int, dict[str, float]], None]],
                 active: Callable[[], bool], stop: threading.Event, log: Callable[[str], None] = print,
                 running: Callable[[], bool] = lambda: True, name: str = "dualtrack-system-metrics",
                 sampler: Callable[[], Any] | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self.pid, self.interval, self.feeds, self.active, self.stop = pid, interval, feeds, active, stop
        self.running = running
        self.log = log
        self._make = sampler or (lambda: SystemSampler(pid))
        self.samples = 0

    def run(self) -> None:
        try:
            sampler = self._make()
        except Exception as err:  # noqa: BLE001 - psutil missing or refused: no system metrics, delivery goes on
            self.log(f"[dualtrack] system metrics are off: {type(err).__name__}: {err}")
            return
        if getattr(sampler, "note", None):
            self.log(f"[dualtrack] system metrics: {sampler.note}")
        while not self.stop.wait(self.interval) and self.running():
            try:
                figures = sampler.sample()  # also while not active: rates stay measured over one interval
            except Exception as err:  # noqa: BLE001
                self.log(f"[dualtrack] system metrics stopped: {type(err).__name__}: {err}")
                return
            if not self.active():
                continue
            t = int(time.time() * 1000)
            self.samples += 1
            for feed in self.feeds:
                feed(t, figures)
