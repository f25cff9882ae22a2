"""The `dualtrack` LightningCLI, the recipes, and DualTrackLogger inside a plain LightningCLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.cli import LightningCLI

from lightning_dualtrack import DualTrackLogger
from lightning_dualtrack.har import HAR_CLASSES
from lightning_dualtrack.lightning_cli import DualTrackCLI

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TRAINING_RECIPES = sorted(p for p in RECIPES.glob("*.yaml") if p.name != "ddp.yaml")
# the GPU recipes, made to parse and instantiate on this CPU machine without downloading weights
CPU_OVERRIDES = ["--trainer.accelerator=cpu", "--trainer.precision=32-true", "--model.init_args.pretrained=null"]


def _cli(args: list[str], **kwargs) -> DualTrackCLI:
    return DualTrackCLI(args=args, run=False, auto_configure_optimizers=False, **kwargs)


@pytest.mark.parametrize("recipe", TRAINING_RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses_and_instantiates(recipe: Path) -> None:
    overrides = [] if recipe.name == "quickstart.yaml" else CPU_OVERRIDES
    cli = _cli(["--config", str(recipe), *overrides])
    assert isinstance(cli.trainer.logger, DualTrackLogger)
    assert cli.model.class_names and len(cli.model.class_names) == 15


def test_quickstart_recipe_comments_every_setting() -> None:
    """Each `key: value` line of the quickstart recipe says why (a comment on the line)."""
    for line in (RECIPES / "quickstart.yaml").read_text().splitlines():
        body = line.split("#")[0].strip()
        if not body or body.endswith(":") or body.startswith(("- class_path", "class_path", "init_args")):
            continue
        assert "#" in line, f"uncommented setting in quickstart.yaml: {line.strip()}"


@pytest.mark.parametrize("overlay", sorted((RECIPES / "tracking").glob("*.yaml")), ids=lambda p: p.name)
def test_tracking_overlays_combine_with_a_recipe(overlay: Path) -> None:
    cli = _cli(["--config", str(RECIPES / "quickstart.yaml"), "--config", str(overlay)])
    logger = cli.trainer.logger
    if overlay.name == "none.yaml":
        assert logger is None
    else:
        assert isinstance(logger, DualTrackLogger)
        assert logger.backends["mlflow"]["enabled"] == (overlay.name != "wandb_only.yaml")
        assert logger.backends["wandb"]["enabled"] == (overlay.name != "mlflow_only.yaml")


def test_ddp_overlay_parses() -> None:
    cfg = yaml.safe_load((RECIPES / "ddp.yaml").read_text())
    assert cfg["trainer"]["strategy"] == "ddp"


@pytest.mark.parametrize(
    ("flags", "mlflow", "wandb", "experiment"),
    [
        (["--no_wandb"], True, False, "clip_har_quickstart"),
        (["--no_mlflow", "--experiment_name", "har"], False, True, "har"),
        (["--use_mlflow", "--use_wandb"], True, True, "clip_har_quickstart"),
    ],
)
def test_tracking_flags(flags, mlflow, wandb, experiment) -> None:
    cli = _cli(["--config", str(RECIPES / "quickstart.yaml"), *flags])
    logger = cli.trainer.logger
    assert (logger.backends["mlflow"]["enabled"], logger.backends["wandb"]["enabled"], logger.name) == (mlflow, wandb, experiment)


def test_no_tracking_flag_removes_the_logger() -> None:
    cli = _cli(["--config", str(RECIPES / "quickstart.yaml"), "--no_tracking"])
    assert cli.trainer.logger is None


@pytest.mark.parametrize(
    "flags", [["--use_mlflow", "--no_mlflow"], ["--use_wandb", "--no_wandb"], ["--no_tracking", "--use_wandb"]]
)
def test_contradicting_flags_are_a_one_line_error(flags, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _cli(["--config", str(RECIPES / "quickstart.yaml"), *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("dualtrack: error:")]  # (pytest's own argv
    assert flags[0] in line and flags[1] in line  # also makes LightningCLI warn here: not one of ours)


class _ParseOnly(DualTrackCLI):
    """Parse a subcommand and build its objects, as `dualtrack <command>` does, without running it."""

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def _quickstart_checkpoint(tmp_path: Path) -> Path:
    """A checkpoint as `dualtrack fit --config recipes/quickstart.yaml` writes it: the module's hparams (its resolved
    class list, LightningCLI's `_class_path`) and the run ids."""
    cli = _ParseOnly(args=["fit", "--config", str(RECIPES / "quickstart.yaml")], auto_configure_optimizers=False)
    cli.trainer.strategy.connect(cli.model)
    path = tmp_path / "last.ckpt"
    cli.trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    assert ckpt["hyper_parameters"]["class_names"] == list(HAR_CLASSES)
    ckpt["dualtrack"] = {"run_id": "abcd1234", "save_dir": str(tmp_path / "runs")}
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("recipe", TRAINING_RECIPES, ids=lambda p: p.name)
def test_every_recipe_takes_a_quickstart_checkpoint(recipe: Path, tmp_path: Path) -> None:
    """``--ckpt_path`` with any recipe and command: the checkpoint's hparams (a resolved class list where the
    data module has None) do not trip Lightning's hparam merge, and the logger continues the checkpoint's run."""
    from lightning.pytorch.loggers.utilities import _log_hyperparams

    ckpt = _quickstart_checkpoint(tmp_path)
    overrides = [] if recipe.name == "quickstart.yaml" else CPU_OVERRIDES
    for command in ("fit", "validate", "test", "predict"):
        cli = _ParseOnly(args=[command, "--config", str(recipe), *overrides, "--ckpt_path", str(ckpt)],
                         auto_configure_optimizers=False)
        assert cli.model.hparams.class_names == list(HAR_CLASSES)  # from the checkpoint
        assert cli.trainer.logger.run_id == "abcd1234", command
        cli.trainer.strategy.connect(cli.model)
        cli.trainer._data_connector.attach_datamodule(cli.model, cli.datamodule)
        _log_hyperparams(cli.trainer)  # what Trainer.fit/test do first: raised "Error while merging hparams"


