"""The run as the training process sees it: its directory, settings, journal, delivery process and end.

A :class:`Run` is made by the facade from a :class:`RunConfig` (the resolved constructor arguments)
and started on first use: it makes ``save_dir/<run id>/`` (or a temporary directory when that is not
writable), writes ``run.json`` (the settings every process reads; never a credential), opens the
journal, journals the system metadata and starts the shipper. :meth:`Run.finalize` appends ``end``,
waits (bounded) for delivery and prints the report; a later log call starts a new session of the
same run (Lightning tests after fit with the same logger).

One run, one W&B directory: at a successful session's end the shipper stores everything (the report
says so only once the W&B run file provably holds it), ends the MLflow run (FINISHED) and keeps
running, with the W&B run open; the next session's ``start`` record continues both (MLflow RUNNING
again). The W&B run is finished when the run is over: at interpreter exit (:meth:`Run.release`,
registered with ``atexit``), at ``end_run``, when the training process is gone (the shipper checks
every 0.1 s), or after ``session_grace`` seconds without a next session.
"""

from __future__ import annotations

import atexit
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_dualtrack import metadata as _metadata
from lightning_dualtrack import records
from lightning_dualtrack.journal import (
    JOURNAL_NAME,
    JournalError,
    JournalReader,
    JournalWriter,
    now_ms,
    repair_torn_tail,
)
from lightning_dualtrack.normalize import MLFLOW_MAX_PARAM_VALUE, DroppedValue, preview, short, to_float
from lightning_dualtrack.redact import redact_mapping, redact_string
from lightning_dualtrack.run.config import RunConfig, new_run_name
from lightning_dualtrack.run.lifecycle import (
    ShipperProcess,
    StrictHealth,
    final_report,
    pending_message,
    shipper_env,
    sink_states,
)
from lightning_dualtrack.run.payloads import Payloads
from lightning_dualtrack.run.policy import KeyRules, Messages, ParamRules
from lightning_dualtrack.sinks.base import RUN_FILE, read_json, write_json_atomic

_STATUSES = ("success", "failed", "aborted")
FINALIZE_WAIT = ("all", "started")


def finalize_wait() -> str:
    """What a session's end waits for: ``all`` (default: every backend has stored the session), or ``started``
    (``DUALTRACK_FINALIZE_WAIT=started``: only the backends whose run is open; a backend still starting -- W&B's
    init takes ~1 s -- gets the session from the delivery process afterwards, which the end of the process
    waits for). The end of a short run then costs little; the report names what is still being delivered."""
    value = os.environ.get("DUALTRACK_FINALIZE_WAIT", "all").strip().lower() or "all"
    return value if value in FINALIZE_WAIT else "all"
