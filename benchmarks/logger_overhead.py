"""Logging overhead of DualTrackLogger against Lightning's stock MLflow and W&B loggers.

A tiny Trainer (a small MLP on random tensors, CPU) logs K metrics every step for N steps, once per
configuration, against a real ``mlflow server`` (sqlite) on loopback and W&B in offline mode:

- ``noop``          a ``Logger`` whose methods do nothing: the floor (Lightning's own logging cost);
- ``mlflow``        stock ``MLFlowLogger(tracking_uri=server)``;
- ``mlflow_async``  stock ``MLFlowLogger(..., synchronous=False)``;
- ``wandb``         stock ``WandbLogger(offline=True)``;
- ``mlflow+wandb``  both stock loggers in a list;
- ``dualtrack``     ``DualTrackLogger`` with both backends.
- ``dualtrack_journal`` (only when asked for) ``DualTrackLogger`` without its delivery process: the
  training thread's own cost, to tell it from the CPU that delivery takes on a small machine.

Each run is a fresh Python process (so that one configuration's threads, child processes and
garbage do not slow down the next). Runs are interleaved (a floor run before every other run) and
repeated; per configuration the best of the repeats is reported, and ratios are taken against the
floor measured in the same invocation, because on a shared machine absolute numbers drift.

Step time is the time between consecutive ``on_train_batch_start`` calls, so the logging Lightning
does after ``on_train_batch_end`` is included; the first ``--warmup`` steps are dropped. The mean step
is the steady-state training-loop wall time divided by the steps, which catches bursts (a background
flush, a garbage collection) that the median hides. ``finalize`` is the time spent in the loggers'
``finalize``; ``close`` is what a user must still call afterwards for the data to be complete
(``wandb.finish()`` for the stock ``WandbLogger``). Points are then counted through the backends' own
stores: ``MlflowClient.get_metric_history`` and the rows of the W&B offline run file.

The ``--scale`` scenario (DualTrackLogger only unless ``--configs`` says otherwise; 10,000 steps x
10 metrics by default) reports the time from the end of training until every point is on the MLflow
server (polled in the server's sqlite store, then checked through the REST API).

The ``--small-run`` scenario (50 steps, ``noop`` and ``dualtrack``) reports what the end of a small run
costs: ``trainer.fit`` wall time (finalize included) and the time from the worker's last line to its
exit (interpreter teardown, where the logger ends the W&B run it kept open for a next stage), each as
the difference against ``noop``.

The ``--freshness`` scenario (``dualtrack``, one metric every ~50 ms for 200 steps) reports how long a
point takes from the log call to the MLflow server's store (its sqlite, polled every 20 ms from the
driver process): p50/p95/max over every point, and over the points logged once delivery had started
(the first point visible), plus the shipper's CPU time during training.

The ``--sweep`` scenario (``noop`` and ``dualtrack``, each in its own process) runs N sequential fits in one
process, each with a fresh logger (an Optuna-style study; 12 fits of 30 steps by default), and reports per fit
the wall time, the delivery processes alive and the delivery side's memory (RSS of the delivery service and its
children, wandb-core included), and at the end whether every run is complete in both backends; the per-run
cost is the median over fits 2..N of dualtrack's fit time minus noop's.

At 400 steps of ~2 ms the measured window is about a second: it shows what a logger costs while it
starts up and delivers its first batches. ``--steps 3000`` (or the scale scenario) shows the steady
state.

Examples::

    python benchmarks/logger_overhead.py                      # 400 steps x 3 metrics, all configs, best of 3
    python benchmarks/logger_overhead.py --quick              # the test suite's smoke run
    python benchmarks/logger_overhead.py --configs noop,dualtrack --repeats 5
    python benchmarks/logger_overhead.py --scale              # 100,000 points, time until on the server
    python benchmarks/logger_overhead.py --small-run          # the end of a 50-step fit, against noop
    python benchmarks/logger_overhead.py --freshness          # log-call-to-server latency during training
    python benchmarks/logger_overhead.py --sweep              # 12 fits in one process, a fresh logger each
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as _dt
import glob
import json
import os
import platform
import shutil
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from pathlib import Path
from typing import Any

ALL_CONFIGS = ("noop", "dualtrack", "mlflow", "mlflow_async", "wandb", "mlflow+wandb")
# Diagnostic, not in the default set: DualTrackLogger with no delivery process (journal only). The
# difference to ``noop`` is what the training thread itself pays; the difference to ``dualtrack`` is
# the CPU that delivery (shipper, wandb-core, and here the local mlflow server) takes from training.
EXTRA_CONFIGS = ("dualtrack_journal",)
FLOOR = "noop"
HEADLINE = "dualtrack"
# Targets from issue 2 / issue 5 (benchmarks, not timed tests).
TARGETS = {
    "median_ratio": 1.05,
    "mean_ratio": 1.15,
    "p95_ratio": 1.5,
    "finalize_s": 2.0,
    "scale_delivery_s": 10.0,
}
METRIC_PREFIX = "train/metric_"
EXPERIMENT = "logger_overhead"

SUMMARY_COLUMNS = [
    "config",
    "runs",
    "steps",
    "metrics",
    "median_ms",
    "p95_ms",
    "mean_ms",
    "median_ratio",
    "p95_ratio",
    "mean_ratio",
    "median_ratio_paired",
    "p95_ratio_paired",
    "mean_ratio_paired",
    "fit_s",
    "finalize_s",
    "close_s",
    "mlflow_expected",
    "mlflow_found",
    "mlflow_lost",
    "wandb_expected",
    "wandb_found",
    "wandb_lost",
    "journal_expected",
    "journal_found",
    "journal_lost",
    "skipped",
]


# --------------------------------------------------------------------------------------------------
# MLflow server (the package's helper when present; a minimal starter otherwise)
# --------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _LocalMlflowServer:
    """``mlflow server`` on a free loopback port with a sqlite store in ``workdir``."""

    def __init__(self, workdir: str | os.PathLike) -> None:
        self.workdir = Path(workdir)
        self.backend_store_uri = f"sqlite:///{self.workdir / 'mlflow.db'}"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> _LocalMlflowServer:
        mlflow_exe = Path(sys.executable).parent / "mlflow"
        cmd = [
            str(mlflow_exe),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--backend-store-uri",
            self.backend_store_uri,
            "--default-artifact-root",
            str(self.workdir / "artifacts"),
            "--workers",
            "1",
        ]
        self._log = open(self.workdir / "mlflow-server.log", "wb")
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with {self.process.returncode}; see {self._log.name}"
                )
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            time.sleep(0.25)
        self.__exit__(None, None, None)
        raise TimeoutError(f"mlflow server did not answer on {self.url}/health within 120 s")

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def _mlflow_server(workdir: Path):
    try:
        from lightning_dualtrack.testing import MlflowServer
    except ImportError:
        return _LocalMlflowServer(workdir), "benchmarks/logger_overhead.py (local starter)"
    return MlflowServer(workdir), "lightning_dualtrack.testing.MlflowServer"


def _sqlite_path(backend_store_uri: str | None) -> str | None:
    if backend_store_uri and backend_store_uri.startswith("sqlite:///"):
        return backend_store_uri[len("sqlite:///") :]
    return None


# --------------------------------------------------------------------------------------------------
# Counting what the backends stored
# --------------------------------------------------------------------------------------------------


def count_mlflow_points(tracking_uri: str, run_id: str, keys: list[str]) -> dict[str, int]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    return {k: len(client.get_metric_history(run_id, k)) for k in keys}


def count_sqlite_points(db_path: str, run_id: str) -> int:
    """Cheap poll of the server's own store (the REST history of 100,000 points is not cheap)."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        (n,) = con.execute(
            "SELECT COUNT(*) FROM metrics WHERE run_uuid = ? AND key LIKE ?", (run_id, METRIC_PREFIX + "%")
        ).fetchone()
        return int(n)
    finally:
        con.close()


