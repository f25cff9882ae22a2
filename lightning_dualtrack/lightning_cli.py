"""``dualtrack fit|validate|test|predict``: LightningCLI with ``DualTrackLogger`` as the default logger.

Tracking flags (after the subcommand), as in the reference project:

* ``--experiment_name NAME``: the MLflow experiment and default W&B project;
* ``--use_<backend>`` / ``--no_<backend>`` for every registered backend (``--use_mlflow``, ``--no_wandb``,
  ``--use_tensorboard``...): choose the backends;
* ``--no_tracking``: no logger at all (``LearningRateMonitor``/``DeviceStatsMonitor`` dropped with a note);
* ``--tracking_config PATH``: a tracking config file (:mod:`lightning_dualtrack.tracking_config`).

Contradictory flags are a one-line error (exit status 2). Who decides a logger setting: the command line, else
the environment (``MLFLOW_EXPERIMENT_NAME``, ``MLFLOW_TRACKING_URI``, ``WANDB_MODE``, ``WANDB_PROJECT``), else the
recipe (and a tracking config file), else the logger's default.

The params (:func:`run_params`): each setting once, ``trainer/...``, ``model/...`` (the module's hparams as
configured), ``data/...`` (the data module's resolved settings), ``seed_everything``; Lightning's own flat merge of
the module's and data module's hparams is turned off. The config is saved in the run directory (``config.yaml``,
Lightning's behaviour) and logged to both runs as ``config/<command>_config.yaml``. ``--ckpt_path`` with a
checkpoint that names its runs continues them. With ``--test_after_fit true``, ``fit`` ends by testing the best
checkpoint in the same run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

_LOGGER_CLASS = "lightning_dualtrack.DualTrackLogger"
_LOGGER_CLASSES = {_LOGGER_CLASS, "lightning_dualtrack.logger.DualTrackLogger"}
#: callbacks that raise without a logger: dropped (with a note) when tracking is off
_NEEDS_LOGGER = ("LearningRateMonitor", "DeviceStatsMonitor")


def _env_args() -> dict[str, str]:
    """logger argument -> the environment variable that decides it unless the command line does (the experiment
    name, and every backend setting that declares a variable, e.g. ``tracking_uri``: ``MLFLOW_TRACKING_URI``)."""
    from lightning_dualtrack.run.config import backend_arguments

    out = {"experiment_name": "MLFLOW_EXPERIMENT_NAME"}
    out.update({arg: env for arg, (_backend, env) in backend_arguments().items() if env})
    return out


def _backends() -> list[tuple[str, str]]:
    """(name, title) of every registered backend: the ``--use_<name>`` / ``--no_<name>`` switches."""
    from lightning_dualtrack.sinks import sink_classes

    return [(cls.name, cls.title) for cls in sink_classes()]


#: Trainer settings that describe how the model was trained (left out of validate/test/predict runs, whose
#: config holds the recipe's value rather than the one the evaluated checkpoint was trained with)
_FIT_ONLY = {
    "max_epochs", "min_epochs", "max_steps", "min_steps", "max_time", "accumulate_grad_batches",
    "gradient_clip_val", "gradient_clip_algorithm", "check_val_every_n_epoch", "val_check_interval",
    "limit_train_batches", "limit_val_batches", "num_sanity_val_steps", "log_every_n_steps",
    "reload_dataloaders_every_n_epochs", "overfit_batches", "detect_anomaly", "deterministic", "benchmark",
}
#: Trainer settings that are objects or run plumbing, not settings a person compares runs by
_TRAINER_SKIP = {"logger", "callbacks", "plugins", "profiler", "default_root_dir", "enable_progress_bar",
                 "enable_model_summary", "barebones", "enable_autolog_hparams"}


def _empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (list, tuple, dict, str)) and not value:
        return True
    return isinstance(value, (list, tuple)) and all(isinstance(v, Mapping) and not v for v in value)


def _class_name(class_path: Any) -> str:
    return str(class_path).rsplit(".", 1)[-1]


def trainer_params(trainer_cfg: Mapping[str, Any] | Any, trainer: Any = None, stage: str = "fit") -> dict[str, Any]:
    """The Trainer's settings as params: the configured values (``auto`` resolved from the live Trainer).

    Example:
        >>> trainer_params({"max_epochs": 3, "precision": "bf16-mixed", "logger": True, "max_steps": -1})
        {'max_epochs': 3, 'precision': 'bf16-mixed', 'max_steps': -1}
    """
    if hasattr(trainer_cfg, "as_dict"):  # a jsonargparse Namespace: nested, not dotted, keys
        trainer_cfg = trainer_cfg.as_dict()
    cfg = dict(trainer_cfg.items()) if hasattr(trainer_cfg, "items") else dict(vars(trainer_cfg))
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if key in _TRAINER_SKIP or (stage != "fit" and key in _FIT_ONLY) or _empty(value):
            continue
        if isinstance(value, Mapping) or hasattr(value, "class_path"):
            continue  # an object given by class_path (a strategy, a plugin): named below
        out[key] = list(value) if isinstance(value, tuple) else value
    if trainer is not None:
        resolved = {
            "accelerator": type(getattr(trainer, "accelerator", None)).__name__.replace("Accelerator", "").lower(),
            "devices": getattr(trainer, "num_devices", None),
            "strategy": type(getattr(trainer, "strategy", None)).__name__,
            "precision": getattr(trainer, "precision", None),
            "num_nodes": getattr(trainer, "num_nodes", None),
        }
        for key, value in resolved.items():
            configured = cfg.get(key)
            if value is not None and (configured in (None, "auto") or not isinstance(configured, (str, int, list))):
                out[key] = value
    callbacks = cfg.get("callbacks") or []
    names = [_class_name(c.get("class_path") if hasattr(c, "get") else type(c).__qualname__) for c in callbacks]
    if names:
        out["callbacks"] = names
    return out


def hparams_params(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """A module's saved hyperparameters without LightningCLI's internals (``_instantiator``, ``_class_path``)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in hparams.items() if not str(k).startswith("_")}


