"""MLflow sink: journal records -> ``log_batch`` requests, artifacts, run status, model registry.

Metrics, params, tags and run status go through :mod:`~lightning_dualtrack.sinks.mlflow.rest` (plain REST for
``http(s)`` servers, ``MlflowClient`` for every other store); artifacts and the model registry use
``MlflowClient``, whose own HTTP retries are turned off (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``, a short
timeout): delivery retries with its own backoff, so a slow or dead server delays delivery instead of blocking
for minutes. ``mlflow`` is imported only inside the methods that need it: the class's declarations (settings,
policy, error classification) cost nothing to read.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_dualtrack.core.errors import AlreadyExists, DeliveryError, PermanentError, TooLargeError
from lightning_dualtrack.core.imports import _MLFLOW_AVAILABLE
from lightning_dualtrack.core.io import STATE_DIR, read_json
from lightning_dualtrack.core.journal import Entry
from lightning_dualtrack.core.redact import split_url_credentials, strip_url_credentials
from lightning_dualtrack.core.summary import RunSummary
from lightning_dualtrack.core.values import param_text
from lightning_dualtrack.sinks.base import Resolved, RunContext, Setting, Sink
from lightning_dualtrack.sinks.mlflow.conventions import experiment_tags, standard_tags
from lightning_dualtrack.sinks.mlflow.errors import classify_mlflow
from lightning_dualtrack.sinks.mlflow.keys import MLFLOW_MAX_TAG_VALUE, KeyMap, MlflowPolicy
from lightning_dualtrack.sinks.mlflow.rest import ClientApi, RestApi

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
_MLFLOW_RUN_ID = re.compile(r"[0-9a-f]{32}")
MAX_METRICS = 1000
MAX_PARAMS = 100
MAX_TAGS = 100
MAX_ENTITIES = 1000
MAX_BODY_BYTES = 900_000  # MLflow's limit is 1 MB; keep a margin for JSON overhead
HEALTH_PREFIX = "system/dualtrack/mlflow/"
_STATUS = {"success": "FINISHED", "failed": "FAILED", "aborted": "KILLED", None: "FAILED"}
# run.json's relations to other runs, as MLflow tags naming those runs' MLflow ids (the parent's makes MLflow's UI
# show this run nested under it)
_RELATED = (("parent", "mlflow.parentRunId"), ("fork", "dualtrack.forked_from.mlflow_run_id"))
_RELATED_EVERY_S = 2.0


def configure_client_env(timeout_s: int = 10) -> None:
    """Make MLflow's client fail fast; delivery owns retries. Called before ``import mlflow``."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


def _absolute_sqlite(uri: str | None) -> str | None:
    """``sqlite:///mlflow.db`` (relative to the working directory) as an absolute URI: the delivery process and a
    later ``dualtrack sync`` from another directory find the same database."""
    if uri and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rest = uri[len("sqlite:///"):]
        if rest and not rest.startswith(":memory:"):
            return "sqlite:///" + os.path.abspath(rest)
    return uri


def run_url(tracking_uri: str | None, experiment_id: str, run_id: str) -> str:
    """Where a person finds the run in the MLflow UI."""
    base = strip_url_credentials(tracking_uri) or ""
    if base.startswith(("http://", "https://")):
        return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"mlflow ui --backend-store-uri {base}  ->  http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}"


def chunk_batch(metrics: list, params: list, tags: list) -> list[tuple[list, list, list]]:
    """Split entities into requests within MLflow's ``log_batch`` limits (count and body size).

    Entities are tuples whose first two items are key and value.
    """
    chunks: list[tuple[list, list, list]] = []
    cur: tuple[list, list, list] = ([], [], [])
    size = 0

    def flush() -> None:
        nonlocal cur, size
        if any(cur):
            chunks.append(cur)
        cur, size = ([], [], []), 0

    for kind, items, limit in ((1, params, MAX_PARAMS), (2, tags, MAX_TAGS), (0, metrics, MAX_METRICS)):
        for item in items:
            item_size = len(item[0]) + (len(item[1]) if isinstance(item[1], str) else 24) + 64
            total = len(cur[0]) + len(cur[1]) + len(cur[2])
            if len(cur[kind]) >= limit or total >= MAX_ENTITIES or size + item_size > MAX_BODY_BYTES:
                flush()
            cur[kind].append(item)
            size += item_size
    flush()
    return chunks


