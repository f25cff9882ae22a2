"""``dualtrack fit|validate|test|predict``: LightningCLI with ``DualTrackLogger`` as the default logger.

Tracking flags (after the subcommand), as in the reference project:

* ``--experiment_name NAME``: the MLflow experiment and default W&B project;
* ``--use_mlflow`` / ``--no_mlflow``, ``--use_wandb`` / ``--no_wandb``: choose the backends;
* ``--no_tracking``: no logger at all.

The config LightningCLI saves (``config.yaml`` in the run directory) is also logged to both runs.
With ``--test_after_fit true``, ``fit`` ends by testing the best checkpoint in the same run.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

_LOGGER_CLASS = "lightning_dualtrack.DualTrackLogger"
_LOGGER_CLASSES = {_LOGGER_CLASS, "lightning_dualtrack.logger.DualTrackLogger"}


class LogConfigCallback(SaveConfigCallback):
    """Save the config in the run directory (Lightning's behaviour) and log it to every DualTrackLogger."""

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        from lightning_dualtrack.logger import DualTrackLogger

        text = self.parser.dump(self.config, skip_none=False)
        for logger in trainer.loggers:
            if isinstance(logger, DualTrackLogger):
                logger.log_text(text, f"config/{stage}_{self.config_filename}")


def _is_dualtrack(logger_cfg: Any) -> bool:
    class_path = getattr(logger_cfg, "class_path", None)
    if class_path is None and isinstance(logger_cfg, dict):
        class_path = logger_cfg.get("class_path")
    return class_path in _LOGGER_CLASSES


def _init_args(logger_cfg: Any) -> Any:
    return logger_cfg["init_args"] if isinstance(logger_cfg, dict) else logger_cfg.init_args


def _set(args: Any, key: str, value: Any) -> None:
    if isinstance(args, dict):
        args[key] = value
    else:
        setattr(args, key, value)


class DualTrackCLI(LightningCLI):
    """LightningCLI with the tracking flags and ``DualTrackLogger`` as the default logger."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        trainer_defaults = dict(kwargs.pop("trainer_defaults", None) or {})
        trainer_defaults.setdefault("logger", {"class_path": _LOGGER_CLASS, "init_args": {}})
        kwargs.setdefault("save_config_callback", LogConfigCallback)
        # one run directory per run: the saved config never collides with an earlier run's
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(*args, trainer_defaults=trainer_defaults, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        group = parser.add_argument_group("Tracking (DualTrackLogger)")
        group.add_argument("--experiment_name", type=str, default=None, help="MLflow experiment / W&B project")
        group.add_argument("--use_mlflow", action="store_true", help="log to MLflow (the default)")
        group.add_argument("--no_mlflow", action="store_true", help="do not log to MLflow")
        group.add_argument("--use_wandb", action="store_true", help="log to W&B (the default)")
        group.add_argument("--no_wandb", action="store_true", help="do not log to W&B")
        group.add_argument("--no_tracking", action="store_true", help="no logger at all")
        group.add_argument("--test_after_fit", type=bool, default=False, help="fit: then test the best checkpoint")
        parser.add_argument("--torch_threads", type=int, default=None, help="torch intra-op threads (torch.set_num_threads)")

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        if cfg.get("torch_threads"):
            import torch

            torch.set_num_threads(int(cfg.torch_threads))
        if cfg.get("no_tracking"):
            cfg.trainer.logger = False
            return
        if cfg.get("use_mlflow") and cfg.get("no_mlflow"):
            raise ValueError("Expected at most one of `--use_mlflow` and `--no_mlflow`, but got both")
        if cfg.get("use_wandb") and cfg.get("no_wandb"):
            raise ValueError("Expected at most one of `--use_wandb` and `--no_wandb`, but got both")
        loggers = cfg.trainer.logger if isinstance(cfg.trainer.logger, list) else [cfg.trainer.logger]
        for logger_cfg in loggers:
            if not _is_dualtrack(logger_cfg):
                continue
            args = _init_args(logger_cfg)
            if cfg.get("experiment_name"):
                _set(args, "experiment_name", cfg.experiment_name)
            if cfg.get("no_mlflow"):
                _set(args, "mlflow", False)
            elif cfg.get("use_mlflow"):
                _set(args, "mlflow", True)
            if cfg.get("no_wandb"):
                _set(args, "wandb", False)
            elif cfg.get("use_wandb"):
                _set(args, "wandb", True)
            self._continue_checkpoint_runs(cfg, args)

    @staticmethod
    def _continue_checkpoint_runs(cfg: Any, args: Any) -> None:
        """Resuming from a checkpoint that names its runs continues those runs (unless a run_id is given)."""
        ckpt_path = cfg.get("ckpt_path")
        current = args.get("run_id") if isinstance(args, dict) else getattr(args, "run_id", None)
        if not ckpt_path or current or ckpt_path in ("best", "last", "hpc", "registry"):
            return
        from lightning_dualtrack.callbacks.checkpoints import run_ids_from_checkpoint

        info = run_ids_from_checkpoint(ckpt_path)
        if info and info.get("run_id"):
            _set(args, "run_id", info["run_id"])
            if info.get("save_dir"):
                _set(args, "save_dir", info["save_dir"])

    def after_fit(self) -> None:
        cfg = self.config[self.subcommand]
        if not cfg.get("test_after_fit"):
            return
        ckpt = "best" if getattr(self.trainer.checkpoint_callback, "best_model_path", "") else None
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)


def run_lightning_cli(argv: list[str]) -> DualTrackCLI:
    """Entry point for ``dualtrack fit|validate|test|predict ...``."""
    import sys

    os.environ.setdefault("MPLBACKEND", "Agg")
    # from the console script, let LightningCLI read sys.argv itself (it warns when given both)
    args = None if list(argv) == sys.argv[1:] else list(argv)
    return DualTrackCLI(args=args, auto_configure_optimizers=False)

