"""Drop-in habits of MLFlowLogger / WandbLogger users (issue 11), checked at the backends (a real mlflow server)."""

from __future__ import annotations

import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest

from lightning_dualtrack import DualTrackLogger
from lightning_dualtrack.logger import DualTrackWarning


def _logger(server, **kwargs) -> DualTrackLogger:
    kwargs.setdefault("experiment_name", f"compat_{uuid.uuid4().hex[:8]}")
    return DualTrackLogger(tracking_uri=server.url, wandb=False, **kwargs)


def _mlflow_run(server, logger: DualTrackLogger):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.url)
    (run,) = client.search_runs([client.get_experiment_by_name(logger.name).experiment_id])
    return client, run


def test_prefix_joins_metric_keys(mlflow_server) -> None:
    logger = _logger(mlflow_server, prefix="train")
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.finalize("success")
    _, run = _mlflow_run(mlflow_server, logger)
    assert "train-loss" in run.data.metrics


def test_experiment_id(mlflow_server) -> None:
    logger = _logger(mlflow_server)
    logger.log_metrics({"x": 1.0}, step=0)
    logger.finalize("success")
    _, run = _mlflow_run(mlflow_server, logger)
    assert logger.experiment_id == run.info.experiment_id


def test_existing_mlflow_run_id_continues_that_run(mlflow_server) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.url)
    name = f"compat_{uuid.uuid4().hex[:8]}"
    existing = client.create_run(client.create_experiment(name)).info.run_id
    logger = _logger(mlflow_server, experiment_name=name, run_id=existing)
    logger.log_metrics({"continued": 1.0}, step=0)
    logger.finalize("success")
    assert "continued" in client.get_run(existing).data.metrics


def test_mlflow_run_id_known_right_after_start(mlflow_server) -> None:
    logger = _logger(mlflow_server)
    logger.start_run()
    try:
        assert logger.mlflow_run_id is not None
    finally:
        logger.finalize("success")