def data_params(datamodule: Any) -> dict[str, Any]:
    """The data settings: ``describe()`` when the DataModule has one (resolved values), else its hparams."""
    if datamodule is None:
        return {}
    describe = getattr(datamodule, "describe", None)
    if callable(describe):
        try:
            description = describe()
        except Exception as err:  # noqa: BLE001 - the run's record must never stop training
            print(f"[dualtrack] datamodule.describe() failed ({type(err).__name__}: {err}); data settings from its hparams", file=sys.stderr)
        else:
            if isinstance(description, Mapping):
                return dict(description)
    return {k: v for k, v in hparams_params(getattr(datamodule, "hparams", {}) or {}).items() if not _empty(v)}


def run_params(config: Any, trainer: Any = None, model: Any = None, datamodule: Any = None, stage: str = "fit") -> dict[str, Any]:
    """What a person reads in the run's params: each setting once, under ``trainer/``, ``model/`` and ``data/``.

    ``model/`` holds the module's hyperparameters as configured (its class list resolved); ``data/`` the data
    module's resolved settings; ``trainer/`` the Trainer's. The optimizer's and scheduler's are logged by
    :class:`~lightning_dualtrack.callbacks.RunDescription` at fit start (``optimizer/``, ``lr_scheduler/``).
    """
    from lightning_dualtrack.core.values import flatten_params

    get = config.get if hasattr(config, "get") else (lambda k, d=None: getattr(config, k, d))
    nested: dict[str, Any] = {}
    seed = get("seed_everything")
    if seed is not None and seed is not False and seed is not True:  # True: a random seed, logged by Lightning
        nested["seed_everything"] = seed
    trainer_cfg = get("trainer")
    if trainer_cfg is not None:
        nested["trainer"] = trainer_params(trainer_cfg, trainer, stage)
    if model is not None:
        nested["model"] = hparams_params(getattr(model, "hparams", {}) or {})
    data = data_params(datamodule)
    if data:
        nested["data"] = data
    flat = flatten_params(nested)
    return {k: v for k, v in flat.items() if not (_empty(v) and k.startswith(("data/", "trainer/")))}


