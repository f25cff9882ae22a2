"""The training process's system figures under the names MLflow's own monitor gives them.

``mlflow.enable_system_metrics_logging()`` logs ``system/cpu_utilization_percentage``,
``system/system_memory_usage_megabytes``, ``system/gpu_0_utilization_percentage``... (``mlflow/system_metrics/metrics``),
with a step that counts the samples; MLflow's UI shows every ``system/`` key on the run's *System metrics* tab. The
delivery service samples the same figures (:mod:`lightning_dualtrack.delivery.sysmetrics`, generic names); this maps
them, so that the tab reads as MLflow's own monitor's. Figures MLflow's monitor does not have (the training process
tree's CPU and memory, disk I/O, GPU temperature) are named in the same style.
"""

from __future__ import annotations

from collections.abc import Iterable

PREFIX = "system/"

#: generic figure -> MLflow's name (after ``system/``); the first eight are MLflow's own monitor's
NAMES = {
    "cpu_percent": "cpu_utilization_percentage",
    "memory_used_mb": "system_memory_usage_megabytes",
    "memory_percent": "system_memory_usage_percentage",
    "disk_used_mb": "disk_usage_megabytes",
    "disk_percent": "disk_usage_percentage",
    "disk_free_mb": "disk_available_megabytes",
    "net_recv_mb": "network_receive_megabytes",
    "net_sent_mb": "network_transmit_megabytes",
    "disk_read_mb": "disk_read_megabytes",
    "disk_write_mb": "disk_write_megabytes",
    "proc_cpu_percent": "process_cpu_utilization_percentage",
    "proc_rss_mb": "process_memory_rss_megabytes",
    "proc_threads": "process_threads",
    "proc_count": "process_count",
}

#: per GPU ``i``: generic figure -> MLflow's ``gpu_{i}_<name>``; the first five are MLflow's own monitor's
GPU_NAMES = {
    "utilization_percent": "utilization_percentage",
    "memory_used_mb": "memory_usage_megabytes",
    "memory_percent": "memory_usage_percentage",
    "power_w": "power_usage_watts",
    "power_percent": "power_usage_percentage",
    "temperature_c": "temperature_celsius",
    "proc_memory_mb": "process_memory_usage_megabytes",
}


def mlflow_name(figure: str) -> str | None:
    """The MLflow metric key of a generic figure (None: a figure this mapping does not know, left out).

    Example:
        >>> mlflow_name("cpu_percent"), mlflow_name("gpu/1/power_w")
        ('system/cpu_utilization_percentage', 'system/gpu_1_power_usage_watts')
    """
    if figure.startswith("gpu/"):
        _, index, name = (figure.split("/") + ["", ""])[:3]
        mapped = GPU_NAMES.get(name)
        return f"{PREFIX}gpu_{index}_{mapped}" if mapped and index.isdigit() else None
    mapped = NAMES.get(figure)
    return PREFIX + mapped if mapped else None


def system_metrics(samples: Iterable[tuple[int, int, dict[str, float]]]) -> list[tuple[str, float, int, int]]:
    """``(index, t_ms, figures)`` samples as MLflow metrics ``(key, value, timestamp, step)``: the step is the
    sample's index, as MLflow's monitor counts its samples."""
    out = []
    for index, t, figures in samples:
        for figure, value in figures.items():
            key = mlflow_name(figure)
            if key is not None:
                out.append((key, float(value), int(t), int(index)))
    return out