class MlflowSink(Sink):
    name = "mlflow"
    title = "MLflow"
    requires = _MLFLOW_AVAILABLE
    settings = (
        Setting("tracking_uri", "tracking_uri", env="MLFLOW_TRACKING_URI", default=DEFAULT_TRACKING_URI,
                help="MLflow tracking URI; ``user:pass@`` credentials in it are used but never written anywhere"),
        Setting("registry_uri", "registry_uri", env="MLFLOW_REGISTRY_URI",
                help="MLflow model registry URI (default: the tracking URI)"),
        Setting("experiment_tags", "mlflow_experiment_tags", annotation=dict[str, str] | None,
                help="tags set on the MLflow experiment (``{key: value}``: what the experiment is; the runs' own tags are ``tags``)"),
    )
    link_fields = ("run_id", "experiment_id", "tracking_uri", "url")
    policy = MlflowPolicy()

    @classmethod
    def resolve(cls, given: Mapping[str, Any], common: Mapping[str, Any]) -> Resolved:
        out = super().resolve(given, common)
        for key in ("tracking_uri", "registry_uri"):
            out.settings[key] = _absolute_sqlite(out.settings.get(key))
        secrets: dict[str, str] = {}
        for key, prefix in (("tracking_uri", "tracking"), ("registry_uri", "registry")):
            if not out.settings.get(key):
                continue
            uri, user, password = split_url_credentials(str(out.settings[key]))
            out.settings[key] = uri
            if user:
                secrets[f"{prefix}_username"] = user
            if password:
                secrets[f"{prefix}_password"] = password
        out.secrets.update(secrets)
        out.settings["experiment_tags"] = experiment_tags(out.settings.get("experiment_tags"), out.warnings)
        return out

    @classmethod
    def warm_up(cls) -> None:
        import requests  # noqa: F401 - the REST client's library (mlflow itself is imported only for other stores)

    @classmethod
    def classify(cls, err: BaseException) -> DeliveryError | None:
        return classify_mlflow(err)

    @classmethod
    def hints(cls, state: Mapping[str, Any]) -> list[str]:
        where = cls.where(state)
        if where == "(not created)":
            return []
        return [f"MLflow UI:  {where.split('  ->  ')[0]}" if "mlflow ui" in where else f"MLflow UI:  {where}"]

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        configure_client_env()
        section = self.section
        self.tracking_uri = section.get("tracking_uri") or DEFAULT_TRACKING_URI
        self.registry_uri = section.get("registry_uri") or None
        secrets = self.secrets
        # MlflowClient reads credentials from the environment only (one set per delivery process)
        for key, var in (("tracking_username", "MLFLOW_TRACKING_USERNAME"), ("tracking_password", "MLFLOW_TRACKING_PASSWORD")):
            if secrets.get(key):
                os.environ[var] = secrets[key]
        if str(self.tracking_uri).startswith(("http://", "https://")):
            self.api: Any = RestApi(self.tracking_uri, username=secrets.get("tracking_username"),
                                    password=secrets.get("tracking_password"))
        else:
            self.api = ClientApi(self.client)
        self.api.response_times = self.response_times  # REST and MlflowClient calls: one latency window
        self.keys = KeyMap()
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._params_logged: dict[str, str] = {}
        self._related: dict[str, str] = {}  # tag -> the related run's MLflow id set on this run ("": never, another store)
        self._related_wanted = sum(1 for rel, _ in _RELATED if (ctx.settings.get(rel) or {}).get("run_dir"))
        self._related_due = 0.0

    @property
    def client(self):
        """``MlflowClient``, imported on first use (artifacts, registry, non-HTTP stores)."""
        if getattr(self, "_client", None) is None:
            if not _MLFLOW_AVAILABLE:
                raise ModuleNotFoundError(str(_MLFLOW_AVAILABLE))
            from mlflow.tracking import MlflowClient

            from lightning_dualtrack.sinks.mlflow.store import open_store

            open_store(self.tracking_uri)  # an embedded store is created and migrated by one process at a time
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        return self._client

    @property
    def client_api(self) -> ClientApi:
        """``MlflowClient`` calls, counted and classified like the hot-path ones."""
        if getattr(self, "_client_api", None) is None:
            self._client_api = self.api if isinstance(self.api, ClientApi) else ClientApi(self.client)
            self._client_api.response_times = self.response_times
        return self._client_api

    @property
    def requests(self) -> int:  # type: ignore[override]
        apis = {id(a): a for a in (self.api, getattr(self, "_client_api", None)) if a is not None}
        return sum(a.requests for a in apis.values())

    # -- run lifecycle -------------------------------------------------------------------------
    def open(self, state: dict[str, Any]) -> dict[str, Any]:
        s = self.ctx.settings
        existing = None
        if not state.get("run_id") and _MLFLOW_RUN_ID.fullmatch(self.ctx.run_id):
            # run_id=<an MLflow run id> (MLFlowLogger's meaning): continue that run, in its own experiment
            existing = self.api.run_experiment_id(self.ctx.run_id)
        self.experiment_id = state.get("experiment_id") or existing or self.api.experiment_id(s["experiment_name"])
        self._set_experiment_tags()
        # A create whose answer was lost must not make a second run: look for ours first.
        run_id = state.get("run_id") or (self.ctx.run_id if existing else None) or self.api.find_run(self.experiment_id, self.ctx.run_id)
        if run_id is None:
            tags = {"dualtrack.run_id": self.ctx.run_id, "dualtrack.run_dir": str(self.ctx.run_dir.resolve())}
            for key, value in (s.get("tags") or {}).items():
                tags[self.keys.add(str(key))[0]] = str(value)[:MLFLOW_MAX_TAG_VALUE]
            if s.get("run_name"):
                tags["mlflow.runName"] = s["run_name"]
            related = self._related_tags()
            tags.update({k: v for k, v in related.items() if v})
            run_id = self.api.create_run(self.experiment_id, s.get("created_ms"), tags, s.get("run_name"))
            self._related.update(related)
        else:
            self.api.set_status(run_id, "RUNNING")
        self.run_id = run_id
        return {
            "run_id": run_id,
            "experiment_id": self.experiment_id,
            "tracking_uri": strip_url_credentials(self.tracking_uri),
            "url": run_url(self.tracking_uri, self.experiment_id, run_id),
        }

    def _related_tags(self) -> dict[str, str]:
        """The MLflow ids of the runs ``run.json`` relates this one to (its parent, the run it forked from), read from
        their own delivery state; "" for one in another tracking store. One MLflow has not created yet is missing."""
        out: dict[str, str] = {}
        for relation, tag in _RELATED:
            run_dir = (self.ctx.settings.get(relation) or {}).get("run_dir")
            if not run_dir:
                continue
            ident = (read_json(Path(run_dir) / STATE_DIR / f"{self.name}.json") or {}).get("identity") or {}
            if ident.get("run_id"):
                same_store = ident.get("tracking_uri") in (None, strip_url_credentials(self.tracking_uri))
                out[tag] = str(ident["run_id"]) if same_store else ""
        return out

    def _link_related(self) -> None:
        """Set the related runs' tags that could not be set when this run was created (a parent whose MLflow run
        the service had not opened yet; a run continued from before): looked for every 2 s until found."""
        if len(self._related) >= self._related_wanted or time.monotonic() < self._related_due:
            return
        self._related_due = time.monotonic() + _RELATED_EVERY_S
        found = {k: v for k, v in self._related_tags().items() if k not in self._related}
        tags = [(k, v) for k, v in found.items() if v]
        if tags:
            self.api.log_batch(self.run_id, tags=tags)
        self._related.update(found)

    def link(self, other: str, identity: dict[str, Any]) -> None:
        tags = [(f"{other}.{k}", str(v)) for k, v in sorted(identity.items()) if v is not None]
        if tags:
            self.api.log_batch(self.run_id, tags=tags)

    def close(self, status: str | None) -> None:
        self._upload_key_map()
        self._related_due = 0.0
        self._link_related()
        import time

        self.api.set_status(self.run_id, _STATUS.get(status, "FAILED"), end_time=int(time.time() * 1000))

    def report_health(self, health: dict[str, float], step: int | None) -> None:
        import time

        ts = int(time.time() * 1000)
        # ``system/``: MLflow's System metrics tab, away from the model's charts
        metrics = [(f"{HEALTH_PREFIX}{k}", float(v), ts, step or 0) for k, v in sorted(health.items())]
        self.api.log_batch(self.run_id, metrics=metrics)

    def _set_experiment_tags(self) -> None:
        for key, value in sorted((self.section.get("experiment_tags") or {}).items()):
            self.api.set_experiment_tag(self.experiment_id, key, value)

    def describe(self, summary: RunSummary, others: list[dict[str, Any]]) -> None:
        """``mlflow.note.content``: the run page's description (never over one the user set)."""
        from lightning_dualtrack.sinks.mlflow.conventions import NOTE_TAG, description

        if summary.user_description or self.run_id is None:
            return
        text = description(summary, run_name=self.ctx.settings.get("run_name"), run_dir=str(self.ctx.run_dir.resolve()),
                           others=others)
        self.api.log_batch(self.run_id, tags=[(NOTE_TAG, text)])

    def report_system(self, samples: list[tuple[int, int, dict[str, float]]]) -> None:
        """The training process's system figures, under MLflow's own monitor's names (``system/...``)."""
        from lightning_dualtrack.sinks.mlflow.system import system_metrics

        metrics = system_metrics(samples)
        for start in range(0, len(metrics), MAX_METRICS):
            self.api.log_batch(self.run_id, metrics=metrics[start : start + MAX_METRICS])

    # -- delivery ------------------------------------------------------------------------------
    def deliver(self, entries: list[Entry]) -> None:
        # Requests hold whole records where they fit (one record with more than 1000 values spans several),
        # and after each request that succeeds, ``stored(n)`` acknowledges the first n records: a stop at any
        # moment loses no progress, and a retry after a failure resends only the request that failed.
        self.progress = 0
        self._link_related()
        metrics: list = []
        params: list = []
        tags: list = []
        new_params: dict[str, str] = {}
        pending = [0]  # body-size estimate of what is accumulated

        def flush(upto: int) -> None:
            if metrics or params or tags:
                for m, p, t in chunk_batch(metrics, params, tags):
                    self._send(m, p, t)
                self._params_logged.update(new_params)
            metrics.clear()
            params.clear()
            tags.clear()
            new_params.clear()
            pending[0] = 0
            self.stored(upto)

        keys = self.keys.forward
        for i, entry in enumerate(entries):
            rec = entry.record
            kind = rec.get("k")
            if kind in ("metrics", "params", "tags"):
                values = rec["v"]
                if not isinstance(values, dict):
                    raise PermanentError(f"a '{kind}' record's values are a {type(values).__name__}, not a mapping")
                n_m, n_p, n_t = len(metrics), len(params), len(tags)
                grow = len(values)
                if (metrics or params or tags) and (
                    (kind == "metrics" and n_m + grow > MAX_METRICS)
                    or (kind == "params" and n_p + grow > MAX_PARAMS)
                    or (kind == "tags" and n_t + grow > MAX_TAGS)
                    or n_m + n_p + n_t + grow > MAX_ENTITIES
                    or pending[0] > MAX_BODY_BYTES // 2
                ):
                    flush(i)
            if kind == "metrics":
                ts, step = rec["t"], rec.get("s") or 0
                for key, value in rec["v"].items():
                    metrics.append((keys.get(key, key), float(value), ts, step))
                    pending[0] += len(key) + 64
            elif kind == "keymap":
                if rec.get("sink", self.name) != self.name:
                    continue
                for key, stored in rec["v"].items():
                    self.keys.restore(key, stored)
            elif kind == "params":
                for key, value in rec["v"].items():
                    stored = keys.get(key, key)
                    text = (rec.get("short_text") or rec.get("mlflow") or {}).get(key) or param_text(value)
                    if self._params_logged.get(stored) == text or new_params.get(stored) == text:
                        continue
                    new_params[stored] = text
                    params.append((stored, text))
                    pending[0] += len(stored) + len(text) + 64
            elif kind == "tags":
                for key, value in {**rec["v"], **standard_tags(rec["v"])}.items():
                    text = str(value)[:MLFLOW_MAX_TAG_VALUE]
                    tags.append((keys.get(key, key), text))
                    pending[0] += len(key) + len(text) + 64
            # ``hist`` (watch's histograms): W&B only; MLflow keeps watch's statistics, which are metrics
            elif kind in ("file", "image", "table", "cm", "model", "register", "delete"):
                flush(i)
                getattr(self, f"_deliver_{kind}")(rec)
                self.stored(i + 1)
        flush(len(entries))

    def _send(self, metrics: list, params: list, tags: list) -> None:
        """One ``log_batch``; a request a proxy or the server finds too large (413) is split in halves."""
        try:
            self.api.log_batch(self.run_id, metrics=metrics, params=params, tags=tags)
        except TooLargeError:
            items = [(0, m) for m in metrics] + [(1, p) for p in params] + [(2, t) for t in tags]
            if len(items) <= 1:
                raise  # one entity too large for something in between: retried later, never final
            half = len(items) // 2
            for part in (items[:half], items[half:]):
                self._send(*([x for k, x in part if k == kind] for kind in (0, 1, 2)))
            return
        self.bytes_uploaded += sum(len(x[0]) + len(str(x[1])) for x in (*metrics, *params, *tags))

    def _upload(self, rel_path: str, artifact_dir: str | None = None) -> None:
        path = self.ctx.artifact_file(rel_path)
        if not path.exists():
            raise PermanentError(f"payload file {path} is missing (deleted after it was logged?)")
        if artifact_dir is None:
            # a directory keeps its own name, as in the run directory and in W&B (``log_artifact(dir)``)
            parent = Path(rel_path) if path.is_dir() else Path(rel_path).parent
            artifact_dir = str(parent.relative_to("artifacts")) if parent.parts[:1] == ("artifacts",) else str(parent)
            artifact_dir = None if artifact_dir in ("", ".") else artifact_dir
        files = [(path, artifact_dir)]
        if path.is_dir():
            files = [
                (f, "/".join(p for p in (artifact_dir, *f.parent.relative_to(path).parts) if p) or None)
                for f in sorted(path.rglob("*"))
                if f.is_file()
            ]
        for file, dest in files:
            if not self._upload_rest(file, dest):
                self.client_api.call(self.client.log_artifact, self.run_id, str(file), dest)
            self.bytes_uploaded += file.stat().st_size

    def _upload_rest(self, file: Path, artifact_dir: str | None) -> bool:
        """Upload without importing mlflow when the server proxies artifacts (the common server setup)."""
        if not isinstance(self.api, RestApi):
            return False
        if getattr(self, "_artifact_uri", None) is None:
            self._artifact_uri = self.api.artifact_uri(self.run_id)
        return self.api.upload_artifact(self._artifact_uri, str(file), artifact_dir)

    def _deliver_file(self, rec: dict[str, Any]) -> None:
        self._upload(rec["path"])

    def _deliver_image(self, rec: dict[str, Any]) -> None:
        self._upload(rec["path"])

    def _deliver_table(self, rec: dict[str, Any]) -> None:
        self._upload(rec["path"])
        for media in rec.get("media", []):
            self._upload(media)

    def _deliver_cm(self, rec: dict[str, Any]) -> None:
        from lightning_dualtrack.sinks.media import render_confusion_matrix_pngs

        for rel in render_confusion_matrix_pngs(self.ctx.run_dir, rec):
            self._upload(rel)
        self._upload(rec["path"])
        if rec.get("csv"):
            self._upload(rec["csv"])

    def _deliver_model(self, rec: dict[str, Any]) -> None:
        if not rec.get("checkpoint") and (self.ctx.artifact_file(rec["path"]) / "MLmodel").is_file():
            from lightning_dualtrack.sinks.mlflow.models import deliver_logged_model

            deliver_logged_model(self, rec)  # an MLflow 3 LoggedModel of the run (and its registry version)
            return
        self._upload(rec["path"], rec["ap"])
        if rec.get("registered_model_name"):
            self._deliver_register(
                {
                    "name": rec["registered_model_name"],
                    "ap": rec["ap"],
                    "description": rec.get("description"),
                    "aliases": rec.get("registry_aliases") or [],
                }
            )

    def _deliver_delete(self, rec: dict[str, Any]) -> None:
        from lightning_dualtrack.sinks.mlflow.deletion import delete_checkpoint

        delete_checkpoint(self, rec)  # a checkpoint its callback removed; never one a registered version points to

    def _deliver_register(self, rec: dict[str, Any]) -> None:
        name = rec["name"]
        client = self.client
        try:
            self.client_api.call(client.create_registered_model, name)
        except AlreadyExists:
            pass  # a second run (or a replay) registering the same name: idempotent on every store
        uri = rec.get("model_uri")
        if uri and uri.startswith("runs:/last/"):  # this run's latest: the artifact path inside this run
            uri, rec = None, {**rec, "ap": uri[len("runs:/last/"):].strip("/")}
        if uri:
            source = uri
        else:
            run = self.client_api.call(client.get_run, self.run_id)
            source = f"{run.info.artifact_uri.rstrip('/')}/{rec['ap']}"
        # Idempotent on replay: reuse this run's version with the same source.
        versions = self.client_api.call(client.search_model_versions, f"name='{name}' and run_id='{self.run_id}'")
        version = next((v for v in versions if v.source == source), None)
        if version is None:
            try:
                from lightning_dualtrack.sinks.mlflow.models import store_global_uri

                with store_global_uri(self.tracking_uri):  # a models:/ source is resolved through the global URI
                    version = self.client_api.call(client.create_model_version, name, source, run_id=self.run_id,
                                                   description=rec.get("description"))
            except AlreadyExists:  # created by a request whose answer was lost
                versions = self.client_api.call(client.search_model_versions, f"name='{name}' and run_id='{self.run_id}'")
                version = next(v for v in versions if v.source == source)
        for alias in rec.get("aliases") or []:
            self.client_api.call(client.set_registered_model_alias, name, alias, version.version)

    def _upload_key_map(self) -> None:
        changed = self.keys.changed()
        if not changed:
            return
        target = self.ctx.run_dir / "artifacts" / "dualtrack" / "key_map.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps({"mlflow": changed}, indent=1, sort_keys=True, ensure_ascii=False))
        self._upload(str(target.relative_to(self.ctx.run_dir)))
