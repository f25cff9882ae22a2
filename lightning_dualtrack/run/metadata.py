"""Run metadata collected once at start: versions, devices, host, git state, command line, requirements."""

from __future__ import annotations

import getpass
import os
import platform
import socket
import subprocess
import sys
from typing import Any

from lightning_dualtrack.core.redact import redact_argv


def _git(*args: str, cwd: str | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=True, stdin=subprocess.DEVNULL
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def git_state(cwd: str | None = None) -> dict[str, Any]:
    commit = _git("rev-parse", "HEAD", cwd=cwd)
    if not commit:
        return {}
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
    return {"git_commit": commit, "git_dirty": bool(status)}


def versions() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version()}
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        info["cuda"] = getattr(torch.version, "cuda", None)
        try:
            info["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
        except Exception:  # noqa: BLE001
            info["cudnn"] = None
    backends = []  # each registered backend's package (its sink's requirement), as installed
    from lightning_dualtrack.sinks import sink_classes

    for cls in sink_classes():
        requirement = getattr(cls.requires, "requirement", None)
        if requirement:
            backends.append(str(requirement).split(">")[0].split("=")[0].split("<")[0].strip())
    for dist in ("lightning", *backends, "torchmetrics", "open_clip_torch", "lightning-dualtrack"):
        try:
            from importlib.metadata import version

            info[dist.replace("-", "_")] = version(dist)
        except Exception:  # noqa: BLE001
            pass
    return info


def devices() -> dict[str, Any]:
    torch = sys.modules.get("torch")
    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "platform": platform.platform()}
    if torch is not None:
        try:
            count = torch.cuda.device_count()
        except Exception:  # noqa: BLE001
            count = 0
        info["gpu_count"] = count
        if count:
            try:
                info["gpu_names"] = ", ".join(sorted({torch.cuda.get_device_name(i) for i in range(count)}))
            except Exception:  # noqa: BLE001
                pass
    return info


def user() -> str | None:
    """Who runs the training (the login name, as MLflow's ``mlflow.user``), None when the system cannot say."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry (a container's arbitrary uid), no LOGNAME
        return None


def entry_point(argv: list[str]) -> str | None:
    """The script or program that started the run (``sys.argv[0]``), absolute when it is a file: MLflow's source."""
    if not argv or not argv[0] or argv[0] in ("-c", "-m"):
        return None
    first = argv[0]
    return os.path.abspath(first) if os.path.isfile(first) else first


def collect(argv: list[str] | None = None) -> dict[str, Any]:
    """Everything recorded as ``dualtrack.*`` tags (MLflow, which also gets its standard ``mlflow.user`` /
    ``mlflow.source.*`` tags from ``user``, ``entry_point`` and ``git_commit``) and ``dualtrack/*`` config (W&B)."""
    argv = list(argv if argv is not None else sys.argv)
    meta: dict[str, Any] = {}
    meta.update(versions())
    meta.update(devices())
    meta["host"] = socket.gethostname()
    meta["pid"] = os.getpid()
    meta["cwd"] = os.getcwd()
    meta["user"] = user()
    meta["entry_point"] = entry_point(redact_argv(argv))
    meta["command"] = " ".join(redact_argv(argv))
    meta.update(git_state())
    return {k: v for k, v in meta.items() if v is not None}


def requirements_text() -> str:
    """``name==version`` for every installed distribution, sorted (a pip-freeze without a subprocess)."""
    from importlib.metadata import distributions

    lines = set()
    for dist in distributions():
        name = dist.metadata.get("Name")
        if name:
            lines.add(f"{name}=={dist.version}")
    return "\n".join(sorted(lines, key=str.lower)) + "\n"
