"""What MLflow's answers mean for delivery (see :mod:`lightning_dualtrack.core.errors` for the kinds).

Only MLflow itself can reject: an HTTP error whose body is not MLflow's own JSON error (``error_code``) came
from something in between and is never final. The MlflowClient path (sqlite, file, databricks) raises
``MlflowException`` with the same error codes as the REST API; :func:`classify_mlflow` maps both.
"""

from __future__ import annotations

import json
import re
from typing import Any

from lightning_dualtrack.core.errors import (
    AlreadyExists,
    BlockedError,
    DeliveryError,
    PermanentError,
    RetryAfter,
    TooLargeError,
    TransientError,
)

# MLflow error codes (``mlflow.protos.databricks_pb2``), by what they mean for delivery.
REJECTED_CODES = frozenset({"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "MALFORMED_REQUEST", "INVALID_STATE"})
BLOCKED_CODES = frozenset({"PERMISSION_DENIED", "UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED", "RESOURCE_DOES_NOT_EXIST"})
EXISTS_CODES = frozenset({"RESOURCE_ALREADY_EXISTS"})
# A run/experiment that is deleted answers INVALID_PARAMETER_VALUE with this text: blocked, not rejected.
_INACTIVE_MARKERS = ("must be in the 'active' state", "is deleted", "lifecycle_stage")
CREDENTIALS_ACTION = ("check the MLflow credentials (MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN), "
                      "then run `dualtrack sync`")


def from_code(code: str | None, message: str, *, status: int | None = None) -> DeliveryError:
    """The error for an MLflow error code (REST or MlflowClient alike)."""
    code = code or ""
    text = f"{code}: {message}" if code and not message.startswith(code) else message
    if code in EXISTS_CODES:
        return AlreadyExists(text, code=code)
    lowered = message.lower()
    if code in REJECTED_CODES and any(m in lowered for m in _INACTIVE_MARKERS):
        return BlockedError(text, action="restore the MLflow run / experiment (or delete the run directory's "
                            "state/mlflow.json to deliver into a new run), then run `dualtrack sync`", code=code)
    if code in REJECTED_CODES:
        return PermanentError(text, code=code)
    if code in ("PERMISSION_DENIED", "UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED") or status in (401, 403):
        return BlockedError(text, action=CREDENTIALS_ACTION, code=code or None)
    if code == "RESOURCE_DOES_NOT_EXIST":
        return BlockedError(text, action="the MLflow run or experiment is gone: restore it, then run `dualtrack sync`",
                            code=code)
    return TransientError(text, code=code or None)


def classify_http(status: int, body: bytes | str, headers: Any, what: str) -> DeliveryError:
    """The error for a non-200 HTTP answer. ``what``: the endpoint, for the message."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    try:
        payload = json.loads(text) if text else {}
    except ValueError:
        payload = None
    mlflow_error = isinstance(payload, dict) and isinstance(payload.get("error_code"), str)
    code = payload["error_code"] if mlflow_error else None
    message = f"{what}: HTTP {status} {code or ''} {str(payload.get('message', '')) if mlflow_error else text[:200]}"
    message = " ".join(message.split())[:500]
    if status == 413:
        return TooLargeError(message, code=code)
    retry_after = _retry_after(headers)
    if status in (429, 503) and retry_after is not None:
        return RetryAfter(message, retry_after, code=code)
    if status == 429 or status >= 500 or status == 408:
        return TransientError(message, code=code)
    if not mlflow_error:
        if status in (401, 403):
            return BlockedError(message, action=CREDENTIALS_ACTION)
        # a 404 from a proxy being redeployed, an HTML error page: not the server's word on the record
        return TransientError(message + " (not an MLflow answer: retrying)")
    return from_code(code, message, status=status)


def _retry_after(headers: Any) -> float | None:
    try:
        value = headers.get("Retry-After") if headers is not None else None
        return float(value) if value else None
    except (TypeError, ValueError):
        return None


def classify_mlflow(err: BaseException) -> DeliveryError | None:
    """An exception from ``MlflowClient`` (any store) by MLflow's error code; None if it is not MLflow's."""
    if isinstance(err, DeliveryError):
        return err
    if not _is_mlflow_exception(err):
        return None
    code = getattr(err, "error_code", None)
    message = str(getattr(err, "message", err))[:500]
    # MLflow's REST client wraps an answer that is not its JSON (a proxy's page) with a code made up from
    # the HTTP status: that is not the server's verdict on the record.
    wrapped = re.search(r"failed with error code (\d{3}) != 200", message)
    if wrapped:
        status = int(wrapped.group(1))
        if status == 413:
            return TooLargeError(message, code=code)
        if status in (401, 403):
            return BlockedError(message, action=CREDENTIALS_ACTION, code=code)
        return TransientError(message + " (not an MLflow answer: retrying)", code=code)
    return from_code(code, message)


def _is_mlflow_exception(err: BaseException) -> bool:
    import sys

    if "mlflow" not in sys.modules:  # nothing of MLflow was imported, so nothing of it raised this
        return False
    from mlflow.exceptions import MlflowException

    return isinstance(err, MlflowException)
