"""The seeds' tracker APIs (``lightning_dualtrack.trackers``), checked at the backends they logged to."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_dualtrack.trackers import (
    ExperimentTracker,
    MLflowTracker,
    MultiTracker,
    WandbTracker,
    from_config,
)


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [0.5, 0.7, 0.9])
    return fig


@pytest.mark.slow
def test_seed2_example_verbatim(mlflow_server, monkeypatch) -> None:
    """Seed 2's README example, as written but for the import; each line's meaning checked in MLflow."""
    from mlflow.tracking import MlflowClient

    experiment_name = f"seed2_{uuid.uuid4().hex[:8]}"
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    fig = _figure()

    # --- the seed's code
    tracker = ExperimentTracker(experiment_name=experiment_name, tracking_uri=mlflow_server.url, run_name="baseline")
    tracker.start_run()
    tracker.log_parameters({"learning_rate": 0.01, "batch_size": 32, "optimizer": "adam"})
    tracker.log_metrics({"accuracy": 0.91, "loss": 0.25})
    tracker.log_model(model, "model_name", input_example=np.random.rand(2, 4).astype(np.float32))
    tracker.log_visualization(fig, "confusion_matrix")
    tracker.end_run()
    # ---

    # MLflow resolves a LoggedModel listed or loaded through `runs:/<id>/model_name` with the *default* tracking URI
    # (`ModelsArtifactRepository` makes a bare `MlflowClient()`), not the client's: point it at the server, as a user
    # reading this run back would. (Passing in the full suite only hid this: an earlier test had left mlflow's global
    # tracking URI set; conftest now resets it after every test.)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    client = MlflowClient(mlflow_server.url)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment_name).experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "baseline"
    assert {k: run.data.params[k] for k in ("learning_rate", "batch_size", "optimizer")} == {
        "learning_rate": "0.01", "batch_size": "32", "optimizer": "adam"}
    assert run.data.metrics["accuracy"] == pytest.approx(0.91) and run.data.metrics["loss"] == pytest.approx(0.25)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model_name")}
    assert "model_name/MLmodel" in artifacts
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert any(p.startswith("images/confusion_matrix") and p.endswith(".png") for p in images), images
    # seed 2's monitoring list, on MLflow's System metrics tab
    system = {k: v for k, v in run.data.metrics.items() if k.startswith("system/")}
    assert system["system/run/duration_s"] > 0 and system["system/run/peak_memory_mb"] > 10
    assert system["system/storage/journal_mb"] > 0 and system["system/storage/payload_mb"] > 0
    assert system["system/storage/run_dir_mb"] >= system["system/storage/payload_mb"]
    # MLflow only: the seed is an MLflow project
    assert tracker.wandb_run_id is None and not list(Path("dualtrack_runs").glob("*/wandb"))
    import mlflow.pytorch

    loaded = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model_name")
    x = torch.rand(2, 4)
    torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.slow
def test_multi_tracker_is_one_run_in_both_backends(mlflow_server) -> None:
    from mlflow.tracking import MlflowClient

    from tests.helpers import wandb_run

    experiment = f"multi_{uuid.uuid4().hex[:8]}"
    tracker = MultiTracker([MLflowTracker(experiment, tracking_uri=mlflow_server.url), WandbTracker("har_project", mode="offline")])
    tracker.start_run()
    tracker.log_parameters({"lr": 0.1})
    for step in range(3):
        tracker.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    tracker.end_run()

    client = MlflowClient(mlflow_server.url)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == pytest.approx([1.0, 0.5, 1 / 3])
    w = wandb_run(tracker.run_dir, tracker.run_id)
    assert w.config["lr"] == 0.1 and w.config["mlflow/run_id"] == run.info.run_id
    assert [row["loss"] for row in w.history if "loss" in row] == pytest.approx([1.0, 0.5, 1 / 3])
    assert tracker.backends["wandb"]["project"] == "har_project"


def test_single_backend_trackers_choose_their_backend() -> None:
    m = MLflowTracker("exp", tracking_uri="http://127.0.0.1:9")
    assert (m.backends["mlflow"]["enabled"], m.backends["wandb"]["enabled"], m.name, m.tracking_uri) == (True, False, "exp", "http://127.0.0.1:9")
    w = WandbTracker("proj", entity="team", mode="offline")
    assert (w.backends["mlflow"]["enabled"], w.backends["wandb"]["enabled"], w.backends["wandb"]["project"], w.backends["wandb"]["mode"]) == (False, True, "proj", "offline")
    with pytest.raises(TypeError, match="MLflowTracker/WandbTracker"):
        MultiTracker([object()])


@pytest.mark.slow
def test_tracker_in_a_trainer_logs_like_the_logger(mlflow_server) -> None:
    """The trackers are DualTrackLoggers: a Trainer logs through them, and the run ends with the monitoring."""
    from mlflow.tracking import MlflowClient

    from tests.helpers import TinyModel, loaders, trainer

    experiment = f"trainer_{uuid.uuid4().hex[:8]}"
    logger = ExperimentTracker(experiment_name=experiment, tracking_uri=mlflow_server.url)
    trainer(logger, max_steps=4).fit(TinyModel(), *loaders())
    client = MlflowClient(mlflow_server.url)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["lr"] == "0.05"
    assert "train/loss" in run.data.metrics and "system/run/duration_s" in run.data.metrics


def test_from_config_reads_the_seed_layout(tmp_path: Path) -> None:
    path = tmp_path / "mlflow_config.yaml"
    path.write_text(
        "mlflow:\n  tracking_uri: http://127.0.0.1:9\n  experiment_name: har\n  run_name: baseline\n"
        "  logging:\n    metrics:\n      - {name: accuracy, type: float}\n"
        "    parameters:\n      - {name: batch_size, type: int}\n"
    )
    tracker = from_config(path)
    assert (tracker.name, tracker.tracking_uri, tracker._config.run_name) == ("har", "http://127.0.0.1:9", "baseline")
    assert tracker.backends["wandb"]["enabled"] is False  # no wandb: section
    assert tracker.schema.parameters == {"batch_size": "int"} and tracker.schema.metrics == {"accuracy": "float"}
    path.write_text(path.read_text() + "wandb:\n  project: har_wb\n  mode: offline\n")
    tracker = from_config(path, run_name="override")
    assert (tracker.backends["wandb"]["enabled"], tracker.backends["wandb"]["project"], tracker.backends["wandb"]["mode"]) == (True, "har_wb", "offline")
    assert tracker._config.run_name == "override"  # an explicit argument beats the file


class _WithExample(torch.nn.Module):
    """A model that declares its input, as a LightningModule's ``example_input_array`` does."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 3)
        self.example_input_array = torch.zeros(1, 4)

    def forward(self, x):
        return self.layer(x)


