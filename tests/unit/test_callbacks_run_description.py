import json
import types

import numpy as np
import pytest
from lightning.pytorch import LightningDataModule, Trainer
from torch.utils.data import DataLoader

import lightning_dualtrack.callbacks as callbacks
from lightning_dualtrack.callbacks import ClassificationReport, RunDescription
from tests.recording_logger import ImageDataset, PlainLogger, RecordingLogger, TinyClassifier


class DescribedData(LightningDataModule):
    def __init__(self):
        super().__init__()
        self.num_classes = 4

    def describe(self):
        return {
            "source": "synthetic",
            "split": {"train": 64, "val": 32, "seed": 0},
            "augmentation": ["flip", "crop"],
            "transform": object,
        }

    def train_dataloader(self):
        return DataLoader(ImageDataset(64, 4, seed=1), batch_size=16, shuffle=True)

    def val_dataloader(self):
        return DataLoader(ImageDataset(32, 4, seed=2, noise=3.0), batch_size=16)


def _fit(loggers, callbacks_, max_epochs=3, datamodule=None):
    model = TinyClassifier(num_classes=4)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        logger=loggers,
        callbacks=callbacks_,
        max_epochs=max_epochs,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=2,
        log_every_n_steps=1,
    )
    trainer.fit(model, datamodule=datamodule)
    return model, trainer


@pytest.fixture(scope="module")
def described():
    rich, plain = RecordingLogger(), PlainLogger()
    description = RunDescription()
    model, trainer = _fit(
        [rich, plain], [description, ClassificationReport(num_examples=0)], datamodule=DescribedData()
    )
    return rich, plain, description, model


def test_parameter_counts_optimizer_scheduler_and_data_are_params(described):
    rich, plain, _, model = described
    for logger in (rich, plain):
        params = {k: v for p in logger.params for k, v in p.items()}
        assert params["model/class"] == "TinyClassifier"
        assert params["model/params_total"] == 3 * 8 * 8 * 4 + 4 == sum(p.numel() for p in model.parameters())
        assert params["model/params_trainable"] == 772 and params["model/params_non_trainable"] == 0
        assert params["optimizer/class"] == "SGD" and params["optimizer/num_params"] == 772
        assert params["optimizer/momentum"] == 0.9 and params["optimizer/nesterov"] is False
        assert params["lr_scheduler/class"] == "StepLR" and params["lr_scheduler/interval"] == "epoch"
        assert params["lr_scheduler/step_size"] == 1 and params["lr_scheduler/gamma"] == 0.5
        assert params["data/source"] == "synthetic" and params["data/split/train"] == 64
        assert params["data/augmentation"] == ["flip", "crop"] and params["data/transform"].startswith(
            "<class"
        )
        # the initial learning rate, not the decayed one: params are logged at fit start
        assert params["optimizer/lr"] == 0.1


def test_model_summary_text_goes_to_rich_loggers_only(described):
    rich, plain, _, _ = described
    (summary,) = [c for c in rich.calls_named("log_text") if c["name"] == "model_summary.txt"]
    assert "Linear" in summary["text"] and "772" in summary["text"]
    assert not plain.calls_named("log_text")


def test_learning_curves_hold_each_epochs_train_and_val_metrics(described):
    rich, _, description, _ = described
    val_loss = [value for _, value in rich.metric_values("val/loss")]
    train_loss = [value for _, value in rich.metric_values("train/loss")]
    assert [epoch for epoch, _ in description.history["val/loss"]] == [0, 1, 2]  # the sanity check is not in
    np.testing.assert_allclose([v for _, v in description.history["val/loss"]], val_loss, rtol=1e-6)
    np.testing.assert_allclose([v for _, v in description.history["train/loss"]], train_loss, rtol=1e-6)
    assert [epoch for epoch, _ in description.history["val/f1_macro"]] == [
        0,
        1,
        2,
    ]  # from ClassificationReport

    (figure,) = [c for c in rich.calls_named("log_figure") if c["name"] == "learning_curves"]
    assert figure["png"].startswith(b"\x89PNG") and figure["step"] == 12
    panels = {ax.get_title(): ax for ax in figure["figure"].axes}
    assert {"loss", "f1_macro", "acc"} <= set(panels)
    lines = {line.get_label(): line for line in panels["loss"].lines}
    np.testing.assert_allclose(lines["val"].get_ydata(), val_loss, rtol=1e-6)
    np.testing.assert_allclose(lines["train"].get_xdata(), [0, 1, 2])
    (history,) = [c for c in rich.calls_named("log_dict") if c["name"] == "learning_curves.json"]
    assert json.loads(json.dumps(history["data"]))["val/loss"][2][1] == pytest.approx(val_loss[2])


def test_describe_that_fails_is_a_warning():
    class Broken(DescribedData):
        def describe(self):
            raise RuntimeError("no split yet")

    logger = PlainLogger()
    with pytest.warns(UserWarning, match="describe\\(\\) failed: RuntimeError: no split yet"):
        _fit([logger], [RunDescription(learning_curves=False)], max_epochs=1, datamodule=Broken())
    params = {k: v for p in logger.params for k, v in p.items()}
    assert "model/params_total" in params and not any(k.startswith("data/") for k in params)


def test_public_names_are_exactly_all():
    public = {
        name
        for name in dir(callbacks)
        if not name.startswith("_") and not isinstance(getattr(callbacks, name), types.ModuleType)
    }

    assert public == set(callbacks.__all__) and callbacks.__all__ == sorted(callbacks.__all__)


def test_optimizer_params_are_configured_values_each_once():
    """Several param groups (as ClipHarModule makes) and a warm-up scheduler: shared settings once, per-group ones
    under the group's name, the configured peak lr (not the warm-up's first value), nothing empty or unset."""
    import torch

    from lightning_dualtrack.callbacks.run_description import optimizer_params

    head, backbone = torch.nn.Linear(4, 2), torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(
        [{"name": "head", "params": head.parameters(), "lr": 3e-3}, {"name": "backbone", "params": backbone.parameters(), "lr": 1e-3}],
        betas=(0.9, 0.98),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (step + 1) / 27)  # warm-up
    config = types.SimpleNamespace(scheduler=scheduler, interval="step", frequency=1, monitor=None)
    trainer = types.SimpleNamespace(optimizers=[optimizer], lr_scheduler_configs=[config])
    params = optimizer_params(trainer)
    assert params["optimizer/head/lr"] == 3e-3 and params["optimizer/backbone/lr"] == 1e-3  # not 3e-3 / 27
    assert params["optimizer/betas"] == [0.9, 0.98] and "optimizer/head/betas" not in params
    assert params["optimizer/head/num_params"] == 10 and params["optimizer/num_params"] == 30
    assert not [k for k in params if "group" in k or "initial_lr" in k or "lr_lambdas" in k]
    assert not [k for k, v in params.items() if v is None or v == [] or v == "[{}, {}]"]
    assert params["lr_scheduler/class"] == "LambdaLR"
