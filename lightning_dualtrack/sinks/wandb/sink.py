"""Weights & Biases sink: journal records -> history rows, config, summary, media, artifacts.

``wandb`` is imported only inside the methods that need it. Rows carry ``trainer/global_step`` as a value and every other
metric is defined against it (``define_metric("*", step_metric=..., step_sync=True)``), so a row whose
step is lower than the previous one (validation after training, a resumed run) is kept, not dropped.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from lightning_dualtrack.core.errors import DeliveryError, PermanentError, TransientError
from lightning_dualtrack.core.imports import _WANDB_AVAILABLE
from lightning_dualtrack.core.journal import Entry
from lightning_dualtrack.sinks.base import STATUS_TO_EXIT, Resolved, RunContext, Setting, Sink

STEP_KEY = "trainer/global_step"
# Each history row carries the journal offset of the last record in it. ``run.log`` only hands a row
# to wandb-core, which writes it later: if the delivery process dies first, rows it counted as
# delivered are not in the run file. On resume, the highest offset in the run files says exactly what
# W&B holds, and delivery restarts from there (no row lost, none written twice).
OFFSET_KEY = "_dualtrack_offset"
# Delivery's own figures: grouped under ``system/`` and hidden from the run's default charts.
HEALTH_PREFIX = "system/dualtrack/wandb/"
_MAX_TAG = 64
MODES = ("online", "offline", "disabled")
_OPEN_RUNS: set[int] = set()  # the sinks of this process with a W&B run open (they share one wandb-core)
# W&B's rules for a project name (wandb_settings.validate_project): refused with a UsageError, never a passing fault
_PROJECT_BAD_CHARS = re.compile(r"[/\\#?%:]")
_PROJECT_MAX = 128


def credentials_present() -> bool:
    """Whether W&B credentials exist (``WANDB_API_KEY`` or a ``~/.netrc`` entry): then online is the default."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "wandb" in netrc.read_text()
    except OSError:
        return False


def resolve_mode(mode: str | None) -> tuple[str, str]:
    """The W&B mode and why: the argument, else ``WANDB_MODE``, else online with credentials, offline without."""
    if mode is None:
        env = os.environ.get("WANDB_MODE")
        if env:
            mode, reason = env, f"WANDB_MODE={env}"
        elif credentials_present():
            mode, reason = "online", "W&B credentials found"
        else:
            mode, reason = "offline", "no W&B credentials found (WANDB_API_KEY or ~/.netrc)"
    else:
        reason = f"wandb_mode={mode!r}"
    mode = {"dryrun": "offline", "run": "online"}.get(str(mode), mode)
    if mode not in MODES:
        raise ValueError(f"Expected `wandb_mode` (or WANDB_MODE) to be one of {MODES}, but got {mode!r}")
    return str(mode), reason


def valid_project(name: str) -> tuple[str, str | None]:
    """``name`` as a W&B project W&B accepts, and why it changed (None: unchanged).

    Example:
        >>> valid_project("team/har")
        ('team-har', "W&B project names cannot contain '/'")
    """
    bad = sorted(set(_PROJECT_BAD_CHARS.findall(name)))
    fixed = _PROJECT_BAD_CHARS.sub("-", name)
    why = []
    if bad:
        why.append(f"W&B project names cannot contain {''.join(bad)!r}")
    if len(fixed) > _PROJECT_MAX:
        fixed = fixed[:_PROJECT_MAX]
        why.append(f"W&B project names have at most {_PROJECT_MAX} characters")
    return fixed, ("; ".join(why) or None)


def _quiet_env() -> None:
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    os.environ.setdefault("WANDB_DISABLE_GIT", "true")
    os.environ.setdefault("WANDB_DISABLE_CODE", "true")


def _base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"


def _unreachable(url: str, timeout: float = 3.0) -> str | None:
    """Why the W&B server at ``url`` cannot be reached (any HTTP answer counts as reachable), or None."""
    import threading
    import urllib.error
    import urllib.request

    result: list[str | None] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(url, timeout=timeout).close()  # noqa: S310 - the configured W&B URL
            result.append(None)
        except urllib.error.HTTPError:
            result.append(None)
        except Exception as err:  # noqa: BLE001 - refused, timeout, DNS...
            result.append(f"{url} unreachable: {type(err).__name__}: {str(err)[:200]}")

    thread = threading.Thread(target=probe, daemon=True)  # bounds DNS resolution too
    thread.start()
    thread.join(timeout + 1.0)
    return result[0] if result else f"{url} unreachable: no answer within {timeout:g} s"


