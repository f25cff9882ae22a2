"""Lightning's generic logger tests, ported to ``DualTrackLogger`` with real backends (issue 11).

Ports of ``tests/tests_pytorch/loggers/test_all.py`` and ``test_logger.py`` (Lightning 2.6.5, the release
tag nearest the installed 2.6.6; the logger tests did not change between them). Each test names the upstream
test it ports. Upstream reads mocks of ``mlflow``/``wandb`` or a custom in-memory logger; each port asserts
what upstream asserts about the logger **and** what reached the backends: the MLflow run on a real
``mlflow server`` on loopback and the offline W&B run file. The MLflow/W&B-specific logger tests are ported in
``test_lightning_contract_backends.py``; ``test_logger_compat.py`` holds the README's drop-in rows.

Not ported (they test Lightning's own classes, not a logger): ``test_dummylogger_noop_method_calls``,
``test_dummlogger_arbitrary_method_calls``, ``test_dummyexperiment_support_item_assignment`` (``DummyLogger`` /
``DummyExperiment`` themselves; what a DualTrackLogger does on rank > 0, where Lightning hands out a
``DummyExperiment``, is ``test_rank_nonzero_is_a_noop``).
"""

from __future__ import annotations

import pickle
from argparse import Namespace
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.logger import DummyExperiment
from lightning.pytorch.tuner.tuning import Tuner
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lightning_dualtrack import DualTrackLogger
from lightning_dualtrack.core.journal import JournalReader
from lightning_dualtrack.core.messages import DualTrackWarning
from tests.contract_helpers import (
    HistoryLogger,
    LazyInitExperimentCheck,
    RankZeroLoggerCheck,
    assert_delivered,
    client,
    mlflow_points,
    mlflow_run,
    mlflow_runs,
    new_logger,
    user_config,
    user_metrics,
    wandb_points,
)
from tests.helpers import run_dirs, wandb_run

QUIET = dict(enable_progress_bar=False, enable_model_summary=False)


class FitTestModel(BoringModel):
    def training_step(self, batch, batch_idx):
        loss = self.step(batch)
        self.log("train_some_val", loss)
        return {"loss": loss}

    def on_validation_epoch_end(self):
        self.log_dict({"early_stop_on": torch.tensor(1), "val_loss": torch.tensor(0.5)})

    def on_test_epoch_end(self):
        self.log("test_loss", torch.tensor(2))


class TrainLossModel(BoringModel):
    def training_step(self, batch, batch_idx):
        loss = self.step(batch)
        self.log("train_loss", loss)
        return {"loss": loss}


# ports test_all.py::test_loggers_fit_test_all
def test_loggers_fit_test_all(mlflow_server, tmp_path: Path) -> None:
    logger = new_logger(mlflow_server, tmp_path, HistoryLogger, log_system_info=True)  # the defaults, system info too
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=1, logger=logger, limit_train_batches=1, limit_val_batches=1,
                      log_every_n_steps=1, **QUIET)
    trainer.fit(FitTestModel())
    trainer.test()  # the same logger after fit: the same run continues

    log_metric_names = [(s, sorted(m.keys())) for s, m in logger.history]
    assert log_metric_names == [
        (0, ["epoch", "train_some_val"]),
        (0, ["early_stop_on", "epoch", "val_loss"]),
        (1, ["epoch", "test_loss"]),
    ]
    run = assert_delivered(mlflow_server, logger)  # one MLflow run and one W&B run for fit + test
    assert mlflow_points(mlflow_server, run.info.run_id, "test_loss") == {(1, 2.0)}
    assert run.data.tags["dualtrack.run_dir"] == str(Path(logger.save_dir).resolve())


