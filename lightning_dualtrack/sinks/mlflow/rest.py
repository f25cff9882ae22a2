"""The few MLflow tracking calls the sink makes on its hot path, over REST or through ``MlflowClient``.

For ``http(s)://`` tracking URIs a small ``requests`` client talks to MLflow's REST API directly: it
starts in ~0.1 s instead of the ~2 s that ``import mlflow`` takes (which would delay the first
delivery), keeps one connection alive, makes exactly one attempt per call (delivery owns retries)
and honours ``Retry-After``. Every other URI (sqlite, file, databricks...) goes through ``MlflowClient``.
Metrics are ``(key, value, timestamp_ms, step)`` tuples; params and tags ``(key, value)``.
"""

from __future__ import annotations

import math
import os
from typing import Any

from lightning_dualtrack.core.errors import (
    AlreadyExists,
    BlockedError,
    DeliveryError,
    TransientError,
    classify,
)
from lightning_dualtrack.sinks.base import ResponseTimes
from lightning_dualtrack.sinks.mlflow.errors import classify_http, classify_mlflow

_STATUS_NAMES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")


def _json_float(value: float) -> Any:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


class RestApi:
    def __init__(self, tracking_uri: str, timeout: float | None = None, username: str | None = None,
                 password: str | None = None) -> None:
        import requests

        self.base = tracking_uri.rstrip("/")
        self.timeout = timeout or float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "10"))
        self.session = requests.Session()
        # credentials from the tracking URI (handed over in memory), else MLflow's own variables
        user = username or os.environ.get("MLFLOW_TRACKING_USERNAME")
        password = password if username else os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if user:
            self.session.auth = (user, password or "")
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
            self.session.verify = False
        self.requests = 0
        self.response_times = ResponseTimes()  # the sink shares its own

    def _call(self, method: str, endpoint: str, body: dict[str, Any] | None = None, params: dict | None = None) -> dict:
        import requests

        self.requests += 1
        url = f"{self.base}/api/2.0/mlflow/{endpoint}"
        started = self.response_times.start()
        try:
            resp = self.session.request(method, url, json=body, params=params, timeout=self.timeout)
        except requests.RequestException as err:
            raise TransientError(f"{endpoint}: {type(err).__name__}: {str(err)[:300]}") from err
        finally:
            self.response_times.stop(started)
        if resp.status_code == 200:
            if not resp.content:
                return {}
            try:
                payload = resp.json()
            except ValueError:  # a captive portal's page, a proxy's garbage: the request may not have arrived
                raise TransientError(f"{endpoint}: HTTP 200 with a body that is not JSON: {resp.text[:120]!r}") from None
            if not isinstance(payload, dict):
                raise TransientError(f"{endpoint}: HTTP 200 with an unexpected body: {resp.text[:120]!r}")
            return payload
        raise classify_http(resp.status_code, resp.content, resp.headers, endpoint)

    # -- the calls -------------------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        try:
            exp = self._call("GET", "experiments/get-by-name", params={"experiment_name": name})["experiment"]
            if exp.get("lifecycle_stage") == "deleted":
                raise _deleted_experiment(name)
            return exp["experiment_id"]
        except DeliveryError as err:
            if err.code != "RESOURCE_DOES_NOT_EXIST":
                raise
        try:
            return self._call("POST", "experiments/create", {"name": name})["experiment_id"]
        except AlreadyExists:  # created concurrently
            return self._call("GET", "experiments/get-by-name", params={"experiment_name": name})["experiment"]["experiment_id"]

    def find_run(self, experiment_id: str, dualtrack_run_id: str) -> str | None:
        found = self._call(
            "POST",
            "runs/search",
            {"experiment_ids": [experiment_id], "filter": f"tags.`dualtrack.run_id` = '{dualtrack_run_id}'", "max_results": 1},
        ).get("runs", [])
        return found[0]["info"]["run_id"] if found else None

    def run_experiment_id(self, run_id: str) -> str | None:
        """The experiment of an existing, not deleted run; None if there is no such run."""
        try:
            info = self._call("GET", "runs/get", params={"run_id": run_id})["run"]["info"]
        except Exception as err:  # noqa: BLE001 - only "does not exist" means no such run
            if "RESOURCE_DOES_NOT_EXIST" in str(err):
                return None
            raise
        return None if info.get("lifecycle_stage") == "deleted" else info["experiment_id"]

    def artifact_uri(self, run_id: str) -> str:
        return self._call("GET", "runs/get", params={"run_id": run_id})["run"]["info"]["artifact_uri"]

    def upload_artifact(self, artifact_uri: str, local_file: str, artifact_path: str | None) -> bool:
        """PUT one file to a server that proxies artifacts (``mlflow-artifacts:/``); False if it does not."""
        import requests

        if not artifact_uri.startswith("mlflow-artifacts:/"):
            return False
        from urllib.parse import quote

        rel = artifact_uri[len("mlflow-artifacts:") :].lstrip("/")
        name = os.path.basename(local_file)
        dest = "/".join(p for p in (rel, artifact_path, name) if p)
        url = f"{self.base}/api/2.0/mlflow-artifacts/artifacts/{quote(dest)}"
        self.requests += 1
        started = self.response_times.start()
        try:
            with open(local_file, "rb") as fh:
                resp = self.session.put(url, data=fh, timeout=max(self.timeout, 60))
        except requests.RequestException as err:
            raise TransientError(f"artifact upload: {type(err).__name__}: {str(err)[:300]}") from err
        finally:
            self.response_times.stop(started)
        if resp.status_code == 200:
            return True
        raise classify_http(resp.status_code, resp.content, resp.headers, f"artifact upload {dest}")

    def delete_artifact(self, artifact_uri: str, path: str) -> bool:
        """DELETE one artifact (file or directory) on a server that proxies artifacts; False if it does not. What is
        already gone is deleted (the server answers 200). A server without the route raises ``NotImplementedError``."""
        import requests

        if not artifact_uri.startswith("mlflow-artifacts:/"):
            return False
        from urllib.parse import quote

        dest = "/".join(p for p in (artifact_uri[len("mlflow-artifacts:") :].strip("/"), path.strip("/")) if p)
        self.requests += 1
        started = self.response_times.start()
        try:
            resp = self.session.delete(f"{self.base}/api/2.0/mlflow-artifacts/artifacts/{quote(dest)}", timeout=self.timeout)
        except requests.RequestException as err:
            raise TransientError(f"artifact delete: {type(err).__name__}: {str(err)[:300]}") from err
        finally:
            self.response_times.stop(started)
        if resp.status_code in (200, 404):
            return True
        if resp.status_code in (405, 501):  # a server (or a proxy in front of it) without the DELETE route
            raise NotImplementedError(f"artifact delete: HTTP {resp.status_code} (not implemented by the server)")
        raise classify_http(resp.status_code, resp.content, resp.headers, f"artifact delete {dest}")

    def create_run(self, experiment_id: str, start_time: int | None, tags: dict[str, str], run_name: str | None) -> str:
        body: dict[str, Any] = {"experiment_id": experiment_id, "tags": [{"key": k, "value": v} for k, v in tags.items()]}
        if start_time is not None:
            body["start_time"] = start_time
        if run_name:
            body["run_name"] = run_name
        return self._call("POST", "runs/create", body)["run"]["info"]["run_id"]

    def set_status(self, run_id: str, status: str, end_time: int | None = None) -> None:
        body: dict[str, Any] = {"run_id": run_id, "run_uuid": run_id, "status": status}
        if end_time is not None:
            body["end_time"] = end_time
        self._call("POST", "runs/update", body)

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        self._call("POST", "experiments/set-experiment-tag", {"experiment_id": experiment_id, "key": key, "value": value})

    def log_batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        body = {
            "run_id": run_id,
            "metrics": [{"key": k, "value": _json_float(v), "timestamp": t, "step": s} for k, v, t, s in metrics],
            "params": [{"key": k, "value": v} for k, v in params],
            "tags": [{"key": k, "value": v} for k, v in tags],
        }
        self._call("POST", "runs/log-batch", body)


