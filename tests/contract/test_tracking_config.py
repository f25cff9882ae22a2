"""The tracking config file (seed 2's layout + a wandb: section) and its typed schema, checked at the backends."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from lightning_dualtrack.logger import DualTrackWarning
from lightning_dualtrack.trackers import from_config
from lightning_dualtrack.tracking_config import Schema, SchemaError, load_tracking_config

SEED2_CONFIG = """\
mlflow:
  tracking_uri: {uri}
  experiment_name: {experiment}
  run_name: typed
  logging:
    metrics:
      - name: accuracy
        type: float
      - name: epoch
        type: int
    parameters:
      - name: batch_size
        type: int
      - name: learning_rate
        type: float
      - name: optimizer
        type: str
"""


def test_wrong_types_warn_naming_key_expected_value_and_what_was_stored() -> None:
    schema = Schema(parameters={"batch_size": "int", "lr": "float", "use_amp": "bool"}, metrics={"acc": "float"})
    with pytest.warns(DualTrackWarning) as record:
        params = schema.check_params({"batch_size": "thirty-two", "lr": "0.1", "use_amp": "true", "other": object})
        metrics = schema.check_metrics({"acc": "high", "loss": 0.5})
    messages = [str(w.message) for w in record]
    assert params["batch_size"] == "thirty-two" and params["lr"] == 0.1 and params["use_amp"] is True
    assert params["other"] is object  # undeclared: untouched
    assert metrics == {"loss": 0.5}
    assert "param 'batch_size': expected int, got str 'thirty-two'; stored as given ('thirty-two')" in messages
    assert "param 'lr': expected float, got str '0.1'; stored as float 0.1" in messages
    assert "metric 'acc': expected float, got str 'high'; not stored (metrics are numbers)" in messages
    assert Schema(parameters={"n": "int"}).check_params({"n": 3}, warn=pytest.fail) == {"n": 3}  # right type: silent


def test_strict_schema_is_an_error() -> None:
    with pytest.raises(SchemaError, match="'batch_size': expected int, got str 'thirty-two'"):
        Schema(parameters={"batch_size": "int"}, strict=True).check_params({"batch_size": "thirty-two"})
    with pytest.raises(ValueError, match="type of 'x'"):
        Schema(parameters={"x": "tensor"})


def test_the_environment_beats_the_file_and_arguments_beat_both(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(SEED2_CONFIG.format(uri="http://127.0.0.1:9", experiment="from_file") + "wandb:\n  mode: offline\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:8")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from_env")
    tracker = from_config(path)
    assert (tracker.tracking_uri, tracker.backends["wandb"]["enabled"], tracker.name) == ("http://127.0.0.1:8", False, "from_env")
    tracker = from_config(path, experiment_name="from_arg", wandb_mode="offline")
    assert (tracker.name, tracker.backends["wandb"]["enabled"]) == ("from_arg", True)


def test_unknown_keys_are_warned_about_and_bad_layouts_named(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("mlflow:\n  experiment_name: x\n  autolog: true\nextra: 1\n")
    with pytest.warns(DualTrackWarning, match="mlflow.autolog ignored"):
        load_tracking_config(path)
    path.write_text("mlflow:\n  logging:\n    parameters: batch_size\n")
    with pytest.raises(ValueError, match=r"mlflow\.logging\.parameters"):
        load_tracking_config(path)


@pytest.mark.slow
def test_schema_applies_to_what_mlflow_stores(tmp_path: Path, mlflow_server) -> None:
    from mlflow.tracking import MlflowClient

    experiment = f"typed_{uuid.uuid4().hex[:8]}"
    path = tmp_path / "mlflow_config.yaml"
    path.write_text(SEED2_CONFIG.format(uri=mlflow_server.url, experiment=experiment))
    tracker = from_config(path)
    tracker.start_run()
    with pytest.warns(DualTrackWarning, match="'batch_size': expected int"):
        tracker.log_parameters({"batch_size": "thirty-two", "learning_rate": "0.01", "optimizer": "adam"})
    with pytest.warns(DualTrackWarning, match="'accuracy': expected float") as record:
        tracker.log_metrics({"accuracy": "n/a", "epoch": 1.0, "loss": 0.3}, step=0)
    assert not [w for w in record if "'epoch'" in str(w.message)]  # 1.0: an int metric as backends store it
    tracker.end_run()
    client = MlflowClient(mlflow_server.url)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.run_name == "typed"
    assert run.data.params["batch_size"] == "thirty-two" and run.data.params["learning_rate"] == "0.01"
    assert "accuracy" not in run.data.metrics and run.data.metrics["epoch"] == 1.0 and run.data.metrics["loss"] == 0.3

    strict = tmp_path / "strict.yaml"
    strict.write_text(path.read_text() + "strict: true\n")
    tracker = from_config(strict, deliver=False)
    with pytest.raises(SchemaError, match="'batch_size'"):
        tracker.log_parameters({"batch_size": "thirty-two"})
    tracker.end_run()


@pytest.mark.slow
def test_dualtrack_fit_with_a_tracking_config(tmp_path: Path, mlflow_server) -> None:
    """`dualtrack fit --tracking_config`: the file's experiment, URI and run name; its schema and the monitoring."""
    from mlflow.tracking import MlflowClient

    from lightning_dualtrack.cli import main

    experiment = f"cli_cfg_{uuid.uuid4().hex[:8]}"
    path = tmp_path / "mlflow_config.yaml"
    path.write_text(SEED2_CONFIG.format(uri=mlflow_server.url, experiment=experiment) + "wandb:\n  mode: offline\n")
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"
    args = ["fit", "--config", str(recipe), "--tracking_config", str(path), "--trainer.max_epochs", "1",
            "--data.init_args.synthetic_samples_per_class", "6"]
    assert main(args) == 0
    client = MlflowClient(mlflow_server.url)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "typed"
    assert "val/acc" in run.data.metrics and run.data.metrics["system/run/duration_s"] > 0
    assert run.data.metrics["system/storage/payload_mb"] > 0
    assert run.data.tags.get("wandb.run_id")  # the wandb: section turned W&B on