# extends test_all.py::test_loggers_fit_test_all: `self.log` in training_step at several `log_every_n_steps`
@pytest.mark.parametrize("every", [1, 3])
def test_training_step_logging_every_n_steps(mlflow_server, tmp_path: Path, every: int) -> None:
    logger = new_logger(mlflow_server, tmp_path, HistoryLogger)
    Trainer(default_root_dir=tmp_path, max_epochs=1, logger=logger, limit_train_batches=7, limit_val_batches=0,
            log_every_n_steps=every, enable_checkpointing=False, **QUIET).fit(TrainLossModel())
    steps = [s for s, m in logger.history if "train_loss" in m]
    assert steps == [s for s in range(7) if (s + 1) % every == 0]
    assert_delivered(mlflow_server, logger)


# ports test_all.py::test_loggers_pickle_all (_test_loggers_pickle): pickled after use, the copy logs on
def test_loggers_pickle_after_use(mlflow_server, tmp_path: Path) -> None:
    logger = new_logger(mlflow_server, tmp_path)
    _ = logger.experiment  # a live run: the pickled state must leave its handles out
    logger.log_metrics({"a": 1})
    logger.save()
    pickle.dumps(logger)

    trainer = Trainer(max_epochs=1, logger=logger, default_root_dir=tmp_path, **QUIET)
    trainer2 = pickle.loads(pickle.dumps(trainer))
    trainer2.logger.log_metrics({"acc": 1.0})
    assert trainer2.logger.name == logger.name
    assert trainer2.logger.save_dir == logger.save_dir
    assert trainer2.logger.version == logger.version

    trainer2.logger.finalize("success")
    logger.finalize("success")
    run = mlflow_run(mlflow_server, logger)  # one run: the copy continued it
    assert run.info.status == "FINISHED"
    assert mlflow_points(mlflow_server, run.info.run_id, "a") == {(0, 1.0)}
    assert mlflow_points(mlflow_server, run.info.run_id, "acc") == {(1, 1.0)}
    assert wandb_points(logger, "a") == {(0, 1.0)} and wandb_points(logger, "acc") == {(1, 1.0)}


class TunedModel(BoringModel):
    def __init__(self, lr=0.1, batch_size=1):
        super().__init__()
        self.save_hyperparameters()


# ports test_all.py::test_logger_reset_correctly
@pytest.mark.parametrize("tuner_method", ["lr_find", "scale_batch_size"])
def test_logger_reset_correctly(mlflow_server, tmp_path: Path, tuner_method: str) -> None:
    model = TunedModel()
    logger = new_logger(mlflow_server, tmp_path, HistoryLogger)
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=1, logger=logger, **QUIET)
    tuner = Tuner(trainer)

    logger1 = trainer.logger
    getattr(tuner, tuner_method)(model)
    logger2 = trainer.logger
    logger3 = model.logger

    assert logger1 == logger2, "Finder altered the logger of trainer"
    assert logger2 == logger3, "Finder altered the logger of model"
    # the search's trial steps are not the user's run: Lightning hands them to a DummyLogger, so nothing is logged;
    # the tuner's fit did start the run (setup makes the experiment) and ended it FINISHED, as with the stock loggers
    assert logger.history == []
    (run,) = mlflow_runs(mlflow_server, logger.name)
    assert run.info.status == "FINISHED" and not user_metrics(run)


# ports test_all.py::test_logger_initialization (ddp_spawn, 2 processes): the experiment exists by `setup` on
# rank 0; rank 1 gets a DummyExperiment, and what it logs goes nowhere
@pytest.mark.slow
def test_logger_initialization_ddp_spawn(mlflow_server, tmp_path: Path) -> None:
    logger = new_logger(mlflow_server, tmp_path)
    trainer = Trainer(logger=logger, default_root_dir=tmp_path, strategy="ddp_spawn", accelerator="cpu", devices=2,
                      max_steps=1, callbacks=[LazyInitExperimentCheck(), RankZeroLoggerCheck()], **QUIET)
    trainer.fit(BoringModel())

    run = mlflow_run(mlflow_server, logger)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["from_rank_0"] == 0.0 and "from_rank_1" not in run.data.metrics
    assert "rank_1_param" not in run.data.params and "rank_1_tag" not in run.data.tags
    assert run_dirs(tmp_path / "runs") == [logger.version]  # rank 1 made no run directory
    w = wandb_run(logger.run_dir, logger.run_id)
    assert w.exit_code == 0 and "rank_1_param" not in w.config


