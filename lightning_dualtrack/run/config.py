"""The run's settings, resolved once from the facade's arguments and the environment (when the logger is built)."""

from __future__ import annotations

import os
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_dualtrack.redact import split_url_credentials
from lightning_dualtrack.sinks.base import RUN_FILE

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
WANDB_MODES = ("online", "offline", "disabled")
_ID_ALPHABET = string.ascii_lowercase + string.digits
_ADJECTIVES = ("amber", "brisk", "calm", "bold", "keen", "lucid", "mellow", "nimble", "quiet", "rapid", "steady", "vivid")
_NOUNS = ("heron", "otter", "falcon", "lynx", "maple", "comet", "river", "cedar", "badger", "wren", "delta", "quartz")


def new_run_id() -> str:
    """An 8-character id, valid as a W&B run id and a directory name."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def new_run_name(run_id: str) -> str:
    """A readable name for a run the user did not name (``brisk-otter-k3x9a2bc``), the same in both backends."""
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{run_id}"


@dataclass
class RunConfig:
    """The facade's arguments, resolved (environment read once, when the logger is built)."""

    run_id: str
    root: Path
    experiment_name: str
    run_name: str | None
    tags: dict[str, str]
    mlflow_enabled: bool
    tracking_uri: str
    mlflow_user: str | None
    mlflow_password: str | None
    wandb_enabled: bool
    wandb_project: str | None
    wandb_entity: str | None
    wandb_group: str | None
    wandb_mode: str
    wandb_mode_reason: str
    log_model: bool | str
    flush_interval: float
    strict: bool
    finalize_timeout: float
    log_system_info: bool
    start_shipper: bool
    sinks: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.sinks = [n for n, on in (("mlflow", self.mlflow_enabled), ("wandb", self.wandb_enabled)) if on]



def _wandb_credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text() or "wandb" in netrc.read_text()
    except OSError:
        return False


def resolve_wandb_mode(mode: str | None) -> tuple[str, str]:
    """The W&B mode and why: the argument, else ``WANDB_MODE``, else online with credentials, offline without."""
    if mode is None:
        env = os.environ.get("WANDB_MODE")
        if env:
            mode, reason = env, "WANDB_MODE"
        elif _wandb_credentials_present():
            mode, reason = "online", "W&B credentials found"
        else:
            mode, reason = "offline", "no W&B credentials found (WANDB_API_KEY or ~/.netrc)"
    else:
        reason = "wandb_mode argument"
    mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
    if mode not in WANDB_MODES:
        raise ValueError(f"Expected `wandb_mode` to be one of {WANDB_MODES}, but got {mode!r}")
    return mode, reason


def latest_run_id(root: Path) -> str | None:
    runs = sorted(root.glob(f"*/{RUN_FILE}"), key=lambda p: p.stat().st_mtime)
    return runs[-1].parent.name if runs else None


def resolve_config(
    experiment_name: str,
    run_name: str | None,
    tags: Mapping[str, Any] | None,
    *,
    mlflow: bool,
    tracking_uri: str | None,
    wandb: bool,
    wandb_project: str | None,
    wandb_entity: str | None,
    wandb_group: str | None,
    wandb_mode: str | None,
    save_dir: str | os.PathLike,
    log_model: bool | str,
    run_id: str | None,
    resume: bool,
    flush_interval: float,
    strict: bool,
    finalize_timeout: float,
    log_system_info: bool,
    start_shipper: bool,
) -> RunConfig:
    """Check the facade's arguments (errors name the argument and the value) and resolve them."""
    if not isinstance(experiment_name, str) or not experiment_name.strip():
        raise ValueError(f"Expected argument `experiment_name` to be a non-empty string, but got {experiment_name!r}")
    if log_model not in (False, True, "all"):
        raise ValueError(f"Expected argument `log_model` to be False, True or 'all', but got {log_model!r}")
    if not (isinstance(flush_interval, (int, float)) and flush_interval > 0):
        raise ValueError(f"Expected argument `flush_interval` to be a positive number, but got {flush_interval!r}")
    if tags is not None and not isinstance(tags, Mapping):
        raise TypeError(f"Expected argument `tags` to be a mapping, but got {type(tags).__name__}")
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    uri, user, password = split_url_credentials(uri)
    mode, reason = resolve_wandb_mode(wandb_mode)
    root = Path(save_dir)
    return RunConfig(
        run_id=run_id or (latest_run_id(root) if resume else None) or new_run_id(),
        root=root,
        experiment_name=experiment_name,
        run_name=run_name,
        tags={str(k): str(v) for k, v in (tags or {}).items()},
        mlflow_enabled=bool(mlflow),
        tracking_uri=uri,
        mlflow_user=user,
        mlflow_password=password,
        wandb_enabled=bool(wandb) and mode != "disabled",
        wandb_project=wandb_project or os.environ.get("WANDB_PROJECT") or experiment_name,
        wandb_entity=wandb_entity or os.environ.get("WANDB_ENTITY"),
        wandb_group=wandb_group,
        wandb_mode=mode,
        wandb_mode_reason=reason,
        log_model=log_model,
        flush_interval=float(flush_interval),
        strict=bool(strict),
        finalize_timeout=float(finalize_timeout),
        log_system_info=log_system_info,
        start_shipper=start_shipper,
    )
