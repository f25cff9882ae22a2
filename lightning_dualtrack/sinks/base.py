"""What a backend is: the interface delivery drives, and what the backend declares about itself.

A sink class is the one place that knows its backend. Besides turning journal records into backend calls
(:meth:`Sink.open`, :meth:`Sink.deliver`, :meth:`Sink.close`), it declares, as class attributes and class
methods that import nothing of its backend:

* its **settings** (:class:`Setting`: the logger argument, the key in ``run.json``, the default, the
  environment variable) and how they resolve (:meth:`Sink.resolve`: credentials kept out of files, a name the
  backend refuses fixed up with a warning, "turned off by the environment" said);
* whether it is on by default (:attr:`Sink.enabled_by_default`) and the package it needs (:attr:`Sink.requires`);
* what its own exceptions mean (:meth:`Sink.classify`, see :mod:`lightning_dualtrack.core.errors`);
* which identity fields the other backends write into their runs (:attr:`Sink.link_fields`);
* its lines in the final report and in ``dualtrack status`` (:meth:`Sink.where`, :meth:`Sink.hints`);
* its rules for what the user logs (:attr:`Sink.policy`, applied on the training thread: see
  :class:`lightning_dualtrack.run.policy.KeyRules`);
* its own upload of what it keeps locally, after ``dualtrack sync`` delivered a run (:attr:`Sink.upload_flag`,
  :meth:`Sink.upload`: W&B's offline directories through ``wandb sync``).

The logger's arguments, ``run.json``, LightningCLI's ``--use_<name>``/``--no_<name>`` switches and ``dualtrack
status`` are all read from these, through the registry (:mod:`lightning_dualtrack.sinks`).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from lightning_dualtrack.core.errors import DeliveryError
from lightning_dualtrack.core.io import RUN_FILE, read_json
from lightning_dualtrack.core.journal import Entry
from lightning_dualtrack.core.summary import RunSummary


@dataclass(frozen=True)
class Setting:
    """One setting of a backend.

    Args:
        key: its key in the backend's section of ``run.json`` (and in :attr:`RunContext.section`).
        arg: the logger's argument (``DualTrackLogger(<arg>=...)``, LightningCLI ``init_args.<arg>``).
        annotation: the argument's type, as LightningCLI shows and checks it.
        default: the value when neither the argument nor ``env`` gives one.
        env: an environment variable read when the logger is built: the argument beats it, it beats the default.
        help: one line for the logger's docstring and the README's table.
        secret: never written to a file (handed to the delivery process in memory).
    """

    key: str
    arg: str
    annotation: Any = str | None
    default: Any = None
    env: str | None = None
    help: str = ""
    secret: bool = False


@dataclass
class Resolved:
    """A backend's settings for one run, resolved from the logger's arguments and the environment.

    ``settings`` go to ``run.json``; ``secrets`` (credentials) only to the delivery process's memory; ``off`` says
    why the backend is off although it was asked for (``WANDB_MODE=disabled``); ``notes`` are said once at start;
    ``warnings`` say what was done with a value the backend would refuse (a ``DualTrackWarning`` when the logger is
    built; strict mode: a ``ValueError``).
    """

    settings: dict[str, Any] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    off: str | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class ResponseTimes:
    """How long each backend request took (wall clock, failures included: a timeout is what a slow server
    costs), over the last ``window`` requests; :meth:`figures` gives p50 and p95 in milliseconds.

    Example:
        >>> rt = ResponseTimes()
        >>> for ms in (10, 20, 30, 40, 200):
        ...     rt.observe(ms / 1000)
        >>> rt.figures()
        {'response_p50_ms': 30.0, 'response_p95_ms': 200.0, 'response_window': 5.0}
    """

    def __init__(self, window: int = 500) -> None:
        self._seconds: deque[float] = deque(maxlen=window)

    def observe(self, seconds: float) -> None:
        self._seconds.append(seconds)

    def start(self) -> float:
        return time.perf_counter()

    def stop(self, started: float) -> None:
        self._seconds.append(time.perf_counter() - started)

    def figures(self) -> dict[str, float]:
        """``response_p50_ms``, ``response_p95_ms`` (nearest rank) and ``response_window`` (requests counted);
        empty before the first request."""
        if not self._seconds:
            return {}
        ordered = sorted(self._seconds)

        def rank(q: float) -> float:
            return ordered[min(len(ordered) - 1, max(0, -(-len(ordered) * q // 100) - 1))] * 1000.0  # ceil(n q) - 1

        return {"response_p50_ms": round(rank(50), 3), "response_p95_ms": round(rank(95), 3), "response_window": float(len(ordered))}


@dataclass
class RunContext:
    """One run as delivery sees it: its directory, ``run.json`` and, in memory only, each backend's secrets."""

    run_dir: Path
    settings: dict[str, Any]
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)  # sink name -> credentials (never on disk)
    #: the training process whose system figures are sampled (the delivery service's parent); None in ``dualtrack
    #: sync``, which runs after training
    system_pid: int | None = None

    @classmethod
    def load(cls, run_dir: str | os.PathLike, secrets: Mapping[str, Mapping[str, str]] | None = None) -> RunContext:
        run_dir = Path(run_dir)
        settings = read_json(run_dir / RUN_FILE)
        if not isinstance(settings, dict):
            raise FileNotFoundError(f"{run_dir} is not a dualtrack run directory (no {RUN_FILE})")
        return cls(run_dir=run_dir, settings=settings, secrets={k: dict(v) for k, v in (secrets or {}).items()})

    @property
    def run_id(self) -> str:
        return self.settings["run_id"]

    @property
    def system_interval(self) -> float | None:
        """Seconds between two samples of the training process's system figures while it trains (None: off)."""
        value = self.settings.get("system_metrics")
        return float(value) if self.system_pid and isinstance(value, (int, float)) and value > 0 else None

    def section(self, sink: str) -> dict[str, Any]:
        """The backend's own settings (its section of ``run.json``)."""
        return dict(self.settings.get(sink) or {})

    def artifact_file(self, rel: str) -> Path:
        return self.run_dir / rel