def _read_wandb_history_fallback(path: str) -> list[dict[str, Any]]:
    """History rows of one W&B ``.wandb`` run file (LevelDB-style log of protobuf ``Record`` s)."""
    from wandb.proto import wandb_internal_pb2

    block, header = 32768, 7
    data = Path(path).read_bytes()
    rows: list[dict[str, Any]] = []
    pos, pending = 7, b""  # skip the file header ":W&B" + magic + version
    while pos + header <= len(data):
        space = block - pos % block
        if space < header:
            pos += space
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + header])
        payload = data[pos + header : pos + header + length]
        pos += header + length
        if kind == 0 and length == 0:
            continue
        if kind == 1:
            chunk = payload
        elif kind == 2:
            pending = payload
            continue
        elif kind == 3:
            pending += payload
            continue
        elif kind == 4:
            chunk, pending = pending + payload, b""
        else:
            break
        rec = wandb_internal_pb2.Record()
        try:
            rec.ParseFromString(chunk)
        except Exception:  # a torn tail
            break
        if rec.WhichOneof("record_type") == "history":
            row = {}
            for item in rec.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json) if item.value_json else None
            rows.append(row)
    return rows


def wandb_history(root: str, run_id: str) -> tuple[list[dict[str, Any]], str]:
    try:
        from lightning_dualtrack.sinks.wandb.runfile import read_runs
    except ImportError:
        read_runs = None
    if read_runs is not None:
        try:
            run = read_runs(root, run_id)
        except FileNotFoundError:
            return [], "lightning_dualtrack.sinks.wandb.runfile.read_runs (no run file)"
        return list(run.history), "lightning_dualtrack.sinks.wandb.runfile.read_runs"
    files = sorted(glob.glob(os.path.join(root, "**", f"run-{run_id}.wandb"), recursive=True))
    rows: list[dict[str, Any]] = []
    for f in files:
        rows.extend(_read_wandb_history_fallback(f))
    return rows, "benchmarks/logger_overhead.py (fallback reader)"


