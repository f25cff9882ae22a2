"""Params a person can read (issue 12 item 3): what a short quickstart stores in MLflow and in W&B's config."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from lightning_dualtrack.cli import main

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
_PREFIXES = ("trainer/", "model/", "data/", "optimizer/", "lr_scheduler/")


@pytest.mark.slow
def test_quickstart_params_each_setting_once_at_its_configured_value(mlflow_server, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    from tests.helpers import _lookup, run_dirs, wandb_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    experiment = f"params_{uuid.uuid4().hex[:8]}"
    args = ["fit", "--config", str(RECIPES / "quickstart.yaml"), "--experiment_name", experiment,
            "--trainer.max_epochs", "1", "--data.init_args.synthetic_samples_per_class", "6"]
    assert main(args) == 0
    client = MlflowClient(mlflow_server.url)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    params = run.data.params

    # one name per setting, grouped: nothing flat beside a grouped duplicate, nothing internal, nothing changed
    assert sorted(k for k in params if not k.startswith(_PREFIXES)) == ["seed_everything"]
    assert params["seed_everything"] == "0"
    assert not [k for k in params if "_instantiator" in k or "_class_path" in k or k.rsplit("/", 1)[-1].startswith("_")]
    assert not [k for k in params if ".v" in k.rsplit("/", 1)[-1]]
    # nothing empty: no `[{}, {}]`, no `[]`, no unset (None) data or trainer settings
    assert not [k for k, v in params.items() if v in ("[]", "{}") or v.startswith("[{}")]
    assert not [k for k, v in params.items() if v == "None" and not k.startswith("model/")]
    # the Trainer's settings, as configured
    expected_trainer = {"max_epochs": "1", "precision": "32-true", "accumulate_grad_batches": "1", "devices": "1",
                        "accelerator": "cpu", "strategy": "SingleDeviceStrategy", "log_every_n_steps": "5"}
    assert {k: params[f"trainer/{k}"] for k in expected_trainer} == expected_trainer
    # data settings at their resolved values (the module's 64 px, eval batch = batch): not `image_size=None`
    assert params["data/preprocess/size"] == "64" and params["data/eval_batch_size"] == "32"
    assert "data/image_size" not in params and "data/skipped_images/first" not in params
    # optimizer settings from the config, per group name, not the warm-up's live values
    assert params["optimizer/head/lr"] == params["model/lr"] == "0.003"
    assert params["optimizer/backbone/lr"] == params["model/backbone_lr"] == "0.001"
    assert params["optimizer/betas"] == "[0.9, 0.98]" and not [k for k in params if "group" in k]
    # the saved config named for what it is
    assert [a.path for a in client.list_artifacts(run.info.run_id, "config")] == ["config/fit_config.yaml"]

    # W&B's config holds the same settings under the same names
    (name,) = run_dirs(Path("dualtrack_runs"))
    run_dir = Path("dualtrack_runs") / name
    config = wandb_run(run_dir, run_dir.name).config
    assert _lookup(config, "trainer/max_epochs") == 1 and _lookup(config, "optimizer/head/lr") == 0.003
    assert not [k for k in config if str(k).startswith("_instantiator")]