def test_mlflow_experiment_name_env(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from_env")
    assert DualTrackLogger(deliver=False).name == "from_env"


def test_relogging_an_object_hparam_is_a_noop(tmp_path: Path) -> None:
    class Augment:  # default repr: <...Augment object at 0x...>
        pass

    logger = DualTrackLogger(save_dir=tmp_path / "runs", mlflow=False, wandb=False, deliver=False)
    logger.log_params({"augment": Augment()})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logger.log_params({"augment": Augment()})  # a second fit with the same logger
    logger.finalize("success")
    assert not [w for w in caught if issubclass(w.category, DualTrackWarning)]


def test_wandb_style_log_image(mlflow_server) -> None:
    logger = _logger(mlflow_server)
    logger.log_image(key="samples", images=[np.zeros((8, 8, 3), np.uint8), np.ones((8, 8, 3), np.uint8)], step=1,
                     caption=["a", "b"])
    logger.finalize("success")
    client, run = _mlflow_run(mlflow_server, logger)
    assert len(client.list_artifacts(run.info.run_id, "images")) >= 1


def test_wandb_style_log_table(mlflow_server) -> None:
    logger = _logger(mlflow_server)
    logger.log_table(key="preds", columns=["id", "label"], data=[[1, "a"], [2, "b"]], step=0)
    logger.finalize("success")
    client, run = _mlflow_run(mlflow_server, logger)
    assert client.list_artifacts(run.info.run_id, "tables")


def test_wandb_style_log_text(mlflow_server) -> None:
    logger = _logger(mlflow_server)
    logger.log_text(key="notes", columns=["text"], data=[["hello"]])
    logger.finalize("success")
    client, run = _mlflow_run(mlflow_server, logger)
    assert client.list_artifacts(run.info.run_id)


def test_watch_logs_gradient_and_parameter_statistics_every_log_freq_steps(tmp_path: Path) -> None:
    import torch

    from lightning_dualtrack.core.journal import JournalReader

    model = torch.nn.Linear(2, 2)
    model(torch.ones(1, 2)).sum().backward()
    logger = DualTrackLogger(save_dir=tmp_path / "runs", mlflow=False, wandb=False, deliver=False, log_system_info=False)
    logger.watch(model, log="all", log_freq=2)
    for step in range(4):
        logger.log_metrics({"loss": 1.0}, step=step)
    logger.finalize("success")
    rows = {r["s"]: r["v"] for r in JournalReader(logger.run_dir) if r["k"] == "metrics"}
    assert set(rows[0]) > {"loss", "gradients/weight/norm", "parameters/bias/mean"} and set(rows[1]) == {"loss"}
    assert rows[2]["gradients/weight/norm"] == pytest.approx(model.weight.grad.norm().item())
    with pytest.raises(ValueError, match="log_freq"):
        logger.watch(model, log_freq=0)


def test_register_model_answers_like_mlflows_model_version(mlflow_server) -> None:
    import torch

    logger = _logger(mlflow_server)
    logger.log_model(torch.nn.Linear(2, 2), "models", input_example=np.zeros((1, 2), np.float32))
    name = f"m_{uuid.uuid4().hex[:6]}"
    mv = logger.register_model(model_name=name, model_uri="runs:/last/models")
    logger.finalize("success")
    assert (mv.name, mv.version) == (name, "1")  # what `mlflow.register_model(...)` users read
    registered_name, version = mv  # and what `(name, version)` users unpack
    assert (registered_name, version) == (name, "1")
    client, _ = _mlflow_run(mlflow_server, logger)
    assert client.get_model_version(name, mv.version).run_id == logger.mlflow_run_id


def test_log_figure_in_a_loop_keeps_each(mlflow_server) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logger = _logger(mlflow_server)
    for _ in range(2):
        fig, ax = plt.subplots()
        ax.plot([0, 1])
        logger.log_figure(fig, "learning_curve.png")
    logger.finalize("success")
    client, run = _mlflow_run(mlflow_server, logger)
    names = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert len(names) == 2 and not [n for n in names if n.endswith(".png.png")], names


@pytest.mark.slow
def test_every_model_checkpoint_callback_is_logged(mlflow_server, tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tests.helpers import TinyModel, loaders, trainer

    logger = _logger(mlflow_server, log_model=True, save_dir=tmp_path / "runs")
    best = ModelCheckpoint(monitor="val/loss", save_top_k=1, filename="best-{step}")
    latest = ModelCheckpoint(save_top_k=1, filename="latest-{step}")
    trainer(logger, max_steps=4, callbacks=[best, latest], enable_checkpointing=True, val_check_interval=2).fit(
        TinyModel(), *loaders())
    client, run = _mlflow_run(mlflow_server, logger)
    names = [Path(a.path).name for a in client.list_artifacts(run.info.run_id, "checkpoints")]
    assert any(n.startswith("best-") for n in names) and any(n.startswith("latest-") for n in names), names


@pytest.mark.slow
@pytest.mark.parametrize("how", ["uncaught", "spawned_worker"])
def test_a_run_left_open_by_a_failure_ends_failed(mlflow_server, tmp_path: Path, how: str) -> None:
    """atexit ends an open run FAILED after an uncaught exception, and in a spawned worker (ddp_spawn: on
    success Lightning finalizes the worker's logger itself, so an open run at exit is a failed one)."""
    import subprocess
    import sys
    import textwrap

    name = f"compat_{uuid.uuid4().hex[:8]}"
    body = f"""
        from lightning_dualtrack import DualTrackLogger
        logger = DualTrackLogger(experiment_name={name!r}, tracking_uri={mlflow_server.url!r}, wandb=False,
                                 save_dir={str(tmp_path / 'runs')!r}, log_system_info=False)
        logger.log_metrics({{"x": 1.0}}, step=0)
    """
    if how == "uncaught":
        script = textwrap.dedent(body) + "raise RuntimeError('training diverged')\n"
    else:
        script = "import multiprocessing as mp\n\ndef work():\n" + textwrap.indent(textwrap.dedent(body), "    ") + (
            "\nif __name__ == '__main__':\n    p = mp.get_context('spawn').Process(target=work)\n    p.start()\n    p.join()\n")
    path = tmp_path / "script.py"
    path.write_text(script)
    import os

    env = {**os.environ, "MASTER_PORT": "29512"} if how == "spawned_worker" else None  # as ddp_spawn's workers have
    proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, timeout=120, capture_output=True, text=True, env=env)
    assert proc.returncode != 0 or how == 'spawned_worker', proc.stderr[-2000:]
    _, run = _mlflow_run(mlflow_server, DualTrackLogger(experiment_name=name, deliver=False))
    assert run.info.status == "FAILED" and run.data.metrics["x"] == 1.0