_NEW = object()
class Run:
    """One run's runtime state on rank zero. Not thread-safe: log calls come from one thread."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.messages = Messages(config.strict)
        self.keys = KeyRules(self.messages, self._journal_keymap)
        self.params = ParamRules(self.messages, self.keys)
        self.journal: JournalWriter | None = None
        self.shipper: ShipperProcess | None = None
        self.strict_health: StrictHealth | None = None
        self.run_dir: Path | None = None
        self.payloads: Payloads | None = None
        self.finalized = False
        self.auto_step = 0
        self.restarts = 0  # of the delivery process, over every session of this run
        self.dropped_records = 0
        self.last_report: dict[str, Any] | None = None
        self._metadata_logged = False
        self._release_registered = False
        self.ending = False  # end_run: the run is over (not only a Lightning stage)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["journal"] = None  # live handles do not cross processes (ddp_spawn)
        state["shipper"] = None
        return state

    # -- start ----------------------------------------------------------------------------------------
    def ensure_started(self) -> JournalWriter:
        if self.journal is not None:
            return self.journal
        self.finalized = False  # Lightning finalizes at the end of fit and then tests with the same logger
        self.run_dir = self._make_run_dir()
        self.payloads = Payloads(self.run_dir, self.messages, self.config.run_id)
        previous = read_json(self.run_dir / RUN_FILE)
        settings = self.settings()
        if previous:
            settings["created_ms"] = previous.get("created_ms", settings["created_ms"])
            if self.config.run_name is None:
                settings["run_name"] = previous.get("run_name") or settings["run_name"]
            self._restore_from_journal()
        write_json_atomic(self.run_dir / RUN_FILE, settings)
        if self.config.wandb_enabled and "wandb-mode" not in self.messages.warned:
            self.messages.warned.add("wandb-mode")
            print(f"[dualtrack] W&B mode: {self.config.wandb_mode} ({self.config.wandb_mode_reason})", file=sys.stderr)
        repair_torn_tail(self.run_dir)
        self.journal = JournalWriter(self.run_dir)
        self.append(records.start(self.config.run_id, bool(previous)))
        for key in self.config.tags:
            self.keys.register(key)
        if self.shipper is not None and not self.shipper.alive():
            self.shipper = None  # it ended the runs it held (session_grace): a new one continues the run
        if self.config.start_shipper and self.config.sinks and self.shipper is None:
            env = shipper_env(self.config.tracking_uri, self.config.mlflow_user, self.config.mlflow_password)
            shipper = ShipperProcess(self.run_dir, env, self.config.sinks, warn=self.messages.warn)
            try:
                shipper.start()
                self.shipper = shipper
            except OSError as err:
                self.messages.fail(f"cannot start the delivery process ({err}); deliver later with `dualtrack sync {self.run_dir}`")
        if self.shipper is not None and not self._release_registered:
            self._release_registered = True
            # registered before the facade's own atexit finalize, so it runs after it (atexit is LIFO)
            atexit.register(self.release)
        if self.config.log_system_info and not self._metadata_logged:
            # after the shipper's start: its start-up (imports, wandb.init) overlaps this (~0.3 s: the package list)
            self._metadata_logged = True
            self._log_system_metadata()
        if self.config.strict and self.shipper is not None:
            self.strict_health = StrictHealth(self.run_dir, self.config.sinks, self.config.flush_interval)
            self.shipper.wait_until_open(120.0)
        return self.journal

    def settings(self) -> dict[str, Any]:
        c = self.config
        return {
            "run_id": c.run_id,
            "experiment_name": c.experiment_name,
            "run_name": redact_string(c.run_name) if c.run_name else new_run_name(c.run_id),
            "tags": redact_mapping(dict(c.tags)),
            "created_ms": now_ms(),
            "flush_interval": c.flush_interval,
            "strict": c.strict,  # the shipper's sinks do not fall back (e.g. W&B online -> offline)
            "mlflow": {"enabled": c.mlflow_enabled, "tracking_uri": c.tracking_uri},
            "wandb": {"enabled": c.wandb_enabled, "project": c.wandb_project, "entity": c.wandb_entity, "group": c.wandb_group, "mode": c.wandb_mode},
        }

    def _make_run_dir(self) -> Path:
        root = self.config.root
        run_dir = root / self.config.run_id
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            probe = run_dir / ".write_test"
            probe.write_bytes(b"")
            probe.unlink()
            return run_dir
        except OSError as err:
            if self.config.strict:
                raise OSError(f"save_dir {str(root)!r} is not writable: {err}") from err
            fallback = Path(tempfile.mkdtemp(prefix=f"dualtrack-{self.config.run_id}-"))
            self.messages.warn(f"DUALTRACK: save_dir {str(root)!r} is not writable ({err}); this run is journalled in {fallback} instead")
            return fallback

    def _restore_from_journal(self) -> None:
        """On resume: the key map and params of the earlier sessions (a changed param is then seen)."""
        for rec in JournalReader(self.run_dir):
            kind = rec.get("k")
            if kind == "keymap":
                for key, stored in rec["v"].items():
                    self.keys.restore(key, stored)
            elif kind == "params":
                self.params.restore(rec)
            elif kind == "metrics" and isinstance(rec.get("s"), int):
                self.auto_step = max(self.auto_step, rec["s"] + 1)

    def _log_system_metadata(self) -> None:
        meta = _metadata.collect()
        meta["command"] = redact_string(meta.get("command", ""))
        tags = {f"dualtrack.{k}": str(v) for k, v in meta.items()}
        tags["dualtrack.run_dir"] = str(self.run_dir.resolve())
        self.append(records.tags(tags))
        rec = self.payloads.file_bytes(_metadata.requirements_text().encode("utf-8"), "dualtrack/requirements.txt", "requirements file")
        if rec is not None:
            self.append(rec)

    # -- the log path ---------------------------------------------------------------------------------
    def _journal_keymap(self, mapping: dict[str, str]) -> None:
        if self.journal is not None:
            self.append(records.keymap(mapping))

    def append(self, record: dict[str, Any]) -> None:
        try:
            self.journal.append(record)
        except (JournalError, ValueError, TypeError) as err:
            self.dropped_records += 1
            if self.config.strict:
                raise
            self.messages.warn_once("journal", f"DUALTRACK: cannot write the run journal ({err}); records are being LOST")

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None) -> None:
        if self.journal is None:
            self.ensure_started()
        if step is None:
            step = self.auto_step
            self.auto_step += 1
        elif not isinstance(step, int):
            try:
                step = int(step)
            except (TypeError, ValueError):
                self.messages.warn_once(f"step:{short(repr(step))}", f"step {preview(step)} is not an integer; used {self.auto_step} instead")
                step = self.auto_step
        values: dict[str, float] = {}
        names = self.keys.metric_keys
        try:
            items = metrics.items()
        except AttributeError:
            self.messages.fail(f"log_metrics: expected a mapping of metric names to values, but got {preview(metrics)}; nothing logged")
            return
        for key, value in items:
            name = names.get(key, _NEW)
            if name is _NEW:
                name = self.keys.metric_key(key)
            if name is None:
                continue
            if type(value) is not float:
                try:
                    value = to_float(value)
                except DroppedValue as why:
                    self.messages.warn_once(f"value:{name}", f"metric {short(name)!r} dropped: {why} (got {preview(value)})")
                    continue
            values[name] = value
        if values:
            self.append(records.metrics(step, values))
        if self.shipper is not None:
            self.shipper.check()  # a clock compare; at most once a second a non-blocking poll()
            if self.strict_health is not None:
                self.strict_health.check()

    def log_params(self, params: Any) -> None:
        self.ensure_started()
        flat = self.params.flatten(params)
        if flat is None:
            return
        update = self.params.update(flat)
        if not update.values:
            return
        mlflow_text: dict[str, str] = {}
        for key, text in update.long.items():
            stored = self.keys.keymap.get(key) or key
            name = f"params/{stored}.txt"
            rec = self.payloads.file_bytes(text.encode("utf-8"), name, "long param")
            if rec is None:
                continue
            self.append(rec)
            note = f" ...[{len(text)} chars; full value in artifact {rec['path'][len('artifacts/'):]}]"
            mlflow_text[key] = text[: MLFLOW_MAX_PARAM_VALUE - len(note)] + note
        self.append(records.params(update.values, mlflow=mlflow_text, wandb=update.latest))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.ensure_started()
        clean = {}
        for key, value in redact_mapping({str(k): str(v) for k, v in tags.items()}).items():
            key = self.keys.mask(key, key, "tag key")
            self.keys.register(key)
            clean[key] = value
        if clean:
            self.append(records.tags(clean))

    def log_image(self, image: Any, name: Any, step: int | None, caption: Any, close: bool) -> None:
        if isinstance(image, str) and not isinstance(name, str):  # WandbLogger's order: log_image(key, images)
            images = list(name) if isinstance(name, (list, tuple)) else [name]
            captions = list(caption) if isinstance(caption, (list, tuple)) else [caption] * len(images)
            keys = [image] if len(images) == 1 else [f"{image}_{i}" for i in range(len(images))]
            self.messages.warn_once(
                f"image-order:{image}", f"log_image({short(image)!r}, {preview(name, 60)}) has the key first (WandbLogger's order); logged as {short(', '.join(keys))}"
            )
            for key, img, cap in zip(keys, images, captions + [None] * len(images), strict=False):
                self.log_image(img, key, step, cap, close)
            return
        if not isinstance(name, str):
            self.messages.fail(f"log_image: expected a string name, but got {preview(name)}; nothing logged")
            return
        rec = self.payloads.image(image, name, step, caption, close)
        if rec is not None:
            self.append(rec)

    def push_to_hub(self, model: Any, repo_id: str, record: bool = True, **kwargs: Any) -> str | None:
        """Write and upload the Hub folder; ``record``: also log it and the ``hf.*`` tags to the run."""
        from lightning_dualtrack.hub import push_to_hub as _push

        folder = self.run_dir / "artifacts" / "hub"
        try:
            url = _push(model, repo_id, folder, **kwargs)
        except Exception as err:  # noqa: BLE001 - network, credentials, missing package
            self.messages.fail(f"push_to_hub({repo_id!r}) failed: {type(err).__name__}: {short(str(err))}; the folder is in {folder}")
            return None
        if record:
            self.append(records.file("artifacts/hub"))
            self.set_tags({"hf.repo_id": repo_id, "hf.repo_url": url})
        return url

    # -- the end ----------------------------------------------------------------------------------------
    def finalize(self, status: str, checkpoint_callbacks: Any = (), final: bool = False) -> dict[str, dict[str, Any]] | None:
        """End the session; ``final`` (or :attr:`ending`, set by ``end_run``): the run is over, the backend runs
        end now and none is kept open for a next session."""
        final = final or self.ending
        if self.journal is None or self.finalized:
            if final:
                self.release()
            return None
        for checkpoint_callback in checkpoint_callbacks:
            for rec in self.payloads.checkpoints(checkpoint_callback):
                self.append(rec)
        self.finalized = True
        if status not in _STATUSES:
            status = "failed" if status not in ("finished", "FINISHED") else "success"
        if status == "failed" and isinstance(sys.exc_info()[1], KeyboardInterrupt):
            status = "aborted"
        self.append(records.end(status))
        self.journal.close()
        self.journal = None  # a later log call (e.g. trainer.test after fit) continues the run
        if self.shipper is not None:
            self.restarts += self.shipper.restarts
            self.shipper.restarts = 0  # counted; the same process may deliver the next session
            end_offset = os.path.getsize(self.run_dir / JOURNAL_NAME)
            background = finalize_wait() == "started" and not final and not self.config.strict
            report, kept = self.shipper.end_session(self.config.finalize_timeout, end_offset, background=background)
            if not kept:
                self.shipper = None
            elif final:
                report = self.release() or report
        else:
            report = sink_states(self.run_dir, self.config.sinks)
        print(final_report(self.run_dir, report, finalize_timeout=self.config.finalize_timeout, restarts=self.restarts,
                           held_by=self.shipper.pid if self.shipper is not None else None), file=sys.stderr)
        self.last_report = dict(report)
        if self.config.strict and status == "success":  # on failure Lightning is handling the original error: never mask it
            failed = {n: s for n, s in report.items() if not s.get("closed")}
            if failed:
                raise RuntimeError(pending_message(self.run_dir, failed, self.config.finalize_timeout))
        return report

    def release(self) -> dict[str, dict[str, Any]] | None:
        """The run is over: end the backend runs the shipper holds open between sessions (the W&B run is
        finished, its directory complete) and wait for it, bounded by ``finalize_timeout``. Idempotent;
        called at interpreter exit and by ``end_run``."""
        shipper = self.shipper
        if shipper is None or not self.finalized:
            return None
        self.shipper = None
        states = shipper.release(self.config.finalize_timeout)
        if shipper.alive():
            print(f"[dualtrack] the delivery process (pid {shipper.pid}) is still ending the runs; it goes on after "
                  f"this process exits. If it is stopped: dualtrack sync {self.run_dir}", file=sys.stderr)
        else:
            self.last_report = dict(states)
        return states