def _deleted_experiment(name: str) -> BlockedError:
    return BlockedError(
        f"MLflow experiment {name!r} is deleted",
        action="restore it (`mlflow experiments restore --experiment-id ...`) or choose another experiment name, "
        "then run `dualtrack sync`",
    )


class ClientApi:
    """The same calls through ``MlflowClient`` (any tracking URI MLflow supports)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.requests = 0
        self.response_times = ResponseTimes()  # the sink shares its own

    def call(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``, counted and timed, with errors mapped by :func:`classify_mlflow`."""
        self.requests += 1
        started = self.response_times.start()
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            raise (classify_mlflow(err) or classify(err)) from err
        finally:
            self.response_times.stop(started)

    def experiment_id(self, name: str) -> str:
        exp = self.call(self.client.get_experiment_by_name, name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                raise _deleted_experiment(name)
            return exp.experiment_id
        try:
            return self.call(self.client.create_experiment, name)
        except AlreadyExists:
            return self.call(self.client.get_experiment_by_name, name).experiment_id

    def run_experiment_id(self, run_id: str) -> str | None:
        try:
            run = self.call(self.client.get_run, run_id)
        except Exception as err:  # noqa: BLE001 - only "does not exist" means no such run
            if "RESOURCE_DOES_NOT_EXIST" in str(err) or "not found" in str(err).lower():
                return None
            raise
        return None if run.info.lifecycle_stage == "deleted" else run.info.experiment_id

    def find_run(self, experiment_id: str, dualtrack_run_id: str) -> str | None:
        found = self.call(
            self.client.search_runs, [experiment_id], filter_string=f"tags.`dualtrack.run_id` = '{dualtrack_run_id}'", max_results=1
        )
        return found[0].info.run_id if found else None

    def create_run(self, experiment_id: str, start_time: int | None, tags: dict[str, str], run_name: str | None) -> str:
        return self.call(self.client.create_run, experiment_id, start_time=start_time, tags=tags, run_name=run_name).info.run_id

    def set_status(self, run_id: str, status: str, end_time: int | None = None) -> None:
        if status == "RUNNING":
            self.call(self.client.update_run, run_id, status="RUNNING")
        else:
            self.call(self.client.set_terminated, run_id, status=status, end_time=end_time)

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        self.call(self.client.set_experiment_tag, experiment_id, key, value)

    def log_batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        from mlflow.entities import Metric, Param, RunTag

        self.call(
            self.client.log_batch,
            run_id,
            metrics=[Metric(k, v, t, s) for k, v, t, s in metrics],
            params=[Param(k, v) for k, v in params],
            tags=[RunTag(k, v) for k, v in tags],
            synchronous=True,
        )