@pytest.mark.slow
def test_plain_lightning_cli_with_dualtrack_logger_and_callbacks(tmp_path: Path) -> None:
    config = {
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 1,
            "limit_train_batches": 3,
            "limit_val_batches": 2,
            "enable_progress_bar": False,
            "logger": {
                "class_path": "lightning_dualtrack.DualTrackLogger",
                "init_args": {"experiment_name": "plain_cli", "wandb_mode": "offline", "save_dir": str(tmp_path / "runs")},
            },
            "callbacks": [
                {"class_path": "lightning_dualtrack.callbacks.ClassificationReport"},
                {"class_path": "lightning_dualtrack.callbacks.ThroughputMonitor"},
            ],
        },
        "model": {"class_path": "lightning_dualtrack.har.ClipHarModule", "init_args": {"model_name": "dualtrack-tiny"}},
        "data": {
            "class_path": "lightning_dualtrack.har.HarDataModule",
            "init_args": {"source": "synthetic", "synthetic_samples_per_class": 6, "batch_size": 16},
        },
    }
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = LightningCLI(args=["fit", "--config", str(path)], auto_configure_optimizers=False)
    logger = cli.trainer.logger
    assert isinstance(logger, DualTrackLogger)
    # LightningCLI saved its config into the run directory (save_dir == the run directory)
    assert (logger.run_dir / "config.yaml").exists()
    from mlflow.tracking import MlflowClient

    # absolute: MLflow caches its store per URI string, and each test runs in its own directory
    run = MlflowClient(f"sqlite:///{Path.cwd() / 'mlflow.db'}").get_run(logger.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert any(k.startswith("val/f1/") for k in run.data.metrics)


@pytest.mark.slow
def test_quickstart_runs_end_to_end_and_learns(tmp_path: Path) -> None:
    """The `make quickstart` job, shortened: fit, test in the same run, config in both backends."""
    from mlflow.tracking import MlflowClient

    from lightning_dualtrack.cli import main
    from tests.helpers import wandb_run

    args = ["fit", "--config", str(RECIPES / "quickstart.yaml"), "--test_after_fit", "true", "--trainer.max_epochs", "4"]
    assert main(args) == 0
    from tests.helpers import run_dirs

    (name,) = run_dirs(Path("dualtrack_runs"))  # one run directory (beside the logger's hidden indexes)
    logger_dir = Path("dualtrack_runs") / name
    client = MlflowClient(f"sqlite:///{Path.cwd() / 'mlflow.db'}")  # absolute: see above
    run = client.search_runs([client.get_experiment_by_name("clip_har_quickstart").experiment_id])[0]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["val/acc"] > 0.3  # 15 classes: chance is 0.067
    assert "test/acc" in run.data.metrics
    # per-class test values are one point each: a table and a report, not 15 scalar charts (validation keeps them)
    assert not [k for k in run.data.metrics if k.startswith("test/f1/")]
    assert len([k for k in run.data.metrics if k.startswith("val/f1/")]) == 15
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "export"} <= artifacts
    # the exported model is an MLflow 3 LoggedModel of the run (not plain run artifacts), registered @champion
    assert [o.model_id for o in run.outputs.model_outputs] == [
        m.model_id for m in client.search_logged_models([run.info.experiment_id])
    ]
    version = client.get_model_version_by_alias("clip_har_quickstart", "champion")
    assert version.source == f"models:/{run.outputs.model_outputs[0].model_id}"
    w = wandb_run(logger_dir, logger_dir.name)
    assert w.config["mlflow/run_id"] == run.info.run_id
    from tests.helpers import wandb_values

    # the same validation accuracy series in W&B as in MLflow (one row per epoch, same final value)
    val_acc = [v for _, v in wandb_values(logger_dir, logger_dir.name, "val/acc")]
    assert len(val_acc) == len(client.get_metric_history(run.info.run_id, "val/acc")) == 4
    assert val_acc[-1] == pytest.approx(run.data.metrics["val/acc"])