@pytest.mark.slow
def test_log_model_without_input_example_logs_the_model(mlflow_server, monkeypatch) -> None:
    """``log_model(model, "x")`` with no ``input_example``: a model that declares an example is an MLflow pt2 model
    (loadable, with a signature); one that declares none is logged as its weights (MLflow's state-dict layout),
    each with a warning saying what was done. Both are in MLflow and in W&B."""
    import mlflow.pytorch
    from mlflow.tracking import MlflowClient

    from lightning_dualtrack import create_tracker
    from lightning_dualtrack.logger import DualTrackWarning
    from lightning_dualtrack.sinks.wandb.runfile import read_runs

    experiment = f"log_model_{uuid.uuid4().hex[:8]}"
    declared, plain = _WithExample(), torch.nn.Sequential(torch.nn.Linear(4, 3))
    tracker = create_tracker(experiment_name=experiment, tracking_uri=mlflow_server.url, wandb_mode="offline", log_system_info=False)
    with pytest.warns(DualTrackWarning, match=r"no `input_example` given: exported the pt2 graph with the model's example_input_array"):
        tracker.log_model(declared, "declared")
    with pytest.warns(DualTrackWarning, match=r"Sequential declares none .*saved its weights only \(state_dict.pth"):
        tracker.log_model(plain, "x")
    tracker.end_run()

    client = MlflowClient(mlflow_server.url)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    loaded = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/declared")
    x = torch.rand(5, 4)  # another batch size than the example's: the batch dimension is dynamic
    torch.testing.assert_close(loaded(x), declared(x))
    assert {a.path for a in client.list_artifacts(run.info.run_id, "x")} == {"x/state_dict.pth", "x/state_dict.json"}
    local = client.download_artifacts(run.info.run_id, "x/state_dict.pth")
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 3))
    fresh.load_state_dict(torch.load(local, weights_only=True))
    torch.testing.assert_close(fresh(x), plain(x))
    w = read_runs(tracker.run_dir, tracker.run_id)
    assert len([a for a in w.artifacts if a.get("type") == "model"]) == 2


