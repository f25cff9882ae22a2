"""Shared pieces of the Lightning logger-contract ports (``tests/test_lightning_contract*.py``).

Upstream reads what a logger did from mocks of ``mlflow`` and ``wandb``; the ports read what reached the
backends instead: the real ``mlflow server`` (``MlflowClient``) and the offline W&B run file
(:mod:`lightning_dualtrack.sinks.wandb.runfile`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

from lightning_dualtrack import DualTrackLogger
from tests.helpers import wandb_run, wandb_values


def new_logger(server: Any, tmp_path: Path, cls: type = DualTrackLogger, **kwargs: Any) -> Any:
    """A logger on the test server (a fresh experiment), W&B offline, runs under ``tmp_path/runs``."""
    kwargs.setdefault("experiment_name", f"contract_{uuid.uuid4().hex[:8]}")
    kwargs.setdefault("tracking_uri", server.url)
    kwargs.setdefault("wandb_mode", "offline")
    kwargs.setdefault("save_dir", tmp_path / "runs")
    kwargs.setdefault("log_system_info", False)
    return cls(**kwargs)


class HistoryLogger(DualTrackLogger):
    """Upstream's ``StoreHistoryLogger``: what Lightning handed to ``log_metrics``, in order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.history: list[tuple[int | None, dict[str, float]]] = []
        self.saved_checkpoints = 0

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        super().log_metrics(metrics, step)
        self.history.append((step, dict(metrics)))

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        super().after_save_checkpoint(checkpoint_callback)
        self.saved_checkpoints += 1


def client(server: Any):
    from mlflow.tracking import MlflowClient

    return MlflowClient(server.url)


def mlflow_runs(server: Any, experiment_name: str) -> list[Any]:
    c = client(server)
    experiment = c.get_experiment_by_name(experiment_name)
    return [] if experiment is None else c.search_runs([experiment.experiment_id])


def mlflow_run(server: Any, logger: DualTrackLogger) -> Any:
    """The one MLflow run of the logger's experiment."""
    runs = mlflow_runs(server, logger.name)
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def user_metrics(run: Any) -> dict[str, float]:
    """The run's metrics without the logger's own delivery health (``system/dualtrack/...``)."""
    return {k: v for k, v in run.data.metrics.items() if not k.startswith("system/")}


def user_config(logger: DualTrackLogger) -> dict[str, Any]:
    """The W&B config without the cross-links the logger adds (``dualtrack/run_id``, ``mlflow/*``)."""
    config = wandb_run(logger.run_dir, logger.run_id).config
    return {k: v for k, v in config.items() if not k.startswith(("dualtrack/", "mlflow/"))}


def mlflow_points(server: Any, run_id: str, key: str) -> set[tuple[int, float]]:
    return {(m.step, round(m.value, 6)) for m in client(server).get_metric_history(run_id, key)}


def wandb_points(logger: DualTrackLogger, key: str) -> set[tuple[int, float]]:
    return {(int(step), round(float(value), 6)) for step, value in wandb_values(logger.run_dir, logger.run_id, key)}


def expected_points(history: Iterable[tuple[int | None, Mapping[str, float]]]) -> dict[str, set[tuple[int, float]]]:
    out: dict[str, set[tuple[int, float]]] = {}
    for step, metrics in history:
        for key, value in metrics.items():
            out.setdefault(key, set()).add((step, round(float(value), 6)))
    return out


def assert_delivered(server: Any, logger: HistoryLogger, status: str = "FINISHED", exit_code: int = 0) -> Any:
    """Every (key, step, value) Lightning handed to ``log_metrics`` is in the MLflow run and the W&B run, and
    each run ended with ``status`` / ``exit_code``. Returns the MLflow run."""
    run = mlflow_run(server, logger)
    assert run.info.status == status
    expected = expected_points(logger.history)
    assert expected, "Lightning logged nothing"
    for key, points in expected.items():
        assert mlflow_points(server, run.info.run_id, key) == points, key
        assert wandb_points(logger, key) == points, key
    # Like the stock WandbLogger, finalize leaves the W&B run open for a next stage (test after fit); the run
    # is finished at interpreter exit or by end_run(), which is what a script reading it back calls.
    logger.end_run()
    assert wandb_run(logger.run_dir, logger.run_id).exit_code == exit_code
    return run


class LazyInitExperimentCheck(Callback):
    """Upstream's: by ``setup`` the experiment exists on rank zero (here: the run is started, its journal open)."""

    def setup(self, trainer, pl_module, stage=None):
        if trainer.global_rank > 0:
            return
        assert trainer.logger._run.journal is not None
        assert (Path(trainer.logger.save_dir) / "journal.jsonl").exists()


class RankZeroLoggerCheck(Callback):
    """Upstream's: rank > 0 sees a ``DummyExperiment``; here every log call there is also a no-op."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        from lightning.pytorch.loggers.logger import DummyExperiment

        is_dummy = isinstance(trainer.logger.experiment, DummyExperiment)
        if trainer.is_global_zero:
            assert not is_dummy
            trainer.logger.log_metrics({"from_rank_0": 0.0}, step=0)
        else:
            assert is_dummy
            assert pl_module.logger.experiment.something(foo="bar") is None
            trainer.logger.log_metrics({"from_rank_1": 1.0}, step=0)
            trainer.logger.log_hyperparams({"rank_1_param": 1})
            trainer.logger.set_tags({"rank_1_tag": "x"})