# --------------------------------------------------------------------------------------------------
# Worker: one configuration, one fresh process
# --------------------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from lightning.pytorch import Callback, LightningModule, Trainer
    from lightning.pytorch.loggers import Logger

    torch.manual_seed(0)
    torch.set_num_threads(spec["torch_threads"])
    config, steps, k = spec["config"], spec["steps"], spec["metrics"]
    workdir = Path(spec["workdir"])
    keys = [f"{METRIC_PREFIX}{i}" for i in range(k)]

    class NoopLogger(Logger):
        @property
        def name(self) -> str:
            return "noop"

        @property
        def version(self) -> str:
            return "0"

        def log_metrics(self, metrics, step=None) -> None:
            pass

        def log_hyperparams(self, params, *args, **kwargs) -> None:
            pass

    class TinyMLP(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))

        def training_step(self, batch, batch_idx):
            if spec.get("step_sleep"):
                time.sleep(spec["step_sleep"])  # --freshness: a step of a real model's length
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            v = loss.detach()
            self.log_dict({key: v + i for i, key in enumerate(keys)}, on_step=True, on_epoch=False)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

        def train_dataloader(self):
            # The plain recipe: a TensorDataset and the default collation (no workers, no shuffling).
            g = torch.Generator().manual_seed(0)
            n = steps * spec["batch_size"]
            data = torch.utils.data.TensorDataset(
                torch.randn(n, 32, generator=g), torch.randn(n, 1, generator=g)
            )
            return torch.utils.data.DataLoader(data, batch_size=spec["batch_size"])

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []
            self.train_end: float | None = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.starts.append(time.perf_counter())

        def on_train_end(self, trainer, pl_module) -> None:
            self.train_end = time.perf_counter()
            self.shipper_cpu_s = _shipper_cpu_s(trainer.loggers)

    # ---- the loggers --------------------------------------------------------------------------
    run_name = f"{config}-r{spec['repeat']}"
    loggers: list[Any] = []
    close = None
    if config == "noop":
        loggers = [NoopLogger()]
    if config in ("mlflow", "mlflow_async", "mlflow+wandb"):
        from lightning.pytorch.loggers import MLFlowLogger

        kw = {"synchronous": False} if config == "mlflow_async" else {}
        loggers.append(
            MLFlowLogger(experiment_name=EXPERIMENT, run_name=run_name, tracking_uri=spec["url"], **kw)
        )
    if config in ("wandb", "mlflow+wandb"):
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project=EXPERIMENT, name=run_name, offline=True, save_dir=str(workdir)))

        def close() -> None:
            # The stock WandbLogger leaves the run open, and offline `finish()` returns before the
            # service has written the run file: `teardown()` waits for it.
            wandb.finish()
            wandb.teardown()

    if config in ("dualtrack", "dualtrack_journal"):
        try:
            from lightning_dualtrack import DualTrackLogger
        except ImportError as err:
            return {
                "config": config,
                "repeat": spec["repeat"],
                "skipped": f"lightning_dualtrack.DualTrackLogger does not import ({type(err).__name__}: {err})",
            }

        loggers.append(
            DualTrackLogger(
                experiment_name=EXPERIMENT,
                run_name=run_name,
                tracking_uri=spec["url"],
                wandb_mode="offline",
                save_dir=str(workdir / "dualtrack_runs"),
                deliver=config == "dualtrack",
                **({"flush_interval": spec["flush_interval"]} if spec.get("flush_interval") else {}),
                **({"system_metrics": False} if spec.get("no_system_metrics") else {}),
            )
        )
    if not loggers:
        raise ValueError(f"Expected `config` to be one of {ALL_CONFIGS + EXTRA_CONFIGS}, but got {config!r}")

    finalize_s = [0.0]
    for lg in loggers:
        inner = lg.finalize

        def timed(status: str = "success", _inner=inner) -> None:
            t = time.perf_counter()
            try:
                _inner(status)
            finally:
                finalize_s[0] += time.perf_counter() - t

        lg.finalize = timed  # instance attribute: Lightning calls logger.finalize("success")

    timer = StepTimer()
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        max_steps=steps,
        logger=loggers,
        callbacks=[timer],
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=str(workdir),
    )
    model = TinyMLP()
    t0 = time.perf_counter()
    trainer.fit(model)
    fit_end = time.perf_counter()
    fit_s = fit_end - t0
    close_s = 0.0
    if close is not None:
        t = time.perf_counter()
        close()
        close_s = time.perf_counter() - t

    # ---- timings ------------------------------------------------------------------------------
    starts, warm = timer.starts, spec["warmup"]
    if len(starts) != steps:
        raise RuntimeError(f"expected {steps} training steps, timed {len(starts)}")
    intervals = [b - a for a, b in zip(starts[warm:], starts[warm + 1 :], strict=False)]
    loop_end = timer.train_end
    result: dict[str, Any] = {
        "config": config,
        "repeat": spec["repeat"],
        "steps": steps,
        "metrics": k,
        "warmup": warm,
        "median_ms": statistics.median(intervals) * 1e3,
        "p95_ms": _percentile(intervals, 0.95) * 1e3,
        "max_ms": max(intervals) * 1e3,
        "mean_ms": (loop_end - starts[warm]) / (steps - warm) * 1e3,
        "loop_s": loop_end - starts[0],
        "fit_s": fit_s,
        "finalize_s": finalize_s[0],
        "close_s": close_s,
        "train_end_to_fit_return_s": fit_end - loop_end,
    }
    if getattr(timer, "shipper_cpu_s", None) is not None:
        result["shipper_cpu_s"] = timer.shipper_cpu_s  # the shipper and wandb-core, from their start to train end

    # ---- what reached the backends ----------------------------------------------------------
    mlflow_run_id = wandb_run_id = None
    for lg in loggers:
        if type(lg).__name__ == "MLFlowLogger":
            mlflow_run_id = lg.run_id
        elif type(lg).__name__ == "WandbLogger":
            wandb_run_id = lg.version
        elif type(lg).__name__ == "DualTrackLogger" and config == "dualtrack_journal":
            journalled = sum(1 for line in open(Path(lg.save_dir) / "journal.jsonl") if '"k":"metrics"' in line)
            result.update(journal_expected=steps, journal_found=journalled, journal_lost=max(0, steps - journalled))
        elif type(lg).__name__ == "DualTrackLogger":
            mlflow_run_id, wandb_run_id = lg.mlflow_run_id, lg.wandb_run_id

    if spec.get("scale"):
        # Poll the server's store until every point is there (or give up).
        db = spec["sqlite_path"]
        expected_total = steps * k
        deadline = loop_end + spec["scale_timeout"]
        found_total = count_sqlite_points(db, mlflow_run_id) if (db and mlflow_run_id) else 0
        while found_total < expected_total and time.perf_counter() < deadline and db and mlflow_run_id:
            time.sleep(0.05)
            found_total = count_sqlite_points(db, mlflow_run_id)
        done = time.perf_counter()
        result["scale_points_found_sqlite"] = found_total
        result["scale_delivery_s"] = (done - loop_end) if found_total >= expected_total else None
        result["scale_delivery_after_fit_return_s"] = (
            max(0.0, done - fit_end) if found_total >= expected_total else None
        )

    if mlflow_run_id is not None:
        t = time.perf_counter()
        counts = count_mlflow_points(spec["url"], mlflow_run_id, keys)
        found = min(counts.values())
        # Anything missing right after finalize: wait a little to tell "late" from "lost".
        late_deadline = time.perf_counter() + spec["late_wait"]
        found_late = found
        while found_late < steps and time.perf_counter() < late_deadline:
            time.sleep(0.5)
            found_late = min(count_mlflow_points(spec["url"], mlflow_run_id, keys).values())
        result.update(
            mlflow_run_id=mlflow_run_id,
            mlflow_expected=steps,
            mlflow_found=found,
            mlflow_lost=steps - found,
            mlflow_found_after_wait=found_late,
            mlflow_count_s=time.perf_counter() - t,
        )
    if wandb_run_id is not None:
        rows, reader = wandb_history(str(workdir), wandb_run_id)
        found = min(sum(1 for r in rows if key in r) for key in keys)
        with contextlib.suppress(Exception):
            from lightning_dualtrack.sinks.wandb.runfile import read_runs

            result["wandb_exit_code"] = read_runs(str(workdir), wandb_run_id).exit_code
        result.update(
            wandb_run_id=wandb_run_id,
            wandb_expected=steps,
            wandb_found=found,
            wandb_lost=steps - found,
            wandb_reader=reader,
        )
    return result


def _shipper_cpu_s(loggers: list[Any]) -> float | None:
    """CPU seconds used so far by DualTrackLogger's delivery process and its children (wandb-core)."""
    try:
        import psutil
    except ImportError:
        return None
    for lg in loggers:
        delivery = getattr(getattr(lg, "_run", None), "delivery", None)
        if delivery is None or getattr(delivery, "pid", None) is None:
            continue
        try:
            proc = psutil.Process(delivery.pid)
            procs = [proc, *proc.children(recursive=True)]
            return sum(p.cpu_times().user + p.cpu_times().system for p in procs)
        except psutil.Error:
            return None
    return None


# --------------------------------------------------------------------------------------------------
# --sweep: many fits in one process
# --------------------------------------------------------------------------------------------------


def _delivery_processes(pid: int) -> list[Any]:
    """The delivery services among ``pid``'s children, with their own children (wandb-core)."""
    import psutil

    out = []
    for child in psutil.Process(pid).children(recursive=False):
        try:
            if "lightning_dualtrack.delivery" in " ".join(child.cmdline()):
                out.append(child)
        except psutil.Error:
            continue
    return out


