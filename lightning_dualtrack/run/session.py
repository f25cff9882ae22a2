"""The run as the training process sees it: its directory, settings, journal, delivery and end.

A :class:`Run` is made by the logger from a :class:`~lightning_dualtrack.run.config.RunConfig` and started on
first use: it makes ``save_dir/<run id>/`` (or a temporary directory when that is not writable), writes
``run.json`` (the settings every process reads; never a credential), opens the journal, journals the system
metadata and asks the process's delivery service (:mod:`lightning_dualtrack.delivery.client`) to follow it.
:meth:`Run.finalize` appends ``end``, waits (bounded) until every backend has stored the session and prints the
report; a later log call starts a new session of the same run (Lightning tests after fit with the same logger).

The backend runs stay open between sessions (one W&B run for fit and test) until the run is over:
:meth:`Run.release` -- ``end_run()``, the end of a ``with`` block, the logger object being garbage-collected
(:meth:`Run.owner_gone`: a sweep drops each trial's logger), or the end of the process (:func:`end_all_runs`).

Once a second (a clock compare on the log path) :meth:`Run.check` looks after the run: the delivery service is
alive (else restarted), the journal file still exists (a deleted run directory is re-made with everything
needed to deliver the rest), and in strict mode no backend has rejected a record.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_dualtrack.core import records
from lightning_dualtrack.core.io import RUN_FILE, read_json, write_json_atomic
from lightning_dualtrack.core.journal import (
    JOURNAL_NAME,
    JournalError,
    JournalReader,
    JournalWriter,
    repair_torn_tail,
)
from lightning_dualtrack.core.messages import Messages
from lightning_dualtrack.core.redact import redact_mapping, redact_string
from lightning_dualtrack.core.values import DroppedValue, preview, short, to_float
from lightning_dualtrack.delivery import client
from lightning_dualtrack.delivery.report import final_report, sync_command
from lightning_dualtrack.delivery.state import sink_states
from lightning_dualtrack.run import compat, family, jobs, lineage, resume
from lightning_dualtrack.run import metadata as _metadata
from lightning_dualtrack.run.compat import is_pruned
from lightning_dualtrack.run.config import RunConfig, new_run_id, new_run_name
from lightning_dualtrack.run.payloads import Payloads
from lightning_dualtrack.run.policy import KeyRules, ParamRules

_STATUSES = ("success", "failed", "aborted", "pruned")
CHECK_EVERY_S = 1.0
_NEW = object()
_OPEN: set[Run] = set()  # runs with a session open or backend runs kept open: ended at interpreter exit


class Run:
    """One run's runtime state on rank zero. Not thread-safe: log calls come from one thread."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.messages = Messages(config.strict)
        enabled = [b.cls for b in config.backends.values() if b.enabled]
        policies = [cls.policy for cls in enabled if cls.policy is not None]
        self.keys = KeyRules(self.messages, self._journal_keymap, policies, [cls.title for cls in enabled])
        self.params = ParamRules(self.messages, self.keys, policies)
        self.journal: JournalWriter | None = None
        self.delivery: client.DeliveryService | None = None
        self.run_dir: Path | None = None
        self.payloads: Payloads | None = None
        self.finalized = False
        self.ending = False  # end_run: the run is over (not only a Lightning stage)
        self.auto_step = 0
        self.dropped_records = 0
        self.lost_payloads = 0
        self.last_report: dict[str, Any] | None = None
        self.checkpoint_callbacks: dict[int, Any] = {}  # every ModelCheckpoint that saved (log_model): looked at in finalize
        self._metadata_logged = False
        self._said_start = False
        self._next_check = 0.0
        # a continued run's new session: its records are held back (and delivery not told) until its first metrics
        # say whether it continues the run or rewinds it (run.lineage); None once decided
        self._watch: lineage.RewindWatch | None = None
        self._held: list[dict[str, Any]] | None = None
        self._steps: dict[str, int] = {}  # each metric key's last step in the run (read on resume)
        self._last_status: str | None = None  # how the run's last session ended (its journal, then finalize)
        self._relations_logged = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["journal"] = None  # live handles do not cross processes (ddp_spawn)
        state["delivery"] = None
        return state

    def __hash__(self) -> int:
        return id(self)

    # -- start ----------------------------------------------------------------------------------------
    def start_delivery(self) -> None:
        """Start the process's delivery service now, before the first log call (its start-up overlaps the
        model's setup); nothing to do without backends, with ``deliver=False`` or when it already runs."""
        if self.config.deliver and self.config.sinks and self.delivery is None:
            try:
                self.delivery = client.service(self.messages.warn, warm=self.config.sinks)
            except OSError as err:
                self.messages.fail(f"cannot start the delivery process ({err}); deliver later with `dualtrack sync RUN_DIR`")

    def ensure_started(self) -> JournalWriter:
        if self.journal is not None:
            return self.journal
        self.finalized = False  # Lightning finalizes at the end of fit and then tests with the same logger
        self.run_dir = self._make_run_dir()
        self.payloads = Payloads(self.run_dir, self.messages, self.config.run_id)
        previous = read_json(self.run_dir / RUN_FILE)
        if previous:
            self._restore_from_journal()
        self._write_settings(previous)
        self._say_start()
        repair_torn_tail(self.run_dir)
        self.journal = JournalWriter(self.run_dir)
        if previous and self._steps:
            self._watch, self._held = lineage.RewindWatch(self._steps), []
        self.append(records.start(self.config.run_id, bool(previous)))
        for key in self.config.tags:
            self.keys.register(key)
        _OPEN.add(self)
        self.start_delivery()
        if self.delivery is not None:
            self.delivery.exit_wait = max(self.delivery.exit_wait, self.config.finalize_timeout)
            if self._held is None:
                self.delivery.follow(self.run_dir, self.config.secrets())
        self._log_relations()
        if self.config.log_system_info and not self._metadata_logged:
            # after delivery is told: its start-up (imports, wandb.init) overlaps this (~0.3 s: the package list)
            self._metadata_logged = True
            self._log_system_metadata()
        if self.config.strict and self.delivery is not None and self._held is None:
            self._wait_until_open(120.0)
        self._next_check = time.monotonic() + CHECK_EVERY_S
        return self.journal

    def _write_settings(self, previous: dict[str, Any] | None) -> None:
        run_name = self.config.run_name or new_run_name(self.config.run_id)
        if previous and self.config.run_name is None:
            run_name = previous.get("run_name") or run_name
        self.config.run_name = run_name  # one name for every session, in every backend
        settings = self.config.settings_file(run_name)
        if previous:
            settings["created_ms"] = previous.get("created_ms", settings["created_ms"])
        write_json_atomic(self.run_dir / RUN_FILE, settings)

    def _say_start(self) -> None:
        """Once per run: what each backend will do (its mode), and which asked-for backend is off and why."""
        if self._said_start:
            return
        self._said_start = True
        for backend in self.config.backends.values():
            for note in backend.notes:
                print(f"[dualtrack] {note}", file=sys.stderr)
            if backend.off:
                print(f"[dualtrack] {backend.cls.title}: {backend.off}: nothing will be sent to it", file=sys.stderr)

    def _make_run_dir(self) -> Path:
        root = self.config.root
        # absolute: a script that changes its working directory mid-run (or before its exit handler) still writes
        # payloads into, and waits on the acks of, this run's directory
        run_dir = (root / self.config.run_id).absolute()
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
        """On resume: the key maps and params of the earlier sessions (a changed param is then seen), and each
        metric's last step (a rewind is then seen)."""
        steps = self._steps = {}
        for rec in JournalReader(self.run_dir):
            kind = rec.get("k")
            if kind == "keymap":
                for key, stored in rec["v"].items():
                    self.keys.restore(rec.get("sink", "mlflow"), key, stored)
            elif kind == "params":
                self.params.restore(rec)
            elif kind == "metrics" and isinstance(rec.get("s"), int):
                step = rec["s"]
                self.auto_step = max(self.auto_step, step + 1)
                for key in rec["v"]:
                    if steps.get(key, step - 1) < step:
                        steps[key] = step
            elif kind == "end":
                self._last_status = rec.get("status")
            elif kind == "start":
                self._last_status = None  # a session without an end crashed

    # -- looked after once a second --------------------------------------------------------------------
    def check(self) -> None:
        """The delivery service is alive, the run directory exists, and (strict) no backend failed."""
        self._next_check = time.monotonic() + CHECK_EVERY_S
        if self.journal is not None and self.journal.deleted():
            self._recreate_run_dir()
        if self.delivery is not None:
            self.delivery.check()
            if self.config.strict:
                self._strict_health()

    def _recreate_run_dir(self) -> None:
        """The run directory was deleted while the run was going on: make it again with what delivery needs (the
        journal, whole, from the still-open file; ``run.json``), say so loudly, and count the payload files
        (figures, checkpoints) that were deleted before they were delivered: those are lost."""
        try:
            kept = self.journal.recover()
            self._write_settings(read_json(self.run_dir / RUN_FILE))
        except OSError as err:
            self.messages.warn_once("run-dir-gone", f"DUALTRACK: the run directory {self.run_dir} was deleted during the run "
                                    f"and cannot be made again ({err}); records are being LOST")
            return
        missing = self._missing_payloads()
        self.lost_payloads = len(missing)
        lost = (f"; {len(missing)} payload file(s) logged before were deleted with it and are LOST "
                f"(e.g. {', '.join(missing[:3])})") if missing else ""
        self.messages.warn(f"DUALTRACK: the run directory {self.run_dir} was deleted while the run was going on. It is made "
                           f"again with the journal ({kept} bytes, every record logged so far) and run.json, so delivery "
                           f"goes on{lost}. Do not delete a run directory before its run has ended.")
        if self.delivery is not None and self._held is None:
            self.delivery.follow(self.run_dir, self.config.secrets())

    def _missing_payloads(self) -> list[str]:
        out = []
        for rec in JournalReader(self.run_dir):
            for field in ("path", "csv"):
                rel = rec.get(field)
                if isinstance(rel, str) and rel and not (self.run_dir / rel).exists():
                    out.append(rel)
        return out

    def _strict_health(self) -> None:
        """Strict mode: raise if a backend rejected a record or cannot open its run."""
        for name, state in sink_states(self.run_dir, self.config.sinks).items():
            if state.get("failed"):
                raise RuntimeError(f"strict mode: {name} rejected {state['failed']} record(s); see `dualtrack status {self.run_dir}`")
            if state.get("last_error") and not state.get("open") and not state.get("closed"):
                raise RuntimeError(f"strict mode: {name} is failing: {state['last_error']}")

    def _wait_until_open(self, timeout: float) -> None:
        """Strict mode: return once every backend run is open; raise if one cannot start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = sink_states(self.run_dir, self.config.sinks)
            if all(s.get("open") for s in states.values()):
                return
            bad = {n: s["last_error"] for n, s in states.items() if s.get("last_error") and not s.get("open")}
            if bad:
                raise RuntimeError(f"strict mode: a backend could not start: {bad}")
            self.delivery.check()
            time.sleep(0.1)
        raise TimeoutError(f"strict mode: the backends did not start within {timeout} s")

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
    def _journal_keymap(self, sink: str, mapping: dict[str, str]) -> None:
        if self.journal is not None:
            self.append(records.keymap(mapping, sink=sink))

    def append(self, record: dict[str, Any]) -> None:
        if self._held is not None:  # a continued run's session, undecided (run.lineage)
            self._held.append(record)
            return
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
                    self.messages.fail_once(f"value:{name}", f"metric {short(name)!r} dropped: {why} (got {preview(value)})")
                    continue
            values[name] = value
        if self._watch is not None and values:
            values = self._check_rewind(step, values)
        if values:
            self.append(records.metrics(step, values))
        if time.monotonic() >= self._next_check:  # the log path's only other cost: a clock compare
            self.check()

    def log_params(self, params: Any) -> None:
        self.ensure_started()
        flat = self.params.flatten(params)
        if flat is None:
            return
        update = self.params.update(flat)
        if not update.values:
            return
        short_text: dict[str, str] = {}
        for key, text in update.long.items():
            name = f"params/{self.keys.stored(key)}.txt"
            rec = self.payloads.file_bytes(text.encode("utf-8"), name, "long param")
            if rec is None:
                continue
            self.append(rec)
            note = f" ...[{len(text)} chars; full value in artifact {rec['path'][len('artifacts/'):]}]"
            short_text[key] = text[: self.params.max_chars - len(note)] + note
        self.append(records.params(update.values, short_text=short_text, latest=update.latest))

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
    def finalize(self, status: str, final: bool = False) -> dict[str, dict[str, Any]] | None:
        """End the session; ``final`` (or :attr:`ending`, set by ``end_run``): the run is over, the backend runs
        end now and none is kept open for a next session."""
        final = final or self.ending
        if final and self._restatus(status):
            self.ensure_started()  # a short session that gives the ended run its new status
        if self.journal is None or self.finalized:
            if final:
                self.release()
            return None
        if self._held is not None:  # a session that logged no metrics continues the run
            self._settle()
        for checkpoint_callback in list(self.checkpoint_callbacks.values()):
            for rec in self.payloads.checkpoints(checkpoint_callback):
                self.append(rec)
        self.finalized = True
        if status not in _STATUSES:
            status = "failed" if status not in ("finished", "FINISHED") else "success"
        if status == "failed" and isinstance(sys.exc_info()[1], KeyboardInterrupt):
            status = "aborted"
        if status == "failed" and is_pruned(sys.exc_info()[1]):  # Lightning finalizes "failed" on any exception
            status = "pruned"
        self._last_status = status
        if status == "pruned":  # no backend has a pruned state: ended as aborted (MLflow KILLED), and tagged so
            self.append(records.tags({"dualtrack.status": "pruned"}))
            status = "aborted"
        if self.journal.deleted():
            self._recreate_run_dir()
        self.append(records.end(status))
        self.journal.close()
        self.journal = None  # a later log call (e.g. trainer.test after fit) continues the run
        if self.delivery is not None:
            try:
                end_offset = os.path.getsize(self.run_dir / JOURNAL_NAME)
            except OSError:
                end_offset = 0

            def stored(states: dict[str, dict[str, Any]]) -> bool:
                return all((s.get("closed") and int(s.get("offset") or 0) >= end_offset) or s.get("gave_up")
                           for s in states.values())

            report, _ = self.delivery.wait(self.run_dir, self.config.sinks, stored, self.config.finalize_timeout)
            if final:
                report = self.release() or report
        else:
            report = sink_states(self.run_dir, self.config.sinks)
            _OPEN.discard(self)
        self._print_report(report)
        if self.config.strict and status == "success":  # on failure Lightning is handling the original error: never mask it
            failed = {n: s for n, s in report.items() if not s.get("closed")}
            if failed:
                names = ", ".join(sorted(failed))
                raise RuntimeError(f"[dualtrack] not everything reached {names} before finalize_timeout="
                                   f"{self.config.finalize_timeout:g}s; it is safe in the journal. Deliver it with:  "
                                   f"{sync_command(self.run_dir)}")
        return report

    def _print_report(self, report: dict[str, dict[str, Any]]) -> None:
        delivery = self.delivery
        held_by = delivery.pid if delivery is not None and delivery.alive() else None
        print(final_report(self.run_dir, report, finalize_timeout=self.config.finalize_timeout,
                           restarts=delivery.restarts if delivery is not None else 0, held_by=held_by,
                           off=self.config.off(), lost=self.dropped_records + self.lost_payloads), file=sys.stderr)
        self.last_report = dict(report)

    def release(self) -> dict[str, dict[str, Any]] | None:
        """The run is over: end the backend runs kept open between sessions (the W&B run is finished, its directory
        complete) and wait for that, bounded by ``finalize_timeout``. Idempotent; called by ``end_run``, when the
        logger is gone and at interpreter exit."""
        _OPEN.discard(self)
        delivery = self.delivery
        if delivery is None or not self.finalized or self.run_dir is None:
            return None
        delivery.end(self.run_dir)

        def ended(states: dict[str, dict[str, Any]]) -> bool:
            return all((s.get("closed") and not s.get("held")) or s.get("gave_up") for s in states.values())

        states, done = delivery.wait(self.run_dir, self.config.sinks, ended, self.config.finalize_timeout)
        if done:
            self.last_report = dict(states)
        return states

    # -- a continued run's new session: continue or fork (run.lineage) -------------------------------------
    def _check_rewind(self, step: int, values: dict[str, float]) -> dict[str, float]:
        if self._watch.stage is None:
            self._watch.stage = compat.calling_trainer_stage() or "?"
            if self._watch.stage in ("validate", "test", "predict"):  # evaluating a checkpoint: not a resumed training
                self._settle()  # its metrics go at the trainer's step (0) beside the run's history, as Lightning's do
                return values
        verdict, kept, repeated = self._watch.check(step, values)
        if repeated:
            self.messages.warn(f"DUALTRACK: run {self.config.run_id} already holds {', '.join(repeated)} at step {step}, "
                               "the last step it logged them at (Lightning re-runs the validation a checkpoint was "
                               "saved in): not logged again, so that no step has two values")
        if verdict == lineage.FORK:
            self._fork(step, list(values))
        elif verdict == lineage.CONTINUE:
            self._settle()
        return kept

    def _settle(self) -> None:
        """The session continues the run: journal what was held back and let delivery follow the run."""
        held, self._held, self._watch = self._held or [], None, None
        for rec in held:
            self.append(rec)
        if self.delivery is not None:
            self.delivery.follow(self.run_dir, self.config.secrets())
            if self.config.strict:
                self._wait_until_open(120.0)

    def _fork(self, step: int, keys: list[str]) -> None:
        """The session rewinds the run to ``step``: it goes on in a new run that starts with the original's history
        before ``step``; the original is left as it was (nothing of this session reaches it)."""
        original_dir, original_id, original_name = self.run_dir, self.config.run_id, self.config.run_name
        last = max(self._watch.steps.get(k, step) for k in keys)
        held, self._held, self._watch = self._held or [], None, None
        self.journal.close()
        fork_id = new_run_id()
        self.config.run_id = fork_id
        self.config.run_name = lineage.fork_name(original_name, original_id, step)
        self.config.relations["fork"] = {"run_id": original_id, "run_dir": str(original_dir.resolve()),
                                         "run_name": original_name, "step": step}
        self.run_dir = self._make_run_dir()
        self.payloads = Payloads(self.run_dir, self.messages, fork_id)
        self._write_settings(None)
        self.journal = JournalWriter(self.run_dir)
        self.append(records.start(fork_id, False))
        for rec in lineage.fork_records(JournalReader(original_dir), step, keys):
            self.append(rec)
        for rec in held:  # this session's records so far, with the files they name
            rec = lineage.without_own_tags(rec) if rec.get("k") != "start" else None
            if rec is not None:
                self._copy_payloads(rec, original_dir)
                self.append(rec)
        self.append(records.tags({"dualtrack.run_dir": str(self.run_dir.resolve()), "dualtrack.forked_from": original_id,
                                  "dualtrack.fork_step": str(step)}))
        self._share_checkpoint_dir(original_dir, original_id)
        if self.config.job is not None:
            jobs.moved(self.config.root, self.config.job, fork_id)
        parent = self.config.relations.get("parent")
        if parent:
            self._add_to_parent(parent, replaces=original_id)
        self.messages.warn(
            f"DUALTRACK: run {original_id} was resumed at step {step}, but it already holds {', '.join(keys)} up to step "
            f"{last}: logging on into a fork, run {fork_id} ({self.config.run_name!r}, {self.run_dir}), which starts with "
            f"run {original_id}'s metrics before step {step}. Run {original_id} is left as it was: no step has two values.")
        if self.delivery is not None:
            self.delivery.follow(self.run_dir, self.config.secrets())
            if self.config.strict:
                self._wait_until_open(120.0)

    def _copy_payloads(self, record: dict[str, Any], source: Path) -> None:
        for rel in lineage.payload_paths(record):
            src, dst = source / rel, self.run_dir / rel
            try:
                if src.is_dir():
                    shutil.copytree(src, dst, dirs_exist_ok=True)
                elif src.is_file():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)
            except OSError as err:
                self.payloads.disk_error("fork", rel, err)

    def _share_checkpoint_dir(self, original_dir: Path, original_id: str) -> None:
        """Lightning's default checkpoint directory (``<run dir>/<experiment>/<run id>``) was resolved before the fork
        and keeps receiving this fit's checkpoints: the fork's points to it, so that a restarted job continuing the
        fork finds them (``ckpt_path="last"``)."""
        theirs = original_dir / self.config.experiment_name / original_id
        ours = self.run_dir / self.config.experiment_name / self.config.run_id
        if theirs.is_dir() and not ours.exists():
            try:
                ours.parent.mkdir(parents=True, exist_ok=True)
                ours.symlink_to(theirs.resolve(), target_is_directory=True)
            except OSError:
                pass

    # -- parent, child and checkpoint index -----------------------------------------------------------
    def _log_relations(self) -> None:
        """Once per run: a child names its parent (tags) and joins the parent's list of children."""
        parent = self.config.relations.get("parent")
        if not parent or self._relations_logged:
            return
        self._relations_logged = True
        tags = {"dualtrack.parent_run_id": parent["run_id"]}
        if parent.get("job_type"):
            tags["dualtrack.job_type"] = str(parent["job_type"])
        self.append(records.tags(tags))
        self._add_to_parent(parent)

    def _add_to_parent(self, parent: dict[str, Any], replaces: str | None = None) -> None:
        try:
            family.add_child(parent["run_dir"], self.config.run_id, self.run_dir, self.config.run_name,
                             parent.get("job_type"), replaces=replaces)
        except OSError as err:
            self.messages.warn(f"DUALTRACK: cannot list run {self.config.run_id} among the children of run "
                               f"{parent['run_id']} ({err}); the parent's summaries will not count it")

    def note_checkpoint(self, checkpoint_callback: Any) -> None:
        """Note a checkpoint just saved in ``save_dir``'s checkpoint index (``resume_from``)."""
        path = getattr(checkpoint_callback, "_last_checkpoint_saved", None) or getattr(checkpoint_callback, "last_model_path", None)
        if not path:
            return
        step = getattr(checkpoint_callback, "_last_global_step_saved", None)
        try:
            resume.note_checkpoint(self.config.root, path, self.config.run_id,
                                   self.run_dir or self.config.root / self.config.run_id, step if isinstance(step, int) else None)
        except OSError as err:
            self.messages.warn_once("checkpoint-index", f"DUALTRACK: cannot note checkpoints in {self.config.root} ({err}); "
                                    "resume_from= will find them by their run directory only")

    def _restatus(self, status: str) -> bool:
        """``end_run(status)`` after a session that ended with success: a failed, aborted or pruned end is recorded."""
        return (self.finalized and self.journal is None and self.run_dir is not None and self._last_status == "success"
                and status in ("failed", "aborted", "pruned"))

    def owner_gone(self) -> None:
        """The logger was garbage-collected (a sweep dropped a trial's logger): end its run without waiting -- the
        session (with the status the end of the process would give it) and the backend runs, delivered by the
        service. Called by the garbage collector at any point of the program: only a journal write and a queued
        command."""
        from lightning_dualtrack.run.compat import exit_status

        _OPEN.discard(self)
        if self.journal is not None and not self.finalized:
            self.finalized = True
            try:
                for rec in self._held or ():  # undecided: journalled for `dualtrack sync`, not delivered now
                    self.journal.append(rec)
                self._held = self._watch = None
                self.journal.append(records.end(exit_status()))
                self.journal.close()
            except (JournalError, OSError):
                pass
            self.journal = None
        if self.delivery is not None and self.run_dir is not None:
            self.delivery.end_later(self.run_dir)


