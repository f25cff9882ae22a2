"""The run's settings, resolved once from the logger's arguments and the environment (when the logger is built).

The backends' arguments are not written here: each registered sink declares its own
(:class:`~lightning_dualtrack.sinks.base.Setting`), and :func:`backend_parameters` turns them into the logger's
keyword arguments (``<name>: bool`` to turn it on or off, then its settings: ``tracking_uri``, ``wandb_project``...).
``run.json`` holds the shared settings and one section per backend (:meth:`RunConfig.settings_file`); credentials
are kept in :attr:`BackendConfig.secrets` and handed to the delivery process in memory only.
"""

from __future__ import annotations

import inspect
import os
import re
import secrets as _secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_dualtrack.core.io import RUN_FILE
from lightning_dualtrack.core.journal import now_ms
from lightning_dualtrack.core.messages import warn
from lightning_dualtrack.core.redact import redact_mapping, redact_string
from lightning_dualtrack.delivery.sysmetrics import system_interval
from lightning_dualtrack.sinks import sink_classes
from lightning_dualtrack.sinks.base import Sink

_ID_ALPHABET = string.ascii_lowercase + string.digits
_VALID_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ADJECTIVES = ("amber", "brisk", "calm", "bold", "keen", "lucid", "mellow", "nimble", "quiet", "rapid", "steady", "vivid")
_NOUNS = ("heron", "otter", "falcon", "lynx", "maple", "comet", "river", "cedar", "badger", "wren", "delta", "quartz")


def new_run_id() -> str:
    """An 8-character id, valid as a W&B run id and a directory name."""
    return "".join(_secrets.choice(_ID_ALPHABET) for _ in range(8))


def new_run_name(run_id: str) -> str:
    """A readable name for a run the user did not name (``brisk-otter-k3x9a2bc``), the same in every backend."""
    return f"{_secrets.choice(_ADJECTIVES)}-{_secrets.choice(_NOUNS)}-{run_id}"


def check_run_id(run_id: str) -> str:
    """A run id is a directory name and a W&B run id: letters, digits, ``.``, ``_``, ``-`` (not first), <= 128."""
    if not isinstance(run_id, str) or not _VALID_RUN_ID.fullmatch(run_id):
        raise ValueError(f"Expected argument `run_id` to be letters, digits, '.', '_' or '-' (at most 128, starting with a "
                         f"letter or digit), but got {run_id!r}")
    return run_id


@dataclass
class BackendConfig:
    """One registered backend for this run: whether it is on, its settings, its secrets (memory only)."""

    name: str
    cls: type[Sink]
    enabled: bool
    settings: dict[str, Any] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    off: str | None = None  # asked for, but turned off (by the environment), and why
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def section(self) -> dict[str, Any]:
        """Its section of ``run.json``."""
        out: dict[str, Any] = {"enabled": self.enabled, **self.settings}
        if self.off:
            out["off"] = self.off
        return out


@dataclass
class RunConfig:
    """The logger's arguments, resolved (environment read once, when the logger is built)."""

    run_id: str
    root: Path
    experiment_name: str
    run_name: str | None
    tags: dict[str, str]
    backends: dict[str, BackendConfig]
    log_model: bool | str
    flush_interval: float
    strict: bool
    finalize_timeout: float
    log_system_info: bool
    deliver: bool
    system_metrics: float | None = None  # seconds between two samples in the delivery service; None: off
    # how this run relates to others, written into run.json for the backends to express: ``parent`` (a child of a
    # sweep or folds: the parent's run id, directory, name, the child's job type), ``fork`` (the run it forked from)
    relations: dict[str, dict[str, Any]] = field(default_factory=dict)
    job: Any = None  # the scheduler job slot this run was given (run.jobs.JobRun), None outside one

    @property
    def sinks(self) -> list[str]:
        """The backends this run delivers to, in registry order."""
        return [n for n, b in self.backends.items() if b.enabled]

    def enabled(self, name: str) -> bool:
        backend = self.backends.get(name)
        return backend is not None and backend.enabled

    def setting(self, name: str, key: str, default: Any = None) -> Any:
        backend = self.backends.get(name)
        return backend.settings.get(key, default) if backend is not None else default

    def secrets(self) -> dict[str, dict[str, str]]:
        return {n: dict(b.secrets) for n, b in self.backends.items() if b.enabled and b.secrets}

    def off(self) -> dict[str, str]:
        """Backends asked for but turned off, and why (said at start and in the report)."""
        return {n: b.off for n, b in self.backends.items() if b.off}

    def settings_file(self, run_name: str) -> dict[str, Any]:
        """``run.json``: what every process delivering the run reads (never a credential)."""
        out: dict[str, Any] = {
            "run_id": self.run_id,
            "experiment_name": self.experiment_name,
            "run_name": run_name,
            "tags": redact_mapping(dict(self.tags)),
            "created_ms": now_ms(),
            "flush_interval": self.flush_interval,
            "strict": self.strict,  # the sinks do not fall back (e.g. W&B online -> offline)
            "system_metrics": self.system_metrics,
        }
        for name, backend in self.backends.items():
            out[name] = redact_mapping(backend.section())
        for relation, fields in self.relations.items():
            out[relation] = dict(fields)
        return out