def _rss_mb(procs: list[Any]) -> float:
    import psutil

    total = 0
    for proc in procs:
        try:
            for p in (proc, *proc.children(recursive=True)):
                total += p.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def _sweep_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec["fits"]`` sequential fits in this process, a fresh logger each, as a study's trials are run."""
    import gc
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.loggers import Logger

    torch.set_num_threads(spec["torch_threads"])
    config, steps, fits = spec["config"], spec["steps"], spec["fits"]
    workdir = Path(spec["workdir"])

    class NoopLogger(Logger):
        name = "noop"
        version = "0"

        def log_metrics(self, metrics, step=None) -> None:
            pass

        def log_hyperparams(self, params, *args, **kwargs) -> None:
            pass

    class TinyMLP(LightningModule):
        def __init__(self, lr: float) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log_dict({"train/loss": loss.detach(), "train/a": loss.detach() + 1, "train/b": loss.detach() + 2})
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

        def train_dataloader(self):
            g = torch.Generator().manual_seed(0)
            n = steps * 32
            data = torch.utils.data.TensorDataset(torch.randn(n, 32, generator=g), torch.randn(n, 1, generator=g))
            return torch.utils.data.DataLoader(data, batch_size=32)

    per_fit: list[dict[str, Any]] = []
    runs: list[tuple[str, str]] = []
    me = os.getpid()
    for i in range(fits):
        t0 = time.perf_counter()
        if config == "noop":
            logger: Any = NoopLogger()
        else:
            from lightning_dualtrack import DualTrackLogger

            logger = DualTrackLogger(experiment_name=EXPERIMENT, run_name=f"trial-{i}", tracking_uri=spec["url"],
                                     wandb_mode="offline", save_dir=str(workdir / "dualtrack_runs"), log_system_info=False)
            runs.append((str(logger.run_dir), logger.run_id))
        trainer = Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=logger, log_every_n_steps=1,
                          enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                          limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=str(workdir))
        trainer.fit(TinyMLP(lr=0.01 * (i + 1)))
        fit_s = time.perf_counter() - t0
        del trainer, logger  # a study drops each trial's objects
        gc.collect()
        services = _delivery_processes(me)
        per_fit.append({"fit": i, "fit_s": fit_s, "delivery_processes": len(services), "delivery_rss_mb": _rss_mb(services)})
    result: dict[str, Any] = {"config": config, "fits": fits, "steps": steps, "per_fit": per_fit}
    if config == "dualtrack":
        result["runs"] = runs
    return result