def test_har_module_example_comes_from_its_preprocess_size() -> None:
    from lightning_dualtrack.har import ClipHarModule
    from lightning_dualtrack.sinks.mlflow.models import example_from_model

    model = ClipHarModule("dualtrack-tiny")
    example, source = example_from_model(model)
    size = model.preprocess_cfg["size"]
    assert tuple(example.shape) == ((2, 3, size, size) if isinstance(size, int) else (2, 3, *size))
    assert "preprocess size" in source
    assert example_from_model(torch.nn.Linear(2, 2)) is None


@pytest.mark.slow
def test_response_times_per_backend_reach_mlflow_wandb_and_status(mlflow_server, capsys) -> None:
    """Seed 2's monitoring: each backend's request latency, p50/p95, among the delivery figures
    (``system/dualtrack/<backend>/``: MLflow's System metrics tab, hidden in W&B) and in ``dualtrack status``."""
    from mlflow.tracking import MlflowClient

    from lightning_dualtrack.cli import main
    from tests.helpers import wandb_values

    experiment = f"latency_{uuid.uuid4().hex[:8]}"
    tracker = ExperimentTracker(experiment_name=experiment, tracking_uri=mlflow_server.url, wandb=True, wandb_mode="offline")
    tracker.start_run()
    for step in range(5):
        tracker.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    tracker.end_run()

    client = MlflowClient(mlflow_server.url)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    p50 = run.data.metrics["system/dualtrack/mlflow/response_p50_ms"]
    p95 = run.data.metrics["system/dualtrack/mlflow/response_p95_ms"]
    assert 0 < p50 <= p95 < 10_000  # real round trips to a loopback server: milliseconds, not zero
    assert run.data.metrics["system/dualtrack/mlflow/response_window"] >= 3  # at least the run's creation requests
    w50 = wandb_values(tracker.run_dir, tracker.run_id, "system/dualtrack/wandb/response_p50_ms")
    w95 = wandb_values(tracker.run_dir, tracker.run_id, "system/dualtrack/wandb/response_p95_ms")
    assert w50 and w95 and 0 < w50[-1][1] <= w95[-1][1]

    capsys.readouterr()
    assert main(["status", str(tracker.run_dir)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "response p50" in line]
    assert len(lines) == 2, out  # one per backend
    import re

    for line in lines:
        m = re.search(r"requests (\d+)  response p50 ([\d.]+) ms  p95 ([\d.]+) ms", line)
        assert m and int(m[1]) > 0 and 0 < float(m[2]) <= float(m[3]), line


@pytest.mark.slow
def test_response_times_measure_a_slow_server(mlflow_server) -> None:
    """Behind a proxy that holds every request 150 ms, MLflow's p50 is at least that: the figure is the real
    round trip, not a constant."""
    import time

    from mlflow.tracking import MlflowClient

    from tests.e2e.reliability.faults import PASS, FaultProxy

    def slow(method: str, path: str, body: bytes):
        time.sleep(0.15)
        return PASS, None

    experiment = f"slow_{uuid.uuid4().hex[:8]}"
    with FaultProxy(mlflow_server.url) as proxy:
        proxy.mode = slow
        tracker = ExperimentTracker(experiment_name=experiment, tracking_uri=proxy.url, monitoring=False)
        tracker.log_metrics({"loss": 1.0}, step=0)
        tracker.end_run()
    client = MlflowClient(mlflow_server.url)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert 150 <= run.data.metrics["system/dualtrack/mlflow/response_p50_ms"] <= run.data.metrics["system/dualtrack/mlflow/response_p95_ms"]


def test_response_times_are_nearest_rank_percentiles_over_a_window() -> None:
    from lightning_dualtrack.sinks.base import ResponseTimes

    rt = ResponseTimes(window=100)
    assert rt.figures() == {}
    for ms in range(1, 201):  # the first 100 fall out of the window
        rt.observe(ms / 1000)
    figures = rt.figures()
    assert figures == {"response_p50_ms": pytest.approx(150.0), "response_p95_ms": pytest.approx(195.0), "response_window": 100.0}
