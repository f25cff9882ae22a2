"""``watch(model, log=, log_freq=)``: statistics as metrics in both backends, histograms in W&B, read back from
the MLflow server and the W&B run file."""

from __future__ import annotations

import uuid

import pytest
import torch

from lightning_dualtrack import DualTrackLogger
from lightning_dualtrack.core.journal import JournalReader
from lightning_dualtrack.run.compat import HISTOGRAM_BINS


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    model(torch.randn(8, 6)).pow(2).sum().backward()
    return model


def test_histograms_are_journalled_at_log_freq_only_and_stay_small(tmp_path) -> None:
    model = _model()
    logger = DualTrackLogger(save_dir=tmp_path / "runs", mlflow=False, wandb=False, deliver=False, log_system_info=False)
    logger.watch(model, log="all", log_freq=3)
    for step in range(7):
        logger.log_metrics({"loss": 1.0}, step=step)
    logger.finalize("success")
    hists = [r for r in JournalReader(logger.run_dir) if r["k"] == "hist"]
    assert [r["s"] for r in hists] == [0, 3, 6]
    names = [n for n, _ in model.named_parameters()]
    assert set(hists[0]["v"]) == {f"{kind}/{n}" for kind in ("gradients", "parameters") for n in names}
    for key, h in hists[0]["v"].items():
        kind, name = key.split("/", 1)
        p = dict(model.named_parameters())[name]
        t = p.grad if kind == "gradients" else p.detach()
        assert len(h["counts"]) == HISTOGRAM_BINS and sum(h["counts"]) == t.numel()
        assert (h["min"], h["max"]) == pytest.approx((t.min().item(), t.max().item()))
        expected = torch.histc(t.float(), bins=HISTOGRAM_BINS, min=h["min"], max=h["max"]).tolist()
        assert h["counts"] == expected
    size = sum(f.stat().st_size for f in logger.run_dir.glob("journal*"))
    assert 0 < size < 20_000  # 3 logging steps x 8 tensors x 64 counts: small


def test_constant_and_non_finite_tensors_do_not_break_watch(tmp_path) -> None:
    model = torch.nn.Linear(3, 1)
    with torch.no_grad():
        model.bias.fill_(0.5)
        model.weight[0, 0] = float("nan")
    logger = DualTrackLogger(save_dir=tmp_path / "runs", mlflow=False, wandb=False, deliver=False, log_system_info=False)
    logger.watch(model, log="parameters", log_freq=1)
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.finalize("success")
    (hist,) = [r for r in JournalReader(logger.run_dir) if r["k"] == "hist"]
    assert set(hist["v"]) == {"parameters/bias"}  # the NaN weight: statistics only (histc refuses a NaN range)
    bias = hist["v"]["parameters/bias"]
    assert sum(bias["counts"]) == 1 and bias["min"] < 0.5 < bias["max"]


@pytest.mark.slow
def test_watch_histograms_in_wandb_and_statistics_in_mlflow(mlflow_server, tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    from lightning_dualtrack.delivery.state import load_rejected
    from tests.helpers import metric_steps, wandb_values

    model = _model()
    experiment = f"watch_{uuid.uuid4().hex[:8]}"
    logger = DualTrackLogger(experiment_name=experiment, tracking_uri=mlflow_server.url, wandb_mode="offline",
                             save_dir=tmp_path / "runs", log_system_info=False)
    logger.watch(model, log="all", log_freq=2)
    for step in range(5):
        logger.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    logger.finalize("success")

    grad = model[0].weight.grad
    hist = wandb_values(logger.run_dir, logger.run_id, "gradients/0.weight")
    assert [step for step, _ in hist] == [0, 2, 4]
    for _, value in hist:
        assert value["_type"] == "histogram" and len(value["bins"]) == HISTOGRAM_BINS + 1
        assert sum(value["values"]) == grad.numel()
        assert (value["bins"][0], value["bins"][-1]) == pytest.approx((grad.min().item(), grad.max().item()), rel=1e-5)
    assert [s for s, _ in wandb_values(logger.run_dir, logger.run_id, "parameters/2.bias")] == [0, 2, 4]
    assert [s for s, _ in wandb_values(logger.run_dir, logger.run_id, "loss")] == [0, 1, 2, 3, 4]  # same rows

    client = MlflowClient(mlflow_server.url)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert metric_steps(mlflow_server.url, run.info.run_id, "gradients/0/weight/norm") == [0, 2, 4]
    assert run.data.metrics["gradients/0/weight/norm"] == pytest.approx(grad.norm().item(), rel=1e-6)
    assert not [k for k in run.data.metrics if k in ("gradients/0.weight", "parameters/0.weight")]
    assert run.info.status == "FINISHED" and not load_rejected(logger.run_dir, "mlflow") and not load_rejected(logger.run_dir, "wandb")


@pytest.mark.slow
def test_watch_in_a_trainer_puts_gradient_histograms_at_logging_steps(mlflow_server, tmp_path) -> None:
    """WandbLogger's habit in a Trainer: ``logger.watch(model, log="gradients", log_freq=2)`` before ``fit``."""
    from tests.helpers import TinyModel, loaders, trainer, wandb_values

    model = TinyModel()
    logger = DualTrackLogger(experiment_name=f"watch_fit_{uuid.uuid4().hex[:8]}", tracking_uri=mlflow_server.url,
                             wandb_mode="offline", save_dir=tmp_path / "runs", log_system_info=False)
    logger.watch(model, log="gradients", log_freq=2)
    trainer(logger, max_steps=6).fit(model, *loaders())

    loss_steps = {s for s, _ in wandb_values(logger.run_dir, logger.run_id, "train/loss")}
    hist = wandb_values(logger.run_dir, logger.run_id, "gradients/layer.weight")
    steps = [s for s, _ in hist]
    assert steps and all(s % 2 == 0 for s in steps) and set(steps) == {s for s in loss_steps if s % 2 == 0}
    assert all(sum(v["values"]) == model.layer.weight.numel() for _, v in hist)
    assert not wandb_values(logger.run_dir, logger.run_id, "parameters/layer.weight")  # log="gradients" only
