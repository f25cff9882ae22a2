"""Utilities for tests and benchmarks: a real ``mlflow server`` on loopback.

Example:
    >>> from mlflow import MlflowClient
    >>> with MlflowServer() as server:  # doctest: +SKIP
    ...     client = MlflowClient(server.url)
    ...     run = client.create_run(client.create_experiment("demo"))
    ...     server.stop()  # an outage...
    ...     server.start()  # ...and the same server is back, data kept
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["MlflowServer", "free_port"]

_LOG_TAIL_CHARS = 4000


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` now (the OS picks it by binding port 0).

    Another process may take it before it is used; servers started on it fail loudly then.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the process group led by ``pid``, ignoring a group that is gone."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class MlflowServer:
    """An ``mlflow server`` subprocess on a free loopback port, for tests and benchmarks.

    The server stores runs in ``sqlite:///<workdir>/mlflow.db`` (or ``backend_store_uri``, e.g. a
    PostgreSQL URL) and serves artifacts itself (``--serve-artifacts``, stored under
    ``<workdir>/artifacts``), so clients upload artifacts over HTTP. Its stdout and stderr go to
    ``<workdir>/server.log``. ``stop()`` kills its whole process group; ``start()`` brings it back on
    the same port and store, which is how tests simulate an outage.

    Args:
        workdir: directory for the database, artifacts and log; a temporary directory (removed on
            ``__exit__``) when ``None``.
        backend_store_uri: the tracking store; ``sqlite:///<workdir>/mlflow.db`` when ``None``.
        port: the port; a free one when ``None``. It stays the same across restarts.
        host: the interface to bind.
        workers: uvicorn worker processes (``--workers``); one keeps a 2-core machine responsive.
        startup_timeout: seconds to wait for ``GET /health`` to answer 200 on each start.
        env: extra environment variables for the server. ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION``
            defaults to ``false`` here: the job runner spawns several extra processes that tests
            do not need.
        extra_args: more ``mlflow server`` arguments.
        python: the interpreter that runs ``-m mlflow``; the current one by default.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        backend_store_uri: str | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        workers: int = 1,
        startup_timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        python: str = sys.executable,
    ) -> None:
        self._owns_workdir = workdir is None
        self.workdir = Path(workdir if workdir is not None else tempfile.mkdtemp(prefix="mlflow-server-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.backend_store_uri = backend_store_uri or f"sqlite:///{self.workdir / 'mlflow.db'}"
        self.artifacts_dir = self.workdir / "artifacts"
        self.log_path = self.workdir / "server.log"
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.workers = workers
        self.startup_timeout = startup_timeout
        self.env = dict(env or {})
        self.extra_args = list(extra_args)
        self.python = python
        self.process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def url(self) -> str:
        """The tracking URI, e.g. ``http://127.0.0.1:50123``."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server process is alive (not whether it answers)."""
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        """The command line that starts the server."""
        return [
            self.python,
            "-m",
            "mlflow",
            "server",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--backend-store-uri",
            self.backend_store_uri,
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.artifacts_dir),
            "--workers",
            str(self.workers),
            *self.extra_args,
        ]

    def start(self) -> MlflowServer:
        """Start the server (no-op if running) and wait until ``/health`` answers.

        Raises:
            RuntimeError: if the server exits or does not answer within ``startup_timeout``
                seconds; the message ends with the tail of the server's log.
        """
        if self.running:
            return self
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.env}
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- {time.strftime('%H:%M:%S')} starting: {' '.join(self.command())}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                start_new_session=True,  # its own process group: stop() reaches uvicorn's workers too
            )
        # Kill the group at interpreter exit if nobody called stop(): a new session survives us.
        self._finalizer = weakref.finalize(self, _kill_group, self.process.pid)
        self._wait_healthy()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and every process it started; the store and the port stay reserved.

        Sends SIGTERM to the process group, then SIGKILL after ``timeout`` seconds; ``timeout=0``
        kills at once (a crash rather than a shutdown).
        """
        process, self.process = self.process, None
        if process is None:
            return
        if timeout > 0:
            _kill_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # uvicorn's worker may outlive the parent for a moment: make sure the group is gone.
        _kill_group(process.pid, signal.SIGKILL)
        process.wait()
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        """The last ``chars`` characters of the server's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return text[-chars:]

    def is_healthy(self, timeout: float = 1.0) -> bool:
        """Whether ``GET /health`` answers 200 now."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _wait_healthy(self) -> None:
        """Poll ``/health`` until it answers; stop the server and raise if it never does."""
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.is_healthy():
                return
            if not self.running:
                code = self.process.returncode if self.process is not None else None
                self.stop()
                raise RuntimeError(f"mlflow server exited with code {code}:\n{self.log_tail()}")
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"mlflow server did not answer {self.url}/health within {self.startup_timeout} s:\n{self.log_tail()}"
        )

    def __enter__(self) -> MlflowServer:
        try:
            return self.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"MlflowServer(url={self.url!r}, backend_store_uri={self.backend_store_uri!r}, running={self.running})"