# How often wandb-core writes what it holds to the run file (its default, 15 s, would leave the file up to
# 15 s behind: a session's end waits until the file provably holds every row).
FILE_FLUSH_S = 0.2


class WandbSink(Sink):
    name = "wandb"
    title = "W&B"
    requires = _WANDB_AVAILABLE
    settings = (
        Setting("project", "wandb_project", env="WANDB_PROJECT", help="W&B project (default: the experiment name)"),
        Setting("entity", "wandb_entity", env="WANDB_ENTITY", help="W&B entity (team or user)"),
        Setting("group", "wandb_group", help="W&B run group"),
        Setting("job_type", "wandb_job_type", help="W&B job type"),
        Setting("mode", "wandb_mode", annotation=Literal["online", "offline", "disabled"] | None, env="WANDB_MODE",
                help="``online | offline | disabled`` (with no argument and no ``WANDB_MODE``: online when W&B "
                     "credentials exist, offline otherwise)"),
    )
    link_fields = ("run_id", "project", "entity", "url", "mode", "dir", "dirs")
    appends = True  # a resent row is a second row
    holds_open = True  # fit, validate and test of one process: one run, one offline directory

    @classmethod
    def resolve(cls, given: Mapping[str, Any], common: Mapping[str, Any]) -> Resolved:
        mode, reason = resolve_mode(given.get("mode"))
        out = super().resolve({**given, "mode": mode}, common)
        out.settings["mode_reason"] = reason
        if mode == "disabled":
            out.off = f"off ({reason})"
            return out
        project = str(out.settings.get("project") or common.get("experiment_name") or "lightning_dualtrack")
        fixed, why = valid_project(project)
        if why:
            out.warnings.append(f"W&B project {project!r} is not allowed ({why}); using {fixed!r} "
                                "(pass wandb_project= to choose another)")
        out.settings["project"] = fixed
        out.notes.append(f"W&B mode: {mode} ({reason})")
        return out

    @classmethod
    def warm_up(cls) -> None:
        """``import wandb`` (~1 s of CPU) and start this process's ``wandb-core``, before the first run needs them."""
        _quiet_env()
        import wandb

        wandb.setup()

    @classmethod
    def classify(cls, err: BaseException) -> DeliveryError | None:
        try:
            from wandb.errors import UsageError
        except ImportError:  # pragma: no cover - wandb missing: nothing of it raised this
            return None
        if isinstance(err, UsageError):  # a rule of W&B's (a name, a setting): the same call fails again
            return PermanentError(f"W&B refused the run's settings: {str(err)[:400]}")
        return None

    upload_flag = "wandb"
    upload_help = ("upload the run's offline W&B directories (all of them, oldest first, into its one W&B run id) with "
                   "W&B's own `wandb sync`, once; recorded in the run's state/wandb.uploaded.json so that a second sync "
                   "uploads nothing twice. Default: when W&B credentials exist (WANDB_API_KEY or ~/.netrc)")

    @classmethod
    def upload(cls, run_dir: Path, state: Mapping[str, Any], wanted: bool | None, log: Callable[[str], None]) -> bool:
        from lightning_dualtrack.sinks.wandb.upload import upload_run

        if wanted is False:
            return True
        if wanted is None and not credentials_present():
            return True  # no credentials: `dualtrack status` shows the `wandb sync` command
        return upload_run(run_dir, state, log)

    @classmethod
    def where(cls, state: Mapping[str, Any]) -> str:
        ident = state.get("identity") or {}
        if not ident.get("url") and ident.get("dirs"):  # offline, resumed by other processes: every part
            try:
                dirs = json.loads(ident["dirs"])
                return " + ".join(map(str, dirs)) + f" ({len(dirs)} directories: upload them all with `dualtrack sync --wandb`)"
            except (TypeError, ValueError):
                pass
        return super().where(state)

    @classmethod
    def hints(cls, state: Mapping[str, Any]) -> list[str]:
        ident = state.get("identity") or {}
        where = ident.get("url") or ident.get("dir")
        if not where:
            return []
        if "offline-run" in str(where):
            from lightning_dualtrack.sinks.wandb.upload import offline_dirs, uploaded_dirs

            run_dir = Path(where).parent.parent
            done = set(uploaded_dirs(run_dir))
            left = [d for d in offline_dirs(run_dir, str(ident.get("run_id"))) if str(d.relative_to(run_dir)) not in done]
            if done and not left:
                return [f"W&B:        offline run in {Path(where).parent}, uploaded (`dualtrack sync --wandb`)"]
            return [f"W&B:        offline run in {Path(where).parent}  (upload: dualtrack sync --wandb {run_dir})"]
        return [f"W&B:        {where}"]

    def __init__(self, ctx: RunContext, init_timeout: float = 30.0) -> None:
        super().__init__(ctx)
        if not _WANDB_AVAILABLE:
            raise ModuleNotFoundError(str(_WANDB_AVAILABLE))
        _quiet_env()
        cfg = self.section
        self.project = cfg.get("project") or ctx.settings["experiment_name"]
        self.entity = cfg.get("entity")
        # a child run (run.json's ``parent``): in the group named after its parent, with its kind as the job type
        parent = ctx.settings.get("parent") or {}
        self.group = cfg.get("group") or parent.get("run_name")
        self.job_type = parent.get("job_type") or cfg.get("job_type")
        self.mode = cfg.get("mode", "offline")
        self.strict = bool(ctx.settings.get("strict"))
        self.init_timeout = init_timeout
        self.run = None
        self._row: dict[str, Any] = {}
        self._row_step: int | None = None
        self._row_offset = 0
        self._entry_offset = 0
        self._sessions_held = 0
        self._last_step: int | None = None
        self._monitor_paused = False

    # -- run lifecycle -------------------------------------------------------------------------
    def _stats_settings(self) -> dict[str, Any]:
        """W&B's own system monitor, pointed at the training process tree (this process only delivers); off in
        ``dualtrack sync``, which runs after training, and with ``system_metrics=False``."""
        interval = self.ctx.system_interval
        if not interval:
            return {"x_disable_stats": True, "x_disable_machine_info": True}
        # wandb-core's monitor runs only with machine info on; with x_disable_meta no environment record is written
        return {"x_disable_stats": False, "x_disable_machine_info": False, "x_stats_pid": int(self.ctx.system_pid),
                "x_stats_track_process_tree": True, "x_stats_sampling_interval": float(interval)}

    def _pause_monitor(self, paused: bool) -> None:
        """Between two sessions the run is held open but nothing trains for it (a sweep trains the next trial): W&B's
        monitor pauses, as in a notebook between cells (``publish_pause``: private API, best effort)."""
        if self.run is None or paused == self._monitor_paused or not self.ctx.system_interval:
            return
        try:
            interface = self.run._interface
            if paused:
                interface.publish_pause()
            else:
                interface.publish_resume()
            self._monitor_paused = paused
        except Exception:  # noqa: BLE001 - the monitor goes on sampling; nothing else depends on it
            pass

    def _settings(self, mode: str):
        import wandb

        return wandb.Settings(
            silent=True,
            console="off",
            disable_git=True,
            disable_code=True,
            save_code=False,
            **self._stats_settings(),
            x_disable_meta=True,  # we write our own metadata, with secrets redacted
            x_save_requirements=False,
            init_timeout=self.init_timeout,
            x_transaction_log_flush_interval=FILE_FLUSH_S,
            mode=mode,
        )

    def open(self, state: dict[str, Any]) -> dict[str, Any]:
        import wandb

        s = self.ctx.settings
        tags = [f"{k}:{v}"[:_MAX_TAG] for k, v in (s.get("tags") or {}).items()]
        kwargs = dict(
            project=self.project,
            entity=self.entity,
            group=self.group,
            job_type=self.job_type,
            name=s.get("run_name"),
            id=self.ctx.run_id,
            dir=str(self.ctx.run_dir),
            tags=tags or None,
            resume="allow",
            config={"dualtrack/run_id": self.ctx.run_id},
            reinit="create_new",
        )
        unreachable = _unreachable(_base_url()) if self.mode == "online" else None
        try:
            if unreachable:
                raise ConnectionError(unreachable)  # do not wait out init_timeout for a server we cannot reach
            self.run = wandb.init(settings=self._settings(self.mode), **kwargs)
        except Exception as err:  # noqa: BLE001 - any init failure
            if self.mode != "online":
                raise (self.classify(err) or TransientError(f"wandb.init failed: {err}")) from err
            why = f"{type(err).__name__}: {str(err)[:200]}"
            if self.strict:
                raise PermanentError(
                    f"W&B online init failed ({why}); strict mode does not fall back to offline. "
                    "Log in (`wandb login` or WANDB_API_KEY), or use wandb_mode='offline'"
                ) from err
            # Documented fallback: online init failed (no network / credentials) -> record offline,
            # upload later with `wandb sync`. After a failed online init, wandb 0.31 refuses an offline
            # init of the same run id in this process ("run ID ... is in use", wandb #9865) unless its
            # service is torn down first -- which would end the other runs this process holds open.
            if not unreachable and not _OPEN_RUNS:
                wandb.teardown()
            self.mode = "offline"
            try:
                self.run = wandb.init(settings=self._settings("offline"), **kwargs)
            except Exception as again:  # noqa: BLE001
                raise (self.classify(again) or TransientError(f"wandb.init failed: {again}")) from again
            self.fallback_reason = f"W&B online init failed ({why}); recording offline (upload later with `wandb sync`)"
        _OPEN_RUNS.add(id(self))
        self.run.define_metric(STEP_KEY, hidden=False)
        # internal: no chart, no summary entry (it is only read back on resume, from the run file)
        self.run.define_metric(OFFSET_KEY, hidden=True, summary="none")
        self.run.define_metric(f"{HEALTH_PREFIX}*", step_metric=STEP_KEY, hidden=True, summary="none")
        self.run.define_metric("*", step_metric=STEP_KEY, step_sync=True)
        offline_dir = os.path.dirname(self.run.dir) if self.run.dir else None
        identity = {
            "run_id": self.run.id,
            "project": self.run.project or self.project,
            "entity": self.run.entity or self.entity,
            "url": self.run.url if self.mode == "online" else None,
            "mode": self.mode,
            "dir": offline_dir,
        }
        dirs = self.run_dirs()
        if len(dirs) > 1:  # a run resumed by another process: wandb 0.31 never appends to a run file
            identity["dirs"] = json.dumps(dirs)
        return identity

    def run_dirs(self) -> list[str]:
        """Every W&B directory holding a part of this run, oldest first (one unless another process resumed it)."""
        from lightning_dualtrack.sinks.wandb.runfile import find_run_files

        try:
            return list(dict.fromkeys(str(p.parent) for p in find_run_files(self.ctx.run_dir / "wandb", self.ctx.run_id)))
        except OSError:
            return []

    def hold(self, offset: int, timeout: float = 10.0) -> None:
        """End a session, keeping the W&B run open for the next one of this process (test after fit).

        A hidden row carrying ``offset`` is written, and this returns once the run file provably holds
        it -- and so every row, config change and artifact before it (wandb-core writes in order).
        Raises :class:`TransientError` when that cannot be seen within ``timeout`` seconds.
        """
        import time

        from lightning_dualtrack.sinks.wandb.runfile import last_history_value

        self._flush_row()
        self._pause_monitor(True)
        self._sessions_held += 1
        self._log({f"{HEALTH_PREFIX}sessions_ended": float(self._sessions_held), STEP_KEY: self._last_step or 0,
                   OFFSET_KEY: offset})
        path = self.run.settings.sync_file
        deadline = time.monotonic() + timeout
        while True:
            try:
                if int(last_history_value(path, OFFSET_KEY) or 0) >= offset:
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TransientError(f"the W&B run file {path} does not show the session's last row after {timeout:g} s")
            time.sleep(0.02)

    def link(self, other: str, identity: dict[str, Any]) -> None:
        values = {f"{other}/{k}": v for k, v in identity.items() if v is not None}
        if values:
            self.run.config.update(values, allow_val_change=True)

    def report_health(self, health: dict[str, float], step: int | None) -> None:
        self._flush_row()
        row: dict[str, Any] = {f"{HEALTH_PREFIX}{k}": float(v) for k, v in health.items()}
        row[STEP_KEY] = step or 0
        self._log(row)

    def _clean_summary(self) -> None:
        """The offset and delivery's own figures are bookkeeping: out of the run's summary."""
        try:
            summary = self.run.summary
            for key in [k for k in summary.keys() if k == OFFSET_KEY or k.startswith(HEALTH_PREFIX)]:
                del summary[key]
        except Exception:  # noqa: BLE001 - cosmetic: never fail a close on it
            pass

    def close(self, status: str | None) -> None:
        self._flush_row()
        self._clean_summary()
        exit_code = STATUS_TO_EXIT.get(status, 1) if status is not None else 1
        self.run.finish(exit_code=exit_code)
        self.run = None
        _OPEN_RUNS.discard(id(self))

    def abandon(self) -> None:
        if self.run is not None:
            self._flush_row()
            self._clean_summary()
            try:
                self.run.finish(exit_code=1)
            except Exception:  # noqa: BLE001
                pass
            self.run = None
            _OPEN_RUNS.discard(id(self))

    # -- delivery ------------------------------------------------------------------------------
    def _flush_row(self) -> None:
        if self._row:
            row = dict(self._row)
            if "" in row:  # W&B silently drops an empty key; MLflow stores it as "_" too
                name = "_"
                while name in row:
                    name += "_"
                row[name] = row.pop("")
            row[STEP_KEY] = self._row_step
            row[OFFSET_KEY] = self._row_offset
            self._log(row)
            self._row = {}
            self._row_step = None

    def _log(self, row: dict[str, Any]) -> None:
        self._requests += 1
        started = self.response_times.start()  # the hand-over to wandb-core (it uploads in the background)
        try:
            self.run.log(row)
        except (TypeError, ValueError) as err:
            raise PermanentError(f"W&B rejected a row: {err}") from err
        except Exception as err:  # noqa: BLE001
            raise TransientError(f"wandb.log failed: {err}") from err
        finally:
            self.response_times.stop(started)

    def deliver(self, entries: list[Entry]) -> None:
        # ``stored(i)`` after each row handed over: a retry after a failure resends none of them (W&B
        # appends a row per call: a resent row would be a duplicate). A row is built from this call's
        # entries only, so a row half-built when a call failed is dropped and rebuilt on the retry.
        self.progress = 0
        self._row, self._row_step = {}, None
        self._pause_monitor(False)
        for i, entry in enumerate(entries):
            rec = entry.record
            kind = rec.get("k")
            self._entry_offset = entry.offset
            if kind == "hist":  # histograms join the step's row like metrics
                rec, kind = {**rec, "v": self._histograms(rec.get("v"))}, "metrics"
            if kind == "metrics":
                step = rec.get("s") or 0
                # a new row for a new step, or for a key already in this row (a second value logged at
                # the same step would otherwise overwrite the first)
                values = rec["v"]
                if not isinstance(values, dict):
                    raise PermanentError(f"a 'metrics' record's values are a {type(values).__name__}, not a mapping")
                if self._row and (step != self._row_step or not self._row.keys().isdisjoint(values)):
                    self._flush_row()
                    self.stored(i)
                self._row_step = step
                self._last_step = step
                self._row_offset = entry.offset
                self._row.update(rec["v"])
                continue
            self._flush_row()
            self.stored(i)
            if kind == "params":
                self.run.config.update(rec["v"], allow_val_change=True)
                latest = rec.get("latest") or rec.get("wandb")
                if latest:  # a changed param: MLflow keeps `key.vN`, W&B's config the latest under `key`
                    self.run.config.update(latest, allow_val_change=True)
            elif kind == "tags":
                self._deliver_tags(rec["v"])
            elif kind in ("file", "image", "table", "cm", "model", "delete"):
                getattr(self, f"_deliver_{kind}")(rec)
            self.stored(i + 1)
        self._flush_row()
        self.stored(len(entries))

    def _deliver_tags(self, tags: dict[str, str]) -> None:
        meta = {f"dualtrack/{k[len('dualtrack.'):]}": v for k, v in tags.items() if k.startswith("dualtrack.")}
        if meta:  # run metadata goes to the config, not the tag list
            self.run.config.update(meta, allow_val_change=True)
        new = [f"{k}:{v}"[:_MAX_TAG] for k, v in tags.items() if not k.startswith("dualtrack.")]
        if new:
            self.run.tags = tuple(dict.fromkeys([*(self.run.tags or ()), *new]))

    @staticmethod
    def _histograms(values: Any) -> dict[str, Any]:
        """A ``hist`` record's ``{key: {min, max, counts}}`` as ``wandb.Histogram`` values (equal-width bins)."""
        import numpy as np
        import wandb

        if not isinstance(values, dict):
            raise PermanentError(f"a 'hist' record's values are a {type(values).__name__}, not a mapping")
        out = {}
        for key, h in values.items():
            try:
                counts = np.asarray(h["counts"], dtype=np.int64)
                edges = np.linspace(float(h["min"]), float(h["max"]), len(counts) + 1)
                out[key] = wandb.Histogram(np_histogram=(counts, edges))
            except (KeyError, TypeError, ValueError) as err:
                raise PermanentError(f"histogram {key!r} cannot be read ({type(err).__name__}: {err})") from err
        return out

    def _media_row(self, rec: dict[str, Any], value: Any) -> None:
        self._log({rec["key"]: value, STEP_KEY: rec.get("s") or 0, OFFSET_KEY: self._entry_offset})

    def storage_lost(self) -> bool:
        """An offline run whose run file was deleted: wandb-core writes on into a file nobody will ever read."""
        if self.run is None or self.mode != "offline":
            return False
        sync_file = getattr(self.run.settings, "sync_file", None)
        return bool(sync_file) and not os.path.exists(sync_file)

    def durable_offset(self) -> int | None:
        """The journal offset up to which this run's files provably hold every row (0: none)."""
        from lightning_dualtrack.sinks.wandb.runfile import read_runs

        try:
            history = read_runs(self.ctx.run_dir, self.ctx.run_id).history
        except (FileNotFoundError, ValueError):
            return 0
        return max((int(row.get(OFFSET_KEY) or 0) for row in history), default=0)

    def _deliver_file(self, rec: dict[str, Any]) -> None:
        path = self.ctx.artifact_file(rec["path"])
        if not path.exists():
            raise PermanentError(f"payload file {path} is missing")
        base = self.ctx.run_dir / "artifacts"
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        for f in files:
            self.run.save(str(f), base_path=str(base), policy="now")
            self.bytes_uploaded += f.stat().st_size

    def _deliver_image(self, rec: dict[str, Any]) -> None:
        import wandb

        self._media_row(rec, wandb.Image(str(self.ctx.artifact_file(rec["path"])), caption=rec.get("caption")))

    def _load_table(self, rec: dict[str, Any]):
        import wandb

        with open(self.ctx.artifact_file(rec["path"]), encoding="utf-8") as fh:
            data = json.load(fh)
        rows = []
        for row in data["data"]:
            cells = []
            for cell in row:
                if isinstance(cell, dict) and "_image" in cell:
                    cell = wandb.Image(str(self.ctx.artifact_file(cell["_image"])))
                cells.append(cell)
            rows.append(cells)
        return wandb.Table(columns=data["columns"], data=rows)

    def _deliver_table(self, rec: dict[str, Any]) -> None:
        self._media_row(rec, self._load_table(rec))

    def _deliver_cm(self, rec: dict[str, Any]) -> None:
        import wandb

        with open(self.ctx.artifact_file(rec["path"]), encoding="utf-8") as fh:
            data = json.load(fh)
        names = data["class_names"]
        rows = [
            [names[i], names[j], data["matrix"][i][j]] for i in range(len(names)) for j in range(len(names))
        ]
        table = wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=rows)
        # The same custom chart wandb.plot.confusion_matrix builds, fed from a matrix instead of labels.
        chart = wandb.plot_table(
            "wandb/confusion_matrix/v1",
            table,
            {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
            {"title": data.get("title") or "Confusion matrix"},
        )
        self._media_row(rec, chart)

    def _deliver_model(self, rec: dict[str, Any]) -> None:
        import wandb

        path = self.ctx.artifact_file(rec["path"])
        name = rec.get("wandb_name") or f"model-{self.ctx.run_id}"
        art = wandb.Artifact(name=name, type="model", metadata=rec.get("metadata") or {})
        if path.is_dir():
            art.add_dir(str(path))
        else:
            art.add_file(str(path))
        aliases = list(dict.fromkeys([*(rec.get("aliases") or []), "latest"]))
        self.run.log_artifact(art, aliases=aliases)

    def _deliver_delete(self, rec: dict[str, Any]) -> None:
        """A checkpoint its callback removed (see :mod:`~lightning_dualtrack.sinks.wandb.artifacts`)."""
        if self.mode != "online":
            self.note("delete-offline", "W&B offline runs cannot delete an artifact version: checkpoints their callback "
                                        "removed stay in the offline run and are uploaded with it (`best` and `latest` "
                                        "are on kept ones; delete the others in W&B's UI or with wandb.Api() after "
                                        "`dualtrack sync --wandb`)")
            return
        import wandb

        from lightning_dualtrack.sinks.wandb.artifacts import delete_versions

        name = rec.get("wandb_name") or f"model-{self.ctx.run_id}"
        collection = f"{self.run.entity}/{self.run.project}/{name}"
        try:
            api = wandb.Api(timeout=30)
        except Exception as err:  # noqa: BLE001 - best effort: the version stays
            self.note("delete-api", f"W&B: no public API to delete removed checkpoints ({type(err).__name__}: {err}); they stay")
            return
        delete_versions(api, collection, [(rec.get("metadata") or {}).get("original_filename")], self.note)