class Sink:
    """One backend. Only a sink module imports its backend, and only inside the methods that need it.

    Required: :meth:`open`, :meth:`deliver`, :meth:`close`. Optional hooks (the defaults do nothing):
    :meth:`link`, :meth:`describe`, :meth:`report_health`, :meth:`report_system`, :meth:`abandon`, :meth:`durable_offset` (a sink whose backend
    acknowledges before it stores returns what provably is stored), :meth:`hold` (with ``holds_open``), and
    ``fallback_reason`` (a sentence delivery prints once, e.g. "recording offline"). Errors raised are those of
    :mod:`lightning_dualtrack.core.errors`, or the backend's own, which :meth:`classify` maps.
    """

    #: the registry name: the logger's ``<name>=True|False`` argument, the ``run.json`` section, ``--use_<name>``
    name: ClassVar[str] = "base"
    #: how people write the backend's name
    title: ClassVar[str] = "base"
    #: on unless the logger is told otherwise
    enabled_by_default: ClassVar[bool] = True
    #: the package the sink needs (``lightning_utilities.core.imports.RequirementCache``), or None
    requires: ClassVar[Any] = None
    #: the backend's settings, in the order of the logger's arguments
    settings: ClassVar[tuple[Setting, ...]] = ()
    #: identity fields the other backends write into their runs (cross-links); None: all of them
    link_fields: ClassVar[tuple[str, ...] | None] = None
    #: training-side rules for keys and params (an object with ``key_rules()`` etc.; see run.policy), or None
    policy: ClassVar[Any] = None
    #: whether replaying a delivered record stores it twice (W&B appends rows): the worker then acks
    #: partial progress exactly, and the sink must report it through :meth:`stored`
    appends: ClassVar[bool] = False
    #: whether the backend run can stay open from one session of a run to the next (Lightning's fit, then test):
    #: the worker then calls :meth:`hold` at a session's end instead of :meth:`close`
    holds_open: ClassVar[bool] = False
    #: a sentence delivery prints after ``open`` when the sink fell back to something else
    fallback_reason: str | None = None

    # -- declarations -------------------------------------------------------------------------------
    @classmethod
    def resolve(cls, given: Mapping[str, Any], common: Mapping[str, Any]) -> Resolved:
        """The run's settings of this backend: ``given`` maps each :attr:`settings` key to the logger's argument
        (None: not given); ``common`` holds the run's shared settings (``experiment_name``, ``run_name``...).
        The argument beats the environment variable, which beats the default. Raise ``ValueError`` naming the
        argument for a value that cannot work; fix up (with a note) one the backend would refuse by its rules."""
        out = Resolved()
        for s in cls.settings:
            value = given.get(s.key)
            if value is None and s.env:
                value = os.environ.get(s.env) or None
            if value is None:
                value = s.default
            (out.secrets if s.secret else out.settings)[s.key] = value
        return out

    @classmethod
    def warm_up(cls) -> None:
        """Called once when the delivery service starts (at normal priority, while the model is being set up):
        import the backend's library and start what it starts, so that the first run opens without waiting."""

    @classmethod
    def classify(cls, err: BaseException) -> DeliveryError | None:
        """What one of the backend's own exceptions means (None: not one of them; the generic rules apply)."""
        return None

    @classmethod
    def where(cls, state: Mapping[str, Any]) -> str:
        """Where a person finds the backend's run (the final report, ``dualtrack status``)."""
        ident = state.get("identity") or {}
        return str(ident.get("url") or ident.get("dir") or ident.get("run_id") or "(not created)")

    @classmethod
    def hints(cls, state: Mapping[str, Any]) -> list[str]:
        """Commands that open (or upload) what the backend stored, for ``dualtrack status``."""
        return []

    @classmethod
    def upload_command(cls, run_dir: str | os.PathLike, state: Mapping[str, Any]) -> str | None:
        """The command that uploads what the backend recorded locally for this run (W&B offline), or None."""
        return None

    # -- one run ------------------------------------------------------------------------------------
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._requests = 0
        self.bytes_uploaded = 0
        self.progress = 0  # entries of the current deliver() call already stored (for partial retries)
        self.on_stored: Callable[[int], None] | None = None  # set by the worker: ack as requests succeed
        self.response_times = ResponseTimes()  # each backend request's latency (health: p50/p95 per backend)
        self.on_note: Callable[[str, str], None] | None = None  # set by the worker: one line per subject in delivery.log

    @property
    def section(self) -> dict[str, Any]:
        """This backend's settings for the run (its ``run.json`` section)."""
        return self.ctx.section(self.name)

    @property
    def secrets(self) -> dict[str, str]:
        return dict(self.ctx.secrets.get(self.name) or {})

    def note(self, subject: str, message: str) -> None:
        """Say once per ``subject`` (in the run's ``delivery.log``) what the backend could not do and why, when that is
        not a failure to retry (an artifact store that cannot delete)."""
        if self.on_note is not None:
            self.on_note(subject, message)

    def stored(self, n: int) -> None:
        """The first ``n`` entries of the current :meth:`deliver` call are stored (called after each request)."""
        self.progress = n
        if self.on_stored is not None and n > 0:
            self.on_stored(n)

    @property
    def requests(self) -> int:
        """Backend calls made so far (reported as health and in ``state/<sink>.json``)."""
        return self._requests

    def open(self, state: dict[str, Any]) -> dict[str, Any]:
        """Create or resume the backend run; ``state`` is what a previous ``open`` returned (or {})."""
        raise NotImplementedError

    def deliver(self, entries: list[Entry]) -> None:
        """Deliver records in order, calling :meth:`stored` as requests succeed; replays must be idempotent."""
        raise NotImplementedError

    def close(self, status: str | None) -> None:
        """End the backend run; ``status`` is success | failed | aborted, None for a run that crashed."""
        raise NotImplementedError

    # -- optional hooks --------------------------------------------------------------------------
    def link(self, other: str, identity: dict[str, Any]) -> None:
        """Record the other backend's run identity in this backend's run (cross-linking)."""

    def report_health(self, health: dict[str, float], step: int | None) -> None:
        """Record delivery's own health figures (where the backend keeps system figures)."""

    def describe(self, summary: RunSummary, others: list[dict[str, Any]]) -> None:
        """Write the run's description (MLflow: ``mlflow.note.content``) from what delivery folded out of the journal;
        ``others``: per other backend ``{"title", "url", "where", "upload"}``. Called at each session's end, best
        effort."""

    def report_system(self, samples: list[tuple[int, int, dict[str, float]]]) -> None:
        """Record samples of the training process's system figures, each ``(index, t_ms, figures)``: ``index`` counts
        the run's samples from 0, ``figures`` uses the generic names of
        :mod:`lightning_dualtrack.delivery.sysmetrics` (``cpu_percent``, ``gpu/0/utilization_percent``...), which the
        sink names as its backend does. Delivery calls it only on sinks that define it, between requests, best effort:
        a failure keeps the samples for the next call (at most the latest 720). A backend with its own system monitor
        (W&B) leaves this out and points its monitor at ``ctx.system_pid``."""

    #: ``dualtrack sync --<upload_flag>`` / ``--no-<upload_flag>``: the backend's own upload of its local files once the
    #: run is delivered (None: the backend keeps nothing to upload); ``upload_help`` documents it in ``--help``
    upload_flag: ClassVar[str | None] = None
    upload_help: ClassVar[str] = ""

    @classmethod
    def upload(cls, run_dir: Path, state: Mapping[str, Any], wanted: bool | None, log: Callable[[str], None]) -> bool:
        """After ``dualtrack sync`` delivered the run (``state``: this sink's ``state/<name>.json``): upload what the
        backend keeps locally. ``wanted``: the flag (None: neither given, the backend's default). Returns False when
        something is left to upload (said through ``log``)."""
        return True

    def abandon(self) -> None:
        """Release resources without ending the run (delivery is stopping with work pending)."""

    def durable_offset(self) -> int | None:
        """The journal offset up to which the backend provably stores every record; None: not known."""
        return None

    def storage_lost(self) -> bool:
        """Whether the backend's local files for this run are gone (the run directory was deleted while the run was
        being delivered): delivery then starts the run over into new files. Checked once per delivery pass."""
        return False

    def hold(self, offset: int, timeout: float = 10.0) -> None:
        """(``holds_open`` sinks) End a session but not the backend run: return once every record up to journal
        byte ``offset`` is provably stored; raise a :class:`TransientError` if that is not seen in ``timeout``."""
        raise NotImplementedError


STATUS_TO_EXIT = {"success": 0, "failed": 1, "aborted": 255}