def _stage_name(stage: Any) -> str:
    """``TrainerFn.FITTING`` -> ``fit`` (its value), so the saved config is ``config/fit_config.yaml``."""
    return str(getattr(stage, "value", stage))


class LogConfigCallback(SaveConfigCallback):
    """Save the config in the run directory (Lightning's behaviour), log it to every DualTrackLogger as
    ``config/<command>_config.yaml``, and log :func:`run_params` to every logger."""

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        from lightning_dualtrack.logger import DualTrackLogger

        if not trainer.loggers:
            return
        stage_name = _stage_name(stage)
        text = self.parser.dump(self.config, skip_none=False)
        params = run_params(self.config, trainer, pl_module, getattr(trainer, "datamodule", None), stage_name)
        for logger in trainer.loggers:
            logger.log_hyperparams(params)
            if isinstance(logger, DualTrackLogger):
                logger.log_text(text, f"config/{stage_name}_{self.config_filename}")


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
        argv = kwargs.get("args")
        # what the command line itself says (an explicit setting beats an environment variable)
        self._argv: list[str] = [] if isinstance(argv, Mapping) else [str(a) for a in (sys.argv[1:] if argv is None else argv)]
        super().__init__(*args, trainer_defaults=trainer_defaults, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        group = parser.add_argument_group("Tracking (DualTrackLogger)")
        group.add_argument("--experiment_name", type=str, default=None, help="MLflow experiment / W&B project")
        for name, title in _backends():
            group.add_argument(f"--use_{name}", action="store_true", help=f"log to {title}")
            group.add_argument(f"--no_{name}", action="store_true", help=f"do not log to {title}")
        group.add_argument("--no_tracking", action="store_true", help="no logger at all")
        group.add_argument("--tracking_config", type=str, default=None,
                           help="a tracking config file (mlflow: / wandb: sections, typed schema); see tracking_config.py")
        group.add_argument("--test_after_fit", type=bool, default=False, help="fit: then test the best checkpoint")
        parser.add_argument("--torch_threads", type=int, default=None, help="torch intra-op threads (torch.set_num_threads)")

    @staticmethod
    def _usage_error(message: str) -> None:
        """One line on stderr and exit status 2 (argparse's convention), not a traceback."""
        print(f"dualtrack: error: {message}", file=sys.stderr)
        raise SystemExit(2)

    def _check_flags(self, cfg: Any) -> None:
        names = [name for name, _ in _backends()]
        for name in names:
            if cfg.get(f"use_{name}") and cfg.get(f"no_{name}"):
                self._usage_error(f"--use_{name} and --no_{name} contradict each other; give at most one")
        if cfg.get("no_tracking"):
            given = [f"--use_{n}" for n in names if cfg.get(f"use_{n}")]
            if given:
                self._usage_error(f"--no_tracking and {' '.join(given)} contradict each other; give at most one")

    def _given_on_command_line(self, arg: str) -> bool:
        """Whether the command line sets the logger argument ``arg`` (``--trainer.logger...{arg}`` or a flag)."""
        argv = self._argv
        for i, token in enumerate(argv):
            if not token.startswith("--trainer.logger"):
                continue
            if arg in token or (i + 1 < len(argv) and "=" not in token and arg in argv[i + 1]):
                return True
        return False

    def _apply_env(self, args: Any) -> None:
        """Recipe default < environment variable < command line: a recipe value the environment decides
        is replaced (by ``None`` where the logger reads the variable itself)."""
        for arg, env in _env_args().items():
            value = os.environ.get(env)
            if not value or self._given_on_command_line(arg):
                continue
            # the logger reads the backends' variables itself when given None
            _set(args, arg, value if arg == "experiment_name" else None)

    def _drop_callbacks_needing_a_logger(self, cfg: Any, why: str) -> None:
        callbacks = cfg.trainer.get("callbacks") or []
        if not isinstance(callbacks, list):
            return
        kept, dropped = [], []
        for cb in callbacks:
            path = cb.get("class_path") if hasattr(cb, "get") else type(cb).__qualname__
            (dropped if _class_name(path) in _NEEDS_LOGGER else kept).append(cb)
        if dropped:
            names = ", ".join(_class_name(cb.get("class_path") if hasattr(cb, "get") else type(cb).__qualname__) for cb in dropped)
            print(f"[dualtrack] {why}: dropped {names} (it needs a logger)", file=sys.stderr)
            cfg.trainer.callbacks = kept

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        if cfg.get("torch_threads"):
            import torch

            torch.set_num_threads(int(cfg.torch_threads))
        self._check_flags(cfg)
        if cfg.get("no_tracking"):
            cfg.trainer.logger = False
        logger_cfg_all = cfg.trainer.get("logger")
        if logger_cfg_all in (None, False, []):
            why = "--no_tracking" if cfg.get("no_tracking") else "no logger configured"
            self._drop_callbacks_needing_a_logger(cfg, why)
            return
        loggers = logger_cfg_all if isinstance(logger_cfg_all, list) else [logger_cfg_all]
        tracking = None
        if cfg.get("tracking_config"):
            from lightning_dualtrack.tracking_config import load_tracking_config

            tracking = load_tracking_config(cfg.tracking_config)
        for logger_cfg in loggers:
            if not _is_dualtrack(logger_cfg):
                continue
            args = _init_args(logger_cfg)
            if tracking is not None:
                # the file is a recipe value: the environment (below) and the command line beat it
                for key, value in tracking.logger_kwargs.items():
                    if not self._given_on_command_line(key):
                        _set(args, key, value)
                self._tracking_schema = tracking.schema
                tracking = None  # the first DualTrackLogger only
            self._apply_env(args)
            if cfg.get("experiment_name"):
                _set(args, "experiment_name", cfg.experiment_name)
            for name, _title in _backends():
                if cfg.get(f"no_{name}"):
                    _set(args, name, False)
                elif cfg.get(f"use_{name}"):
                    _set(args, name, True)
            self._continue_checkpoint_runs(cfg, args)

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        schema = getattr(self, "_tracking_schema", None)
        trainer = getattr(self, "trainer", None)
        if schema is not None and trainer is not None:
            self._use_tracker(trainer, schema)
        if self.save_config_callback is not None and issubclass(self.save_config_callback, LogConfigCallback):
            # LogConfigCallback logs the params (trainer/, model/, data/), each once. Lightning's own merge of the
            # module's and the data module's hparams would log them again, flat, and refuses a key both hold with
            # different values -- e.g. `class_names` after resuming (the module's resolved list, the data's None).
            for obj in (getattr(self, "model", None), getattr(self, "datamodule", None)):
                if obj is not None and hasattr(obj, "_log_hyperparams"):
                    obj._log_hyperparams = False

    def _use_tracker(self, trainer: Any, schema: Any) -> None:
        """``--tracking_config``: the first DualTrackLogger becomes an ExperimentTracker with the same settings, the
        file's schema and the end-of-run monitoring (the logger was built but has not started a run)."""
        from lightning_dualtrack.logger import DualTrackLogger
        from lightning_dualtrack.trackers import ExperimentTracker

        cfg = self.config[self.subcommand] if self.subcommand else self.config
        loggers = cfg.trainer.logger if isinstance(cfg.trainer.logger, list) else [cfg.trainer.logger]
        logger_cfg = next(lg for lg in loggers if _is_dualtrack(lg))
        args = _init_args(logger_cfg)
        kwargs = args.as_dict() if hasattr(args, "as_dict") else dict(args)
        tracker = ExperimentTracker(**kwargs, schema=schema)
        replaced = False
        new = []
        for logger in trainer.loggers:
            if not replaced and isinstance(logger, DualTrackLogger):
                new.append(tracker)
                replaced = True
            else:
                new.append(logger)
        trainer.loggers = new

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