def sweep_scenario(fits: int, steps: int, workdir: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """noop and dualtrack sweeps, each in a fresh process; then every dualtrack run is checked in both backends."""
    (workdir / "server").mkdir(parents=True)
    server, _impl = _mlflow_server(workdir / "server")
    out: dict[str, Any] = {"fits": fits, "steps": steps, "environment": _environment()}
    with server:
        for config in ("noop", "dualtrack"):
            sub = workdir / config
            sub.mkdir()
            spec = {"config": config, "fits": fits, "steps": steps, "torch_threads": 1, "url": server.url,
                    "workdir": str(sub)}
            spec_path, out_path = sub / "spec.json", sub / "result.json"
            spec_path.write_text(json.dumps(spec))
            t0 = time.perf_counter()
            with open(sub / "worker.log", "wb") as log:
                proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_sweep_worker", str(spec_path),
                                       str(out_path)], env={**env, "WANDB_DIR": str(sub)}, stdout=log,
                                      stderr=subprocess.STDOUT, timeout=timeout, cwd=sub)
            wall = time.perf_counter() - t0
            if proc.returncode != 0 or not out_path.exists():
                out[config] = {"error": (sub / "worker.log").read_text(errors="replace")[-3000:]}
                continue
            out[config] = json.loads(out_path.read_text())
            out[config]["process_wall_s"] = wall
        dual = out.get("dualtrack", {})
        complete = 0
        for run_dir, run_id in dual.get("runs", []):
            from mlflow.tracking import MlflowClient

            client = MlflowClient(server.url)
            state = json.loads((Path(run_dir) / "state" / "mlflow.json").read_text())
            mlflow_n = len(client.get_metric_history(state["identity"]["run_id"], "train/loss"))
            rows, _ = wandb_history(str(Path(run_dir)), run_id)
            wandb_n = sum(1 for r in rows if "train/loss" in r or ("train" in r and isinstance(r["train"], dict) and "loss" in r["train"]))
            closed = client.get_run(state["identity"]["run_id"]).info.status == "FINISHED"
            complete += int(mlflow_n == steps and wandb_n == steps and closed)
        out["runs_complete"] = complete
    noop, dual = out.get("noop", {}), out.get("dualtrack", {})
    if "per_fit" in noop and "per_fit" in dual:
        extra = [d["fit_s"] - n["fit_s"] for d, n in zip(dual["per_fit"], noop["per_fit"], strict=True)]
        out["extra_s_first_fit"] = extra[0]
        out["extra_s_per_later_fit_median"] = statistics.median(extra[1:]) if len(extra) > 1 else None
        out["extra_s_per_later_fit_max"] = max(extra[1:]) if len(extra) > 1 else None
        out["max_delivery_processes"] = max(f["delivery_processes"] for f in dual["per_fit"])
        out["max_delivery_rss_mb"] = max(f["delivery_rss_mb"] for f in dual["per_fit"])
        out["process_wall_extra_s"] = dual["process_wall_s"] - noop["process_wall_s"]
    return out


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def _environment() -> dict[str, Any]:
    import importlib.metadata as md

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("lightning", "torch", "mlflow", "wandb", "lightning-dualtrack"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def _run_one(spec: dict[str, Any], root: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    workdir = root / f"{spec['index']:03d}-{spec['config'].replace('+', '_')}-r{spec['repeat']}"
    workdir.mkdir(parents=True)
    spec = {**spec, "workdir": str(workdir)}
    spec_path, out_path = workdir / "spec.json", workdir / "result.json"
    spec_path.write_text(json.dumps(spec))
    run_env = {
        **env,
        "WANDB_DIR": str(workdir),
        "WANDB_CACHE_DIR": str(workdir / ".cache"),
        "WANDB_CONFIG_DIR": str(workdir / ".config"),
        "WANDB_DATA_DIR": str(workdir / ".data"),
    }
    log_path = workdir / "worker.log"
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--_worker", str(spec_path), str(out_path)],
                env=run_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                cwd=workdir,
            )
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    exited_at = time.time()
    if rc == 0 and out_path.exists():
        result = json.loads(out_path.read_text())
        if "written_at" in result:  # the worker's exit: interpreter teardown, atexit hooks
            result["exit_s"] = exited_at - result.pop("written_at")
        return result
    tail = log_path.read_text(errors="replace")[-3000:]
    return {
        "config": spec["config"],
        "repeat": spec["repeat"],
        "error": f"worker exit {rc}",
        "log_tail": tail,
    }


def _schedule(configs: list[str], repeats: int) -> list[tuple[str, int]]:
    """A floor run before every other run, repeated: noop, a, noop, b, ..., noop, a, noop, b, ..."""
    others = [c for c in configs if c != FLOOR]
    order: list[tuple[str, int]] = []
    for r in range(repeats):
        if FLOOR in configs and not others:
            order.append((FLOOR, r))
        for c in others:
            if FLOOR in configs:
                order.append((FLOOR, r))
            order.append((c, r))
    return order


def _summarise(
    runs: list[dict[str, Any]], configs: list[str], skipped: dict[str, str]
) -> list[dict[str, Any]]:
    rows = []
    by_config: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        if "error" not in r:
            by_config.setdefault(r["config"], []).append(r)
    floor = by_config.get(FLOOR, [])
    best_floor = {m: min(r[m] for r in floor) for m in ("median_ms", "p95_ms", "mean_ms")} if floor else {}
    for c in configs:
        good = by_config.get(c, [])
        row: dict[str, Any] = {col: None for col in SUMMARY_COLUMNS}
        row["config"] = c
        if c in skipped or not good:
            errors = [r.get("error") for r in runs if r["config"] == c and "error" in r]
            row["skipped"] = skipped.get(c) or ("; ".join(sorted(set(errors))) or "no run")
            rows.append(row)
            continue
        row.update(runs=len(good), steps=good[0]["steps"], metrics=good[0]["metrics"])
        # Timings: best of the repeats, each statistic on its own. Losses: the worst repeat.
        for m in ("median_ms", "p95_ms", "mean_ms", "fit_s", "finalize_s", "close_s"):
            row[m] = min(r[m] for r in good)
        for m in ("median", "p95", "mean"):
            if best_floor:
                row[f"{m}_ratio"] = row[f"{m}_ms"] / best_floor[f"{m}_ms"]
        # Paired: each run against the floor run just before it (same load), median over the repeats.
        floor_at = {r["index"]: r for r in floor}
        pairs = [(r, floor_at[r["index"] - 1]) for r in good if r["index"] - 1 in floor_at]
        for m in ("median", "p95", "mean"):
            if pairs:
                row[f"{m}_ratio_paired"] = statistics.median(a[f"{m}_ms"] / b[f"{m}_ms"] for a, b in pairs)
        for b in ("mlflow", "wandb", "journal"):
            have = [r for r in good if f"{b}_expected" in r]
            if have:
                worst = max(have, key=lambda r: r[f"{b}_lost"])
                row[f"{b}_expected"] = worst[f"{b}_expected"]
                row[f"{b}_found"] = worst[f"{b}_found"]
                row[f"{b}_lost"] = worst[f"{b}_lost"]
        rows.append(row)
    return rows


def _fmt(v: Any, spec: str = ".2f") -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| config | median ms | p95 ms | mean ms | median × | p95 × | mean × | fit s | finalize s | "
        "close s | MLflow found/expected | W&B rows/expected | lost |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['config']} | skipped: {r['skipped']} |" + " |" * 11)
            continue
        lost = sum(r[f"{b}_lost"] or 0 for b in ("mlflow", "wandb", "journal"))
        ml = f"{r['mlflow_found']}/{r['mlflow_expected']}" if r["mlflow_expected"] is not None else "–"
        wb = f"{r['wandb_found']}/{r['wandb_expected']}" if r["wandb_expected"] is not None else "–"
        lines.append(
            f"| {r['config']} | {_fmt(r['median_ms'])} | {_fmt(r['p95_ms'])} | {_fmt(r['mean_ms'])} | "
            f"{_fmt(r['median_ratio'])} | {_fmt(r['p95_ratio'])} | {_fmt(r['mean_ratio'])} | "
            f"{_fmt(r['fit_s'])} | {_fmt(r['finalize_s'])} | {_fmt(r['close_s'])} | {ml} | {wb} | {lost} |"
        )
    return "\n".join(lines)