# ports test_logger.py::test_dummylogger_noop_method_calls / test_dummyexperiment_support_item_assignment as
# what they mean for a logger: on rank > 0 (rank_zero_only) `experiment` is a DummyExperiment and every call
# is a no-op: no run directory, nothing in MLflow or W&B
def test_rank_nonzero_is_a_noop(mlflow_server, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = new_logger(mlflow_server, tmp_path)
    experiment = logger.experiment
    assert isinstance(experiment, DummyExperiment)
    assert experiment.log_text("1", 2, three="three") is None
    experiment["variable"] = "value"
    assert experiment["variable"] != "value"
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.log_params({"p": 1})
    logger.set_tags({"t": "x"})
    logger.log_text("hello", "notes/a.txt")
    logger.log_table("t", ["a"], [[1]])
    logger.log_image(np.zeros((4, 4, 3), np.uint8), "img")
    logger.log_dict({"a": 1}, "d.json")
    logger.after_save_checkpoint(ModelCheckpoint())
    logger.save()
    logger.finalize("success")
    assert not (tmp_path / "runs").exists()
    assert mlflow_runs(mlflow_server, logger.name) == []


# ports test_all.py::test_logger_with_prefix_all (the MLflow and W&B parts; test_logger_compat checks MLflow's key)
def test_logger_with_prefix(mlflow_server, tmp_path: Path) -> None:
    logger = new_logger(mlflow_server, tmp_path, prefix="tmp")
    logger.log_metrics({"test": 1.0}, step=0)
    logger.finalize("success")
    run = mlflow_run(mlflow_server, logger)
    assert set(user_metrics(run)) == {"tmp-test"}
    assert mlflow_points(mlflow_server, run.info.run_id, "tmp-test") == {(0, 1.0)}
    rows = [r for r in wandb_run(logger.run_dir, logger.run_id).history if "tmp-test" in r]
    assert [(r["tmp-test"], r["trainer/global_step"]) for r in rows] == [(1.0, 0)]


# ports test_all.py::test_logger_default_name. Difference (README): the default is `lightning_dualtrack`
# (MLflow experiment and W&B project), not `lightning_logs`
def test_logger_default_name(mlflow_server, tmp_path: Path) -> None:
    logger = DualTrackLogger(tracking_uri=mlflow_server.url, wandb_mode="offline", save_dir=tmp_path / "runs",
                             log_system_info=False)
    assert logger.name == "lightning_dualtrack"
    logger.log_metrics({"x": 1.0}, step=0)
    logger.finalize("success")
    c = client(mlflow_server)
    run = c.get_run(logger.mlflow_run_id)
    assert c.get_experiment(run.info.experiment_id).name == "lightning_dualtrack"
    assert wandb_run(logger.run_dir, logger.run_id).project == "lightning_dualtrack"


# ports test_logger.py::test_custom_logger
def test_custom_logger(mlflow_server, tmp_path: Path) -> None:
    logger = new_logger(mlflow_server, tmp_path, HistoryLogger)
    trainer = Trainer(max_steps=2, log_every_n_steps=1, logger=logger, default_root_dir=tmp_path, **QUIET)
    trainer.fit(TrainLossModel())
    assert trainer.state.finished, f"Training failed with {trainer.state}"
    assert logger.history != []
    assert logger.saved_checkpoints >= 1  # after_save_checkpoint was called
    run = assert_delivered(mlflow_server, logger)  # finalized "success": MLflow FINISHED, W&B exit 0
    assert mlflow_points(mlflow_server, run.info.run_id, "train_loss") == {
        (s, round(m["train_loss"], 6)) for s, m in logger.history if "train_loss" in m}
    assert sorted(s for s, _ in mlflow_points(mlflow_server, run.info.run_id, "train_loss")) == [0, 1]


# ports test_logger.py::test_multiple_loggers (two DualTrackLoggers: two runs in each backend, one per logger)
def test_multiple_loggers(mlflow_server, tmp_path: Path) -> None:
    logger1 = new_logger(mlflow_server, tmp_path, HistoryLogger)
    logger2 = new_logger(mlflow_server, tmp_path, HistoryLogger)
    trainer = Trainer(max_steps=2, log_every_n_steps=1, logger=[logger1, logger2], default_root_dir=tmp_path, **QUIET)
    trainer.fit(TrainLossModel())
    assert trainer.state.finished, f"Training failed with {trainer.state}"
    for logger in (logger1, logger2):
        run = assert_delivered(mlflow_server, logger)
        assert not run.data.params  # BoringModel saves no hyperparameters: log_hyperparams logged nothing
        assert user_config(logger) == {}
    assert logger1.version != logger2.version


# extends test_logger.py::test_multiple_loggers: a DualTrackLogger in a list with a stock logger
def test_multiple_loggers_with_a_stock_logger(mlflow_server, tmp_path: Path) -> None:
    dual = new_logger(mlflow_server, tmp_path, HistoryLogger)
    csv = CSVLogger(tmp_path / "csv")
    trainer = Trainer(max_steps=2, log_every_n_steps=1, logger=[dual, csv], default_root_dir=tmp_path, **QUIET)
    trainer.fit(TrainLossModel())
    assert_delivered(mlflow_server, dual)
    assert "train_loss" in (Path(csv.log_dir) / "metrics.csv").read_text().splitlines()[0]
    # the first logger decides where checkpoints go (Lightning's rule)
    assert trainer.checkpoint_callback.dirpath == str(Path(dual.save_dir) / dual.name / dual.version / "checkpoints")


# ports test_logger.py::test_multiple_loggers_pickle (pickled before use: each copy starts its logger's run)
def test_multiple_loggers_pickle(mlflow_server, tmp_path: Path) -> None:
    logger1 = new_logger(mlflow_server, tmp_path)
    logger2 = new_logger(mlflow_server, tmp_path)
    trainer = Trainer(logger=[logger1, logger2], default_root_dir=tmp_path, **QUIET)
    trainer2 = pickle.loads(pickle.dumps(trainer))
    for logger in trainer2.loggers:
        logger.log_metrics({"acc": 1.0}, 0)
    for logger in trainer2.loggers:
        logger.finalize("success")
    for original, logger in zip((logger1, logger2), trainer2.loggers, strict=True):
        assert logger.version == original.version and logger.name == original.name
        run = mlflow_run(mlflow_server, logger)
        assert user_metrics(run) == {"acc": 1.0}
        assert wandb_points(logger, "acc") == {(0, 1.0)}


class StepKeyModel(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.logged_step = 0

    def on_train_epoch_end(self):
        self.logged_step += 1
        self.log_dict({"step": self.logged_step, "train_acc": self.logged_step / 10})

    def on_validation_epoch_end(self):
        self.logged_step += 1
        self.log_dict({"step": self.logged_step, "val_acc": self.logged_step / 10})


# ports test_logger.py::test_adding_step_key: a logged "step" value is the step the logger gets (and stores)
def test_adding_step_key(mlflow_server, tmp_path: Path) -> None:
    logger = new_logger(mlflow_server, tmp_path, HistoryLogger)
    model = StepKeyModel()
    Trainer(max_epochs=3, logger=logger, default_root_dir=tmp_path, limit_train_batches=0.1, limit_val_batches=0.1,
            num_sanity_val_steps=0, enable_checkpointing=False, **QUIET).fit(model)
    for step, metrics in logger.history:
        if "val_acc" in metrics:
            assert step == round(metrics["val_acc"] * 10)
    run = assert_delivered(mlflow_server, logger)
    assert mlflow_points(mlflow_server, run.info.run_id, "val_acc") == {(1, 0.1), (3, 0.3), (5, 0.5)}
    assert mlflow_points(mlflow_server, run.info.run_id, "train_acc") == {(2, 0.2), (4, 0.4), (6, 0.6)}
    assert "step" not in run.data.metrics


# ports test_logger.py::test_np_sanitization (numpy scalars in a Namespace, via log_hyperparams)
def test_np_sanitization(mlflow_server, tmp_path: Path) -> None:
    np_params = {
        "np.bool_": np.bool_(1),
        "np.byte": np.byte(2),
        "np.intc": np.intc(3),
        "np.int_": np.int_(4),
        "np.longlong": np.longlong(5),
        "np.single": np.single(6.0),
        "np.double": np.double(8.9),
        "np.csingle": np.csingle(7 + 2j),
        "np.cdouble": np.cdouble(9 + 4j),
    }
    sanitized_params = {
        "np.bool_": True,
        "np.byte": 2,
        "np.intc": 3,
        "np.int_": 4,
        "np.longlong": 5,
        "np.single": 6.0,
        "np.double": 8.9,
        "np.csingle": "(7+2j)",
        "np.cdouble": "(9+4j)",
    }
    logger = new_logger(mlflow_server, tmp_path)
    logger.log_hyperparams(Namespace(**np_params))
    logger.finalize("success")
    run = mlflow_run(mlflow_server, logger)
    assert run.data.params == {k: str(v) for k, v in sanitized_params.items()}
    config = wandb_run(logger.run_dir, logger.run_id).config
    assert {k: config[k] for k in sanitized_params} == sanitized_params


class HparamsModel(BoringModel):
    def __init__(self, param_one, param_two, logger=True):
        super().__init__()
        self.save_hyperparameters(logger=logger)


# ports test_logger.py::test_log_hyperparams_being_called
@pytest.mark.parametrize("log", [True, False])
def test_log_hyperparams_being_called(mlflow_server, tmp_path: Path, log: bool) -> None:
    logger = new_logger(mlflow_server, tmp_path)
    Trainer(default_root_dir=tmp_path, max_epochs=1, limit_train_batches=0.1, limit_val_batches=0.1,
            num_sanity_val_steps=0, logger=logger, enable_checkpointing=False, **QUIET).fit(
        HparamsModel("pytorch", "lightning", logger=log))
    run = mlflow_run(mlflow_server, logger)
    config = wandb_run(logger.run_dir, logger.run_id).config
    if log:
        assert run.data.params == {"param_one": "pytorch", "param_two": "lightning", "logger": "True"}
        assert config["param_one"] == "pytorch" and config["param_two"] == "lightning"
    else:
        assert run.data.params == {}
        assert "param_one" not in config


class DictHparamsModel(BoringModel):
    def __init__(self, hparams: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters(hparams)


class DictHparamsDataModule(BoringDataModule):
    def __init__(self, hparams: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters(hparams)


class _Test: ...


# ports test_logger.py::test_log_hyperparams_key_collision. Upstream's second fit passes `same_params` again (its
# `obj_params` is unused); this port passes `obj_params`, a new `_Test()` whose repr holds another address: the
# same setting, so no `test.v2` param and no warning (README: re-logging equal hparams is a no-op).
def test_log_hyperparams_key_collision(mlflow_server, tmp_path: Path) -> None:
    def new_trainer(logger):
        return Trainer(default_root_dir=tmp_path, logger=logger, max_epochs=1, limit_train_batches=0.1,
                       limit_val_batches=0.1, num_sanity_val_steps=0, enable_checkpointing=False, **QUIET)

    same_params = {1: 1, "2": 2, "three": 3.0, "test": _Test(), "4": torch.tensor(4)}
    logger = new_logger(mlflow_server, tmp_path)
    trainer = new_trainer(logger)
    # there should be no exceptions raised for the same key/value pair in the hparams of both
    # the lightning module and data module
    trainer.fit(DictHparamsModel(same_params))

    obj_params = deepcopy(same_params)
    obj_params["test"] = _Test()
    with pytest.warns() as caught:
        trainer.fit(DictHparamsModel(obj_params))
    assert not [w for w in caught if issubclass(w.category, DualTrackWarning)], [str(w.message) for w in caught]
    run = mlflow_run(mlflow_server, logger)
    assert set(run.data.params) == {"1", "2", "three", "test", "4"}  # a non-string key is stored as its str
    assert run.data.params["4"] == "4" and run.data.params["test"].startswith("<")
    assert not [k for k in run.data.params if ".v" in k]

    diff_params = deepcopy(same_params)
    diff_params.update({1: 0, "test": _Test()})
    other = new_logger(mlflow_server, tmp_path)
    with pytest.raises(RuntimeError, match="Error while merging hparams"):
        new_trainer(other).fit(DictHparamsModel(same_params), DictHparamsDataModule(diff_params))

    tensor_params = deepcopy(same_params)
    tensor_params.update({"4": torch.tensor(3)})
    with pytest.raises(RuntimeError, match="Error while merging hparams"):
        new_trainer(other).fit(DictHparamsModel(same_params), DictHparamsDataModule(tensor_params))
    # the merge fails before anything is logged; the run (started by setup) ends FAILED
    (r,) = mlflow_runs(mlflow_server, other.name)  # both fits: one run (the second continued it)
    assert r.info.status == "FAILED" and not r.data.params


# ports test_logger.py::test_scan_checkpoints (Lightning's `_scan_checkpoints`, through log_model="all"): each
# checkpoint of best_k_models is uploaded once; a second scan with nothing newer uploads nothing.
# Difference (README): the files must be checkpoints torch can load (they are re-saved with hparams redacted);
# upstream's empty files would be refused with a warning.
@pytest.mark.parametrize("save_top_k", [0, 1, 2, 5])
def test_scan_checkpoints(mlflow_server, tmp_path: Path, save_top_k: int) -> None:
    callback = ModelCheckpoint(dirpath=tmp_path / "ckpts")
    for i in range(save_top_k):
        path = tmp_path / "ckpts" / f"{i}.ckpt"
        path.parent.mkdir(exist_ok=True)
        torch.save({"state_dict": {}, "i": i}, path)
        callback.best_k_models[str(path)] = torch.tensor(float(i))
    logger = new_logger(mlflow_server, tmp_path, log_model="all", wandb=save_top_k > 0)
    logger.after_save_checkpoint(callback)
    logger.after_save_checkpoint(callback)  # nothing newer: nothing more
    logger.finalize("success")

    journalled = [r for r in JournalReader(logger.run_dir) if r.get("k") == "model" and r.get("checkpoint")]
    assert len(journalled) == save_top_k
    if save_top_k:
        run = mlflow_run(mlflow_server, logger)
        names = sorted(Path(a.path).name for a in client(mlflow_server).list_artifacts(run.info.run_id, "checkpoints"))
        assert names == sorted(f"{i}.ckpt" for i in range(save_top_k))
        models = [a for a in wandb_run(logger.run_dir, logger.run_id).artifacts if a["type"] == "model"]
        assert len(models) == save_top_k


# ports the hparams forms Lightning hands a logger's log_hyperparams (test_logger.py::test_np_sanitization's
# Namespace, test_wandb.py::test_wandb_logger_init's dict with None / nested / list / Path values, and the OmegaConf
# DictConfig of Hydra users, which Lightning passes on as it is): flattened with "/", interpolations resolved
def test_log_hyperparams_forms(mlflow_server, tmp_path: Path) -> None:
    omegaconf = pytest.importorskip("omegaconf", reason="omegaconf is a dev extra (pyproject); not installed here")
    cfg = omegaconf.OmegaConf.create({"model": {"width": 64, "name": "vit"}, "lr": 0.1, "lr_copy": "${lr}", "none": None,
                                      "layers": [1, 2]})
    logger = new_logger(mlflow_server, tmp_path)
    logger.log_hyperparams(cfg)
    logger.log_hyperparams(Namespace(optim=Namespace(name="adam", betas=(0.9, 0.99)), seed=0, path=Path("data")))
    logger.log_hyperparams({"nested": {"deeper": {"x": None}}, "empty": {}})
    logger.finalize("success")
    expected = {"model/width": 64, "model/name": "vit", "lr": 0.1, "lr_copy": 0.1, "none": None, "layers": [1, 2],
                "optim/name": "adam", "optim/betas": [0.9, 0.99], "seed": 0, "path": "data", "nested/deeper/x": None,
                "empty": {}}
    assert user_config(logger) == expected
    params = mlflow_run(mlflow_server, logger).data.params
    assert params == {"model/width": "64", "model/name": "vit", "lr": "0.1", "lr_copy": "0.1", "none": "None",
                      "layers": "[1, 2]", "optim/name": "adam", "optim/betas": "[0.9, 0.99]", "seed": "0", "path": "data",
                      "nested/deeper/x": "None", "empty": "{}"}


# the default `experiment` (upstream's loggers return their backend handle; README: here it is the logger itself,
# started on first use, with the tracker API), and `save` (upstream: flushes; here every record is on disk already)
def test_default_experiment_is_the_logger(mlflow_server, tmp_path: Path) -> None:
    logger = new_logger(mlflow_server, tmp_path)
    experiment = logger.experiment
    assert experiment is logger and (Path(logger.save_dir) / "journal.jsonl").exists()
    experiment.log_metrics({"loss": 0.5}, step=2)
    experiment.log_params({"lr": 0.1})
    logger.save()
    assert [r["k"] for r in JournalReader(logger.run_dir)][-2:] == ["metrics", "params"]  # journalled at the call
    logger.finalize("success")
    run = mlflow_run(mlflow_server, logger)
    assert user_metrics(run) == {"loss": 0.5} and run.data.params == {"lr": "0.1"}


class FailingModel(TrainLossModel):
    def training_step(self, batch, batch_idx):
        if self.global_step == 1:
            raise RuntimeError("boom in training_step")
        return super().training_step(batch, batch_idx)


# extends test_all.py::test_logger_initialization (ddp_spawn) and test_mlflow.py::test_mlflow_logger_finalize: a fit
# whose training_step raises ends the run FAILED in MLflow and with exit code 1 in W&B, in one process and under
# ddp_spawn (where the worker's logger is not finalized by Lightning: its exit ends the open run)
@pytest.mark.parametrize("strategy", ["auto", pytest.param("ddp_spawn", marks=pytest.mark.slow)])
def test_failing_fit_ends_failed(mlflow_server, tmp_path: Path, strategy: str) -> None:
    logger = new_logger(mlflow_server, tmp_path)
    devices = 2 if strategy == "ddp_spawn" else 1
    trainer = Trainer(logger=logger, default_root_dir=tmp_path, strategy=strategy, accelerator="cpu", devices=devices,
                      max_steps=4, log_every_n_steps=1, enable_checkpointing=False, **QUIET)
    with pytest.raises(Exception, match="boom in training_step"):
        trainer.fit(FailingModel())
    run = mlflow_run(mlflow_server, logger)
    assert run.info.status == "FAILED"
    assert mlflow_points(mlflow_server, run.info.run_id, "train_loss") != set()  # step 0 was delivered
    assert wandb_run(logger.run_dir, logger.run_id).exit_code == 1