def backend_parameters() -> list[inspect.Parameter]:
    """The logger's keyword arguments for every registered backend: ``<name>: bool``, then its settings."""
    params = []
    for cls in sink_classes():
        params.append(inspect.Parameter(cls.name, inspect.Parameter.KEYWORD_ONLY, default=cls.enabled_by_default, annotation=bool))
        for s in cls.settings:
            params.append(inspect.Parameter(s.arg, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=s.annotation))
    return params


def backend_arguments() -> dict[str, tuple[str, str | None]]:
    """logger argument -> (backend, the setting's environment variable): LightningCLI's precedence rules."""
    return {s.arg: (cls.name, s.env) for cls in sink_classes() for s in cls.settings}


def backend_docs() -> str:
    """The backends' arguments, one line each, for the logger's docstring."""
    lines = []
    for cls in sink_classes():
        lines.append(f"        {cls.name}: deliver to {cls.title} (default {cls.enabled_by_default}).")
        for s in cls.settings:
            env = f" Else ``{s.env}``." if s.env else ""
            default = f" Default ``{s.default}``." if s.default is not None else ""
            lines.append(f"        {s.arg}: {s.help or s.key}.{env}{default}")
    return "\n".join(lines)


def latest_run_id(root: Path) -> str | None:
    runs = sorted(root.glob(f"*/{RUN_FILE}"), key=lambda p: p.stat().st_mtime)
    return runs[-1].parent.name if runs else None


def resolve_backends(given: Mapping[str, Any], common: Mapping[str, Any]) -> dict[str, BackendConfig]:
    """Every registered backend's configuration from the logger's backend arguments (``given``)."""
    unknown = set(given) - {p.name for p in backend_parameters()}
    if unknown:
        raise TypeError(f"DualTrackLogger got unexpected keyword argument(s) {sorted(unknown)}; the backends' arguments "
                        f"are {[p.name for p in backend_parameters()]}")
    out: dict[str, BackendConfig] = {}
    for cls in sink_classes():
        wanted = given.get(cls.name, cls.enabled_by_default)
        wanted = cls.enabled_by_default if wanted is None else bool(wanted)
        if not wanted:
            out[cls.name] = BackendConfig(cls.name, cls, enabled=False)
            continue
        if cls.requires is not None and not cls.requires:  # its package is missing: off, and said why
            out[cls.name] = BackendConfig(cls.name, cls, enabled=False, off=f"off ({cls.requires})")
            continue
        resolved = cls.resolve({s.key: given.get(s.arg) for s in cls.settings}, common)
        out[cls.name] = BackendConfig(cls.name, cls, enabled=resolved.off is None, settings=resolved.settings,
                                      secrets=resolved.secrets, off=resolved.off, notes=resolved.notes,
                                      warnings=resolved.warnings)
    return out


def resolve_config(
    experiment_name: str,
    run_name: str | None,
    tags: Mapping[str, Any] | None,
    *,
    backends: Mapping[str, Any],
    save_dir: str | os.PathLike,
    log_model: bool | str,
    run_id: str | None,
    resume: bool,
    flush_interval: float,
    strict: bool,
    finalize_timeout: float,
    log_system_info: bool,
    deliver: bool,
    system_metrics: bool | float = True,
) -> RunConfig:
    """Check the logger's arguments (errors name the argument and the value) and resolve them."""
    if not isinstance(experiment_name, str) or not experiment_name.strip():
        raise ValueError(f"Expected argument `experiment_name` to be a non-empty string, but got {experiment_name!r}")
    if log_model not in (False, True, "all"):
        raise ValueError(f"Expected argument `log_model` to be False, True or 'all', but got {log_model!r}")
    if not (isinstance(flush_interval, (int, float)) and flush_interval > 0):
        raise ValueError(f"Expected argument `flush_interval` to be a positive number, but got {flush_interval!r}")
    if not (isinstance(finalize_timeout, (int, float)) and finalize_timeout >= 0):
        raise ValueError(f"Expected argument `finalize_timeout` to be a number >= 0, but got {finalize_timeout!r}")
    if tags is not None and not isinstance(tags, Mapping):
        raise TypeError(f"Expected argument `tags` to be a mapping, but got {type(tags).__name__}")
    interval, changed = system_interval(system_metrics)
    if changed:
        if strict:
            raise ValueError(changed)
        warn(changed)
    root = Path(save_dir)
    run_id = check_run_id(run_id) if run_id is not None else None
    common = {"experiment_name": experiment_name, "run_name": run_name}
    return RunConfig(
        run_id=run_id or (latest_run_id(root) if resume else None) or new_run_id(),
        root=root,
        experiment_name=experiment_name,
        run_name=redact_string(run_name) if run_name else None,
        tags={str(k): str(v) for k, v in (tags or {}).items()},
        backends=resolve_backends(backends, common),
        log_model=log_model,
        flush_interval=float(flush_interval),
        strict=bool(strict),
        finalize_timeout=float(finalize_timeout),
        log_system_info=log_system_info,
        deliver=deliver,
        system_metrics=interval,
    )