def _headline(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    row = next((r for r in rows if r["config"] == HEADLINE and not r.get("skipped")), None)
    if row is None or row["median_ratio"] is None:
        return out
    checks = [
        ("median step", row["median_ratio"], TARGETS["median_ratio"], "x"),
        ("mean step", row["mean_ratio"], TARGETS["mean_ratio"], "x"),
        ("p95 step", row["p95_ratio"], TARGETS["p95_ratio"], "x"),
        ("finalize", row["finalize_s"], TARGETS["finalize_s"], " s"),
    ]
    for name, value, target, unit in checks:
        out.append(
            f"  {name:12s} {value:7.3f}{unit} (target <= {target}{unit}) {'PASS' if value <= target else 'MISS'}"
        )
    if row["median_ratio_paired"] is not None:
        out.append(
            f"  paired with the floor run just before each run (median of {row['runs']}): median "
            f"{row['median_ratio_paired']:.3f}x, mean {row['mean_ratio_paired']:.3f}x, p95 {row['p95_ratio_paired']:.3f}x"
        )
    lost = (row["mlflow_lost"] or 0) + (row["wandb_lost"] or 0)
    out.append(f"  lost         {lost:7d}   (target 0) {'PASS' if lost == 0 else 'MISS'}")
    return out


# --------------------------------------------------------------------------------------------------
# --backlog: a journal of N points delivered by `dualtrack sync`, against the server alone
# --------------------------------------------------------------------------------------------------


def backlog_scenario(points: int, keys: int, workdir: Path) -> dict[str, Any]:
    """Time for the shipper to deliver a ``points`` backlog to MLflow, next to the server's own speed.

    Server alone: ``MlflowClient.log_batch`` of 1000-metric requests into a fresh run. Shipper: a run
    directory whose journal holds the same points (``points / keys`` steps x ``keys`` metrics), delivered
    by ``run_shipper`` as ``dualtrack sync`` does. Both against one local ``mlflow server`` (sqlite).
    Also reports the requests the shipper made (a re-send would show as more than points / 1000).
    """
    import time as _time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from lightning_dualtrack import DualTrackLogger
    from lightning_dualtrack.delivery.rundelivery import run_shipper

    steps = points // keys
    server, _ = _mlflow_server(workdir / "server")
    with server:
        url = server.url
        client = MlflowClient(url)
        exp = client.create_experiment("backlog-server-alone")
        rid = client.create_run(exp).info.run_id
        ts = int(_time.time() * 1000)
        batch: list = []
        t0 = _time.perf_counter()
        for step in range(steps):
            for j in range(keys):
                batch.append(Metric(f"{METRIC_PREFIX}{j}", float(step * keys + j), ts + step, step))
                if len(batch) == 1000:
                    client.log_batch(rid, metrics=batch, synchronous=True)
                    batch = []
        if batch:
            client.log_batch(rid, metrics=batch, synchronous=True)
        server_s = _time.perf_counter() - t0

        logger = DualTrackLogger(experiment_name="backlog-shipper", tracking_uri=url, wandb=False,
                                 save_dir=workdir / "runs", deliver=False, log_system_info=False)
        for step in range(steps):
            logger.log_metrics({f"{METRIC_PREFIX}{j}": float(step * keys + j) for j in range(keys)}, step=step)
        logger.finalize("success")
        t0 = _time.perf_counter()
        states = run_shipper(logger.run_dir, only={"mlflow"}, log=lambda m: None, poll_interval=0.2)
        shipper_s = _time.perf_counter() - t0
        state = states["mlflow"]
        stored = count_sqlite_points(_sqlite_path(server.backend_store_uri) or str(workdir / "server" / "mlflow.db"),
                                     state["identity"]["run_id"])
    return {
        "points": steps * keys,
        "server_alone_s": round(server_s, 2),
        "server_alone_points_per_s": round(steps * keys / server_s),
        "shipper_s": round(shipper_s, 2),
        "shipper_points_per_s": round(steps * keys / shipper_s),
        "ratio_shipper_vs_server": round(server_s / shipper_s, 3),
        "stored": stored,
        "requests": state.get("requests"),
        "closed": state.get("closed"),
    }


# --------------------------------------------------------------------------------------------------
# --freshness: how long a point logged during training takes to be on the MLflow server
# --------------------------------------------------------------------------------------------------


def freshness_scenario(steps: int, step_sleep: float, workdir: Path, env: dict[str, str], timeout: float,
                       flush_interval: float | None = None) -> dict[str, Any]:
    """One ``dualtrack`` fit logging one metric per ~``step_sleep`` s; the driver polls the server's sqlite store
    every 20 ms and notes when each point appears. Latency = seen - the point's MLflow timestamp (the log call's
    wall clock). "steady" leaves out the points logged before delivery started (the shipper's start-up)."""
    import threading

    server, impl = _mlflow_server(workdir / "server")
    key = f"{METRIC_PREFIX}0"
    with server:
        db = _sqlite_path(getattr(server, "backend_store_uri", None)) or str(workdir / "server" / "mlflow.db")
        spec = {"index": 0, "config": "dualtrack", "repeat": 0, "steps": steps, "metrics": 1, "warmup": 5,
                "torch_threads": 1, "url": server.url, "batch_size": 32, "sqlite_path": db, "late_wait": 10.0,
                "scale": False, "scale_timeout": 0.0, "step_sleep": step_sleep, "flush_interval": flush_interval}
        box: dict[str, Any] = {}
        worker = threading.Thread(target=lambda: box.update(result=_run_one(spec, workdir, env, timeout)))
        worker.start()
        seen: dict[int, tuple[float, int]] = {}
        conn = None
        while worker.is_alive():
            try:
                if conn is None:
                    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
                rows = conn.execute("SELECT step, timestamp FROM metrics WHERE key = ?", (key,)).fetchall()
            except sqlite3.Error:
                rows = []
            now = time.time()
            for step, ts in rows:
                seen.setdefault(int(step), (now, int(ts)))
            time.sleep(0.02)
        worker.join()
        if conn is not None:
            conn.close()
    result = box.get("result") or {}
    lat = sorted(v[0] - v[1] / 1000 for v in seen.values())
    first_seen = min((v[0] for v in seen.values()), default=None)
    steady = sorted(v[0] - v[1] / 1000 for v in seen.values() if first_seen is not None and v[1] / 1000 >= first_seen)

    def stats(xs: list[float]) -> dict[str, Any]:
        if not xs:
            return {"n": 0}
        return {"n": len(xs), "p50_s": round(statistics.median(xs), 3), "p95_s": round(_percentile(xs, 0.95), 3),
                "max_s": round(xs[-1], 3)}

    first_logged = min((v[1] / 1000 for v in seen.values()), default=None)
    loop_s = result.get("loop_s")
    cpu = result.get("shipper_cpu_s")
    return {
        "steps": steps,
        "step_sleep_s": step_sleep,
        "flush_interval": flush_interval,
        "points_seen": len(seen),
        "all": stats(lat),
        "steady": stats(steady),
        "startup_s": round(first_seen - first_logged, 3) if first_seen and first_logged else None,
        "loop_s": round(loop_s, 2) if loop_s else None,
        "shipper_cpu_s": round(cpu, 2) if cpu is not None else None,
        "shipper_cpu_share": round(cpu / loop_s, 3) if cpu is not None and loop_s else None,
        "mean_step_ms": round(result["mean_ms"], 2) if "mean_ms" in result else None,
        "error": result.get("error"),
    }


def _small_run_lines(runs: list[dict[str, Any]]) -> list[str]:
    """The end of a small run: medians over the repeats, and dualtrack's difference against noop."""
    def med(config: str, key: str) -> float | None:
        xs = [r[key] for r in runs if r.get("config") == config and "error" not in r and r.get(key) is not None]
        return statistics.median(xs) if xs else None

    out = []
    for key, what in (("fit_s", "trainer.fit wall time (finalize included)"),
                      ("exit_s", "worker exit (interpreter teardown, atexit: the held W&B run is finished)")):
        a, b = med(FLOOR, key), med(HEADLINE, key)
        if a is not None and b is not None:
            out.append(f"  {what}: {FLOOR} {a:.2f} s, {HEADLINE} {b:.2f} s, difference {b - a:+.2f} s")
    fin = med(HEADLINE, "finalize_s")
    if fin is not None:
        out.append(f"  {HEADLINE} finalize: {fin:.2f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run for the test suite: 120 steps, 1 repeat, noop+dualtrack",
    )
    p.add_argument(
        "--scale",
        action="store_true",
        help="time from the end of training until all points are on the server (default configs: dualtrack)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps per run (default 400; --scale 10000; --quick 120)",
    )
    p.add_argument(
        "--metrics", type=int, default=None, help="metrics logged every step (default 3; --scale 10)"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="runs per configuration; the best is reported (default 3; --quick/--scale 1)",
    )
    p.add_argument(
        "--configs",
        default=None,
        help=f"comma-separated subset of {','.join(ALL_CONFIGS)} (default all; --quick noop,dualtrack)",
    )
    p.add_argument(
        "--warmup", type=int, default=20, help="first steps dropped from the statistics (default 20)"
    )
    p.add_argument("--batch-size", type=int, default=32, help="samples per step (default 32)")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads in the trainer (default 1: the model is tiny)",
    )
    p.add_argument(
        "--late-wait",
        type=float,
        default=10.0,
        help="seconds to keep polling MLflow when points are missing after finalize (tells late from lost)",
    )
    p.add_argument(
        "--scale-timeout",
        type=float,
        default=120.0,
        help="--scale: give up waiting for the server after this many seconds",
    )
    p.add_argument("--run-timeout", type=float, default=900.0, help="seconds before one run is killed")
    p.add_argument(
        "--out",
        default=str(Path(__file__).resolve().parent / "results"),
        help="directory for the CSV and JSON (default benchmarks/results/)",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (server store, W&B runs, worker logs)",
    )
    p.add_argument(
        "--backlog",
        type=int,
        default=None,
        metavar="POINTS",
        help="deliver a journal of POINTS metric points (--metrics keys per step, default 10) with `dualtrack sync`'s "
        "code and compare with the server alone (1000-metric MlflowClient.log_batch); e.g. --backlog 200000",
    )
    p.add_argument(
        "--small-run",
        action="store_true",
        help="the end of a small run: 50 steps, noop and dualtrack, fit and exit wall time as differences",
    )
    p.add_argument(
        "--freshness",
        action="store_true",
        help="log-call-to-server latency of points logged during a fit (p50/p95/max), and the shipper's CPU time",
    )
    p.add_argument("--step-sleep", type=float, default=0.05, help="--freshness: seconds per training step (default 0.05)")
    p.add_argument("--flush-interval", type=float, default=None,
                   help="--freshness: DualTrackLogger's flush_interval (default: the logger's default)")
    p.add_argument("--sweep", action="store_true",
                   help="N sequential fits in one process, a fresh logger each (--fits, default 12; --steps default 30): "
                        "per-fit cost against noop, delivery processes alive, delivery-side memory, runs complete")
    p.add_argument("--fits", type=int, default=12, help="--sweep: fits in the process (default 12)")
    p.add_argument("--no-system-metrics", action="store_true",
                   help="DualTrackLogger(system_metrics=False): the delivery service samples no system figures and W&B's "
                        "monitor is off (compare with the default to see what sampling costs training)")
    p.add_argument("--_worker", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--_sweep_worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._sweep_worker:
        spec = json.loads(Path(args._sweep_worker[0]).read_text())
        result = _sweep_worker(spec)
        Path(args._sweep_worker[1]).write_text(json.dumps(result))
        return 0

    if args.sweep:
        env = {k_: v for k_, v in os.environ.items() if not k_.startswith(("MLFLOW_", "WANDB_"))}
        env.update(WANDB_MODE="offline", WANDB_SILENT="true", PYTHONWARNINGS="ignore", GIT_PYTHON_REFRESH="quiet")
        with tempfile.TemporaryDirectory(prefix="dualtrack-sweep-") as tmp:
            result = sweep_scenario(args.fits, args.steps or 30, Path(tmp), env, args.run_timeout)
        result["environment"]["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        (out / f"logger_overhead_sweep_{stamp}.json").write_text(json.dumps(result, indent=2))
        summary = {k_: result.get(k_) for k_ in ("fits", "steps", "runs_complete", "max_delivery_processes",
                                                  "max_delivery_rss_mb", "extra_s_first_fit", "extra_s_per_later_fit_median",
                                                  "extra_s_per_later_fit_max", "process_wall_extra_s")}
        print(json.dumps(summary, indent=1))
        for config in ("noop", "dualtrack"):
            for f in result.get(config, {}).get("per_fit", []):
                print(f"{config:9s} fit {f['fit']:2d}: {f['fit_s']:.2f} s, delivery processes {f['delivery_processes']}, "
                      f"delivery RSS {f['delivery_rss_mb']:.0f} MB")
        return 0 if result.get("runs_complete") == args.fits else 1

    if args.freshness:
        env = {k_: v for k_, v in os.environ.items() if not k_.startswith(("MLFLOW_", "WANDB_"))}
        env.update(WANDB_MODE="offline", WANDB_SILENT="true", PYTHONWARNINGS="ignore", GIT_PYTHON_REFRESH="quiet")
        with tempfile.TemporaryDirectory(prefix="dualtrack-fresh-") as tmp:
            result = freshness_scenario(args.steps or 200, args.step_sleep, Path(tmp), env, args.run_timeout,
                                        args.flush_interval)
        result["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        print(json.dumps(result, indent=1))
        return 0 if result["points_seen"] == result["steps"] and not result["error"] else 1

    if args.backlog:
        with tempfile.TemporaryDirectory(prefix="dualtrack-backlog-") as tmp:
            result = backlog_scenario(args.backlog, args.metrics or 10, Path(tmp))
        print(json.dumps(result, indent=1))
        return 0 if result["stored"] == result["points"] and result["closed"] else 1

    if args._worker:
        spec = json.loads(Path(args._worker[0]).read_text())
        try:
            result = _worker(spec)
        except Exception:
            traceback.print_exc()
            return 1
        result["written_at"] = time.time()
        Path(args._worker[1]).write_text(json.dumps(result))
        return 0

    if args.quick and args.scale:
        p.error("--quick and --scale are separate scenarios: pick one")
    if args.small_run:
        steps, k, repeats = args.steps or 50, args.metrics or 3, args.repeats or 3
        configs = (args.configs or f"{FLOOR},{HEADLINE}").split(",")
        args.warmup = min(args.warmup, 5)
    elif args.scale:
        steps, k, repeats = args.steps or 10_000, args.metrics or 10, args.repeats or 1
        configs = (args.configs or "dualtrack").split(",")
    elif args.quick:
        steps, k, repeats = args.steps or 120, args.metrics or 3, args.repeats or 1
        configs = (args.configs or "noop,dualtrack").split(",")
    else:
        steps, k, repeats = args.steps or 400, args.metrics or 3, args.repeats or 3
        configs = (args.configs or ",".join(ALL_CONFIGS)).split(",")
    configs = [c.strip() for c in configs if c.strip()]
    bad = [c for c in configs if c not in ALL_CONFIGS + EXTRA_CONFIGS]
    if bad:
        p.error(f"unknown configuration(s) {bad}; choose from {', '.join(ALL_CONFIGS + EXTRA_CONFIGS)}")
    if steps <= args.warmup + 1:
        p.error(f"--steps must exceed --warmup + 1 ({args.warmup + 1}), got {steps}")

    env_info = _environment()
    skipped: dict[str, str] = {}
    scenario = "scale" if args.scale else ("quick" if args.quick else ("small_run" if args.small_run else "overhead"))
    print(
        f"# logger_overhead ({scenario}): {steps} steps x {k} metrics, repeats {repeats}, configs {configs}"
    )
    print(
        f"# {env_info['date_utc']} | {env_info['cpu']} | {env_info['cpus_usable']} cores usable | "
        f"python {env_info['python']} | " + ", ".join(f"{d} {v}" for d, v in env_info["versions"].items()),
        flush=True,
    )

    root = Path(tempfile.mkdtemp(prefix="dualtrack-bench-"))
    env = {k_: v for k_, v in os.environ.items() if not k_.startswith(("MLFLOW_", "WANDB_"))}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", PYTHONWARNINGS="ignore", GIT_PYTHON_REFRESH="quiet")
    runs: list[dict[str, Any]] = []
    try:
        (root / "server").mkdir()
        server, server_impl = _mlflow_server(root / "server")
        with server:
            print(f"# mlflow server {server.url} ({server_impl})", flush=True)
            sqlite_path = _sqlite_path(getattr(server, "backend_store_uri", None))
            order = _schedule(configs, repeats)
            for i, (config, rep) in enumerate(order):
                if config in skipped:
                    continue
                spec = {
                    "index": i,
                    "config": config,
                    "repeat": rep,
                    "steps": steps,
                    "metrics": k,
                    "warmup": args.warmup,
                    "torch_threads": args.torch_threads,
                    "url": server.url,
                    "batch_size": args.batch_size,
                    "sqlite_path": sqlite_path,
                    "late_wait": args.late_wait,
                    "scale": args.scale,
                    "scale_timeout": args.scale_timeout,
                    "no_system_metrics": args.no_system_metrics,
                }
                r = _run_one(spec, root, env, args.run_timeout)
                r["index"] = i
                if "skipped" in r:
                    skipped[config] = r["skipped"]
                    print(f"SKIPPING {config}: {r['skipped']}", flush=True)
                    continue
                runs.append(r)
                if "error" in r:
                    print(
                        f"[{i + 1}/{len(order)}] {config} r{rep}: FAILED {r['error']}\n{r['log_tail']}",
                        flush=True,
                    )
                    continue
                extra = ""
                if "mlflow_found" in r:
                    extra += f" mlflow {r['mlflow_found']}/{r['mlflow_expected']}"
                if "wandb_found" in r:
                    extra += f" wandb {r['wandb_found']}/{r['wandb_expected']}"
                if args.scale:
                    extra += f", all on the server {_fmt(r.get('scale_delivery_s'))} s after training"
                print(
                    f"[{i + 1}/{len(order)}] {config:13s} r{rep}: median {r['median_ms']:.2f} ms, p95 {r['p95_ms']:.2f}, "
                    f"mean {r['mean_ms']:.2f}, fit {r['fit_s']:.1f} s, finalize {r['finalize_s']:.2f} s{extra}",
                    flush=True,
                )
    finally:
        if args.keep:
            print(f"# kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    env_info["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = _summarise(runs, configs, skipped)
    command = "python benchmarks/logger_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report: dict[str, Any] = {
        "scenario": scenario,
        "command": command.strip(),
        "steps": steps,
        "metrics": k,
        "repeats": repeats,
        "warmup": args.warmup,
        "torch_threads": args.torch_threads,
        "batch_size": args.batch_size,
        "configs": configs,
        "environment": env_info,
        "targets": TARGETS,
        "results": rows,
        "runs": runs,
        "skipped": skipped,
    }
    if args.scale:
        good = [r for r in runs if "error" not in r and r["config"] == HEADLINE]
        report["scale"] = [
            {
                key: r.get(key)
                for key in (
                    "steps",
                    "metrics",
                    "fit_s",
                    "finalize_s",
                    "scale_delivery_s",
                    "scale_delivery_after_fit_return_s",
                    "scale_points_found_sqlite",
                    "mlflow_found",
                    "mlflow_lost",
                    "wandb_found",
                    "wandb_lost",
                    "median_ms",
                    "mean_ms",
                )
            }
            for r in good
        ]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = out / f"logger_overhead_{scenario}_{stamp}"
    base.with_suffix(".json").write_text(json.dumps(report, indent=2))
    with open(base.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        w.writeheader()
        w.writerows(rows)

    print()
    print(
        f"Logger overhead, {steps} steps x {k} metrics, best of {repeats} (ratios against `{FLOOR}` in the same run); "
        f"{env_info['cpu']}, {env_info['cpus_usable']} cores; {env_info['date_utc']}"
    )
    print()
    print(markdown_table(rows))
    head = _headline(rows)
    if head and not args.scale:
        print(f"\n{HEADLINE} vs {FLOOR}:")
        print("\n".join(head))
    if args.scale:
        for s in report["scale"]:
            d = s["scale_delivery_s"]
            verdict = "MISS" if d is None or d > TARGETS["scale_delivery_s"] else "PASS"
            print(
                f"\nscale: {s['steps'] * s['metrics']:,} points; on the server {_fmt(d)} s after the end of training "
                f"(target <= {TARGETS['scale_delivery_s']} s) {verdict}; finalize {_fmt(s['finalize_s'])} s; "
                f"MLflow lost {s['mlflow_lost']}, W&B lost {s['wandb_lost']}; mean step {_fmt(s['mean_ms'])} ms"
            )
    if args.small_run:
        print(f"\nthe end of a small run ({steps} steps, median of {repeats}):")
        print("\n".join(_small_run_lines(runs)))
    print(f"\nwrote {base.with_suffix('.json')} and {base.with_suffix('.csv')}")
    print(f"command: {report['command']}")
    failed = [r for r in runs if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
