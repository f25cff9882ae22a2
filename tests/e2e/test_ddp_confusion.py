"""Two CPU processes (gloo) give the same confusion matrix as one process on the same validation set."""

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from torch.utils.data import DataLoader

from lightning_dualtrack.callbacks import ClassificationReport, unpadded_eval_sampler
from tests.recording_logger import ImageDataset, RecordingLogger, TinyClassifier, predictions, read_dump

N_VAL = 37  # odd: a padding sampler would duplicate one sample
BATCH = 6  # rank 0 gets 19 samples (4 batches), rank 1 gets 18 (3 batches)


def _unpadded_loader(dataset, batch_size):
    return DataLoader(dataset, batch_size=batch_size, sampler=unpadded_eval_sampler(dataset))


def _validate(tmp_path, devices, **trainer_kwargs):
    model = TinyClassifier(
        num_classes=4, n_val=N_VAL, batch_size=BATCH, seed=7, val_loader_fn=_unpadded_loader
    )
    logger = RecordingLogger(dump_dir=str(tmp_path))
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        logger=logger,
        callbacks=[ClassificationReport()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    trainer.validate(model, verbose=False)
    calls = read_dump(str(tmp_path))
    (matrix,) = [kwargs["conf_matrix"] for name, kwargs in calls if name == "log_confusion_matrix"]
    metrics = {k: v for name, kwargs in calls if name == "log_metrics" for k, v in kwargs["metrics"].items()}
    return model, matrix, metrics


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ddp_confusion_matrix_equals_single_process(tmp_path):
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    single_dir.mkdir()
    ddp_dir.mkdir()
    model, single, single_metrics = _validate(single_dir, devices=1)
    _, ddp, ddp_metrics = _validate(ddp_dir, devices=2, strategy="ddp_fork", use_distributed_sampler=False)

    _, preds, target = predictions(model, ImageDataset(N_VAL, 4, seed=2, noise=3.0))
    expected = sk_confusion_matrix(target, preds, labels=range(4))
    np.testing.assert_array_equal(single, expected)
    np.testing.assert_array_equal(ddp, expected)
    assert ddp.sum() == N_VAL  # no sample counted twice, none lost
    report_keys = {
        k for k in single_metrics if k != "val/loss"
    }  # val/loss: the module logs it without sync_dist
    assert {k: ddp_metrics[k] for k in report_keys} == pytest.approx(
        {k: single_metrics[k] for k in report_keys}
    )
    assert torch.distributed.is_available()