def end_all_runs(keep_service: bool = False) -> None:
    """The end of the process (run at interpreter exit): every run still open ends (a run whose training raised:
    ``failed``), then the delivery service is told the process is exiting and this waits, bounded, for it to end
    the backend runs. After it, the next logger starts a new delivery service.

    ``keep_service``: end every run and wait, bounded, for its backend runs to end, but keep the delivery service
    for the next logger (a notebook between experiments; the test suite between tests)."""
    service = client.current()
    if _OPEN or service is not None:
        compat.hold_sigterm_in_spawned_worker()  # ddp_spawn: torch SIGTERMs a failed worker while this ends its run
    for run in list(_OPEN):
        try:
            if keep_service and run.finalized:
                run.release()  # a session that ended keeps its status; its backend runs end
            elif keep_service:
                run.finalize(compat.exit_status(), final=True)
            elif run.journal is not None and not run.finalized:
                run.finalize(compat.exit_status())
            _OPEN.discard(run)
        except Exception as err:  # noqa: BLE001 - one run's end must not stop the others'
            print(f"[dualtrack] ending run {run.config.run_id} at exit failed: {type(err).__name__}: {err}", file=sys.stderr)
    if service is not None and not keep_service:
        service.shutdown()
        client.forget(service)


atexit.register(end_all_runs)
