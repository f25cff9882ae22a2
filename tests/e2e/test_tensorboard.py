"""TensorBoard as a backend known only through the registry: the logger's arguments, LightningCLI's switches, the
tracking config file, ``dualtrack status`` and delivery of a real Lightning run, read back with TensorBoard's own
``EventAccumulator``."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_dualtrack import DualTrackLogger
from lightning_dualtrack.cli import main as dualtrack_main
from lightning_dualtrack.core.journal import JournalReader
from tests.helpers import TinyModel, loaders, trainer

pytest.importorskip("tensorboard")
pytestmark = pytest.mark.slow


def scalar_steps(log_dir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def test_a_lightning_run_is_delivered_to_tensorboard_once_per_step(tmp_path: Path, capsys) -> None:
    logger = DualTrackLogger(experiment_name="tb", tensorboard=True, mlflow=False, wandb=False, save_dir=tmp_path / "runs",
                             flush_interval=0.2, finalize_timeout=60)
    train, val = loaders()
    trainer(logger, max_steps=16, val_check_interval=8).fit(TinyModel(), train, val)
    logger.end_run()
    assert logger.backends["tensorboard"]["enabled"] and not logger.backends["mlflow"]["enabled"]
    journal_steps = [r["s"] for r in JournalReader(logger.run_dir) if r["k"] == "metrics" and "train/loss" in r["v"]]
    assert journal_steps == list(range(16))
    log_dir = logger.run_dir / "tensorboard"
    assert scalar_steps(log_dir, "train/loss") == journal_steps  # each step once, through the delivery service
    assert len(scalar_steps(log_dir, "val/loss")) == 2

    capsys.readouterr()
    assert dualtrack_main(["status", str(logger.run_dir)]) == 0
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.strip().startswith("tensorboard ")]
    assert "pending       0" in line and "[up to date]" in line and str(log_dir.resolve()) in line, out
    assert f"TensorBoard: tensorboard --logdir {log_dir.resolve()}" in out


def test_the_logger_the_cli_and_the_config_file_take_their_tensorboard_settings_from_the_sink(tmp_path: Path) -> None:
    from lightning_dualtrack.lightning_cli import DualTrackCLI
    from lightning_dualtrack.tracking_config import load_tracking_config

    params = inspect.signature(DualTrackLogger).parameters
    assert params["tensorboard"].default is False and "tensorboard_log_dir" in params
    assert "tensorboard_log_dir" in (DualTrackLogger.__init__.__doc__ or DualTrackLogger.__doc__ or "")

    common = ["--no_mlflow", "--no_wandb", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
              "--trainer.logger.init_args.deliver=false", "--trainer.accelerator=cpu"]
    on = DualTrackCLI(TinyModel, args=["--use_tensorboard", *common], run=False, auto_configure_optimizers=False)
    assert on.trainer.logger.backends["tensorboard"]["enabled"] is True
    off = DualTrackCLI(TinyModel, args=common, run=False, auto_configure_optimizers=False)
    assert off.trainer.logger.backends["tensorboard"]["enabled"] is False  # off unless asked for

    config = tmp_path / "tracking.yaml"
    config.write_text("mlflow:\n  experiment_name: har\ntensorboard:\n  log_dir: tb_logs\n")
    kwargs = load_tracking_config(config, env={}).logger_kwargs
    assert kwargs["tensorboard"] is True and kwargs["tensorboard_log_dir"] == "tb_logs"
    logger = DualTrackLogger(save_dir=tmp_path / "runs", deliver=False, **kwargs)
    assert logger.backends["tensorboard"]["log_dir"] == str(Path("tb_logs").absolute())


def test_the_sink_module_imports_without_tensorboard_and_without_torch() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorboard', 'torch'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from lightning_dualtrack.sinks import sink_class\n"
        "cls = sink_class('tensorboard')\n"
        "print(cls.name, cls.enabled_by_default, [s.arg for s in cls.settings], cls.resolve({}, {}).settings)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "tensorboard False ['tensorboard_log_dir'] {'log_dir': None}"