# --------------------------------------------------------------------------------------------- the seed's flags
_FAST = ["--model.init_args.model_name=dualtrack-tiny"]  # the flags are under test, not the ViT-B/16 build


def _callback_names(cli) -> list[str]:
    return [type(cb).__name__ for cb in cli.trainer.callbacks]


@pytest.mark.parametrize("recipe", TRAINING_RECIPES, ids=lambda p: p.name)
@pytest.mark.parametrize(
    ("flags", "mlflow", "wandb"),
    [(["--no_tracking"], None, None), (["--no_mlflow"], False, True), (["--no_wandb"], True, False),
     (["--use_mlflow", "--use_wandb"], True, True), (["--use_wandb", "--no_mlflow"], False, True)],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_tracking_flags_work_with_every_recipe(recipe: Path, flags, mlflow, wandb, capsys) -> None:
    overrides = [] if recipe.name == "quickstart.yaml" else [*CPU_OVERRIDES, *_FAST]
    cli = _cli(["--config", str(recipe), *overrides, *flags])
    logger = cli.trainer.logger
    if mlflow is None:
        assert logger is None
        assert "LearningRateMonitor" not in _callback_names(cli)  # it raises without a logger
        if "LearningRateMonitor" in (recipe.read_text()):
            notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[dualtrack] --no_tracking")]
            assert notes == ["[dualtrack] --no_tracking: dropped LearningRateMonitor (it needs a logger)"]
    else:
        assert (logger.backends["mlflow"]["enabled"], logger.backends["wandb"]["enabled"]) == (mlflow, wandb)
        assert ("LearningRateMonitor" in _callback_names(cli)) == ("LearningRateMonitor" in recipe.read_text())


def test_no_logger_overlay_drops_callbacks_that_need_one() -> None:
    cli = _cli(["--config", str(RECIPES / "quickstart.yaml"), "--config", str(RECIPES / "tracking" / "none.yaml")])
    assert cli.trainer.logger is None and "LearningRateMonitor" not in _callback_names(cli)


@pytest.mark.slow
def test_quickstart_runs_with_no_tracking(tmp_path: Path, capsys) -> None:
    from lightning_dualtrack.cli import main

    args = ["fit", "--config", str(RECIPES / "quickstart.yaml"), "--no_tracking", "--test_after_fit", "true",
            "--trainer.max_epochs", "1", "--data.init_args.synthetic_samples_per_class", "6"]
    assert main(args) == 0
    assert "dropped LearningRateMonitor" in capsys.readouterr().err
    assert not Path("dualtrack_runs").exists() and not Path("mlflow.db").exists()  # nothing tracked
    assert list(Path("checkpoints").glob("*.ckpt"))  # but training happened, checkpoints and all


# ------------------------------------------------------------------ precedence: argument > env var > recipe default
def test_wandb_mode_env_beats_the_recipe(monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = _cli(["--config", str(RECIPES / "quickstart.yaml")]).trainer.logger  # the recipe says offline
    assert logger.backends["wandb"]["enabled"] is False and logger.backends["mlflow"]["enabled"] is True


def test_an_explicit_argument_beats_the_env(monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from_env")
    cli = _cli(["--config", str(RECIPES / "quickstart.yaml"), "--trainer.logger.init_args.wandb_mode=offline",
                "--experiment_name", "from_flag"])
    logger = cli.trainer.logger
    assert (logger.backends["wandb"]["enabled"], logger.backends["wandb"]["mode"], logger.name) == (True, "offline", "from_flag")


def test_mlflow_and_wandb_env_vars_beat_recipe_values(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from_env")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_PROJECT", "project_from_env")
    overlay = RECIPES / "tracking" / "remote_mlflow.yaml"  # names a tracking_uri of its own
    logger = _cli(["--config", str(RECIPES / "quickstart.yaml"), "--config", str(overlay)]).trainer.logger
    assert (logger.name, logger.tracking_uri, logger.backends["wandb"]["project"]) == ("from_env", "http://127.0.0.1:9", "project_from_env")


def test_without_env_the_recipe_decides() -> None:
    logger = _cli(["--config", str(RECIPES / "quickstart.yaml")]).trainer.logger
    assert (logger.name, logger.backends["wandb"]["mode"]) == ("clip_har_quickstart", "offline")


# ------------------------------------------------------------------------------------------- --tracking_config
_TRACKING = """\
mlflow:
  tracking_uri: http://127.0.0.1:9
  experiment_name: seed2_experiment
  run_name: from_file
  logging:
    parameters: [{name: trainer/max_epochs, type: int}]
wandb:
  project: seed2_project
  mode: disabled
"""


def test_tracking_config_flag_sets_the_logger(tmp_path: Path) -> None:
    from lightning_dualtrack.trackers import ExperimentTracker

    path = tmp_path / "mlflow_config.yaml"
    path.write_text(_TRACKING)
    cli = _cli(["--config", str(RECIPES / "quickstart.yaml"), "--tracking_config", str(path)])
    logger = cli.trainer.logger
    assert isinstance(logger, ExperimentTracker) and cli.trainer.loggers == [logger]
    assert (logger.name, logger.tracking_uri, logger._config.run_name) == ("seed2_experiment", "http://127.0.0.1:9", "from_file")
    assert (logger.backends["wandb"]["project"], logger.backends["wandb"]["enabled"]) == ("seed2_project", False)  # mode: disabled
    assert logger.schema.parameters == {"trainer/max_epochs": "int"}
    assert logger._config.log_model is True and logger.root_dir == "dualtrack_runs"  # the recipe's other settings stay
    # the command line beats the file
    cli = _cli(["--config", str(RECIPES / "quickstart.yaml"), "--tracking_config", str(path), "--experiment_name", "flag",
                "--trainer.logger.init_args.run_name=cli_name"])
    assert (cli.trainer.logger.name, cli.trainer.logger._config.run_name) == ("flag", "cli_name")
