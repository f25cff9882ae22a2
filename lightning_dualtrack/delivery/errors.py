"""The error taxonomy: every delivery failure is one of four kinds, decided here and nowhere else.

=============  ==============================================  ==========================================
kind           examples                                        what the shipper does
=============  ==============================================  ==========================================
transient      connection refused, timeout, 5xx, 429, a 404    retry with backoff (``Retry-After``
               or an answer that is not MLflow's JSON (a       honoured); the records stay pending
               proxy, a captive portal), a non-JSON 200
too large      413 (from a proxy or the server)                split the request / batch and go on
rejected       the backend says *this record* is invalid and   set the record aside with the reason
               always will be (``INVALID_PARAMETER_VALUE``;    (``state/<sink>.rejected.jsonl``), warn
               W&B ``TypeError`` on a mixed-type column; a     once, deliver the next one; ``dualtrack
               record the sink cannot convert)                 sync --retry-rejected`` tries it again
blocked        the run or experiment is deleted, credentials   keep everything pending, say once what
               refused (401/403): a person must act            to do, retry slowly, go on with the rest
=============  ==============================================  ==========================================

Only the backend itself can reject: an HTTP error whose body is not MLflow's own JSON error (``error_code``)
came from something in between and is never final. The MlflowClient path (sqlite, file, databricks)
raises ``MlflowException`` with the same error codes as the REST API; :func:`classify_mlflow` maps both.
"""

from __future__ import annotations

import re
from typing import Any

# MLflow error codes (``mlflow.protos.databricks_pb2``), by what they mean for delivery.
REJECTED_CODES = frozenset({"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "MALFORMED_REQUEST", "INVALID_STATE"})
BLOCKED_CODES = frozenset({"PERMISSION_DENIED", "UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED", "RESOURCE_DOES_NOT_EXIST"})
EXISTS_CODES = frozenset({"RESOURCE_ALREADY_EXISTS"})
# A run/experiment that is deleted answers INVALID_PARAMETER_VALUE with this text: blocked, not rejected.
_INACTIVE_MARKERS = ("must be in the 'active' state", "is deleted", "lifecycle_stage")


class DeliveryError(Exception):
    """A delivery failure of a known kind. ``code``: the backend's error code, when it gave one."""

    kind = "transient"

    def __init__(self, message: str, code: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


class TransientError(DeliveryError):
    """A reason that may pass (network, 5xx, 429, timeout, a proxy's answer): retry the request."""

    kind = "transient"


class RetryAfter(TransientError):
    """A transient error with the server's requested wait (seconds)."""

    def __init__(self, message: str, retry_after: float, code: str | None = None) -> None:
        super().__init__(message, code=code, retry_after=retry_after)


class TooLargeError(TransientError):
    """The request was too large (413): split it. A single record still too large is retried later."""

    kind = "too_large"


class BlockedError(TransientError):
    """The backend refuses everything for a reason a person must fix (deleted run, credentials).

    Records stay pending; the shipper says once what to do and retries slowly. ``action``: what to do.
    """

    kind = "blocked"

    def __init__(self, message: str, action: str = "", code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.action = action


class PermanentError(DeliveryError):
    """The backend rejected this record and always will: the shipper isolates it and sets it aside."""

    kind = "rejected"


RejectedError = PermanentError


class AlreadyExists(PermanentError):
    """``RESOURCE_ALREADY_EXISTS``: for an idempotent create (registry, experiment) this is success."""

    kind = "exists"


class ConversionError(PermanentError):
    """The sink could not turn a record into the backend's form (a bug or bad data, not the network)."""

    kind = "conversion"


# Python errors a sink raises while *converting* a record (a record missing a field: KeyError; W&B's
# mixed-type table column: TypeError). Anything else unexpected is treated as transient.
CONVERSION_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, UnicodeError)


def from_code(code: str | None, message: str, *, status: int | None = None) -> DeliveryError:
    """The error for a backend error code (REST or MlflowClient alike)."""
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
        return BlockedError(text, action="check the MLflow credentials (MLFLOW_TRACKING_USERNAME/PASSWORD or "
                            "MLFLOW_TRACKING_TOKEN), then run `dualtrack sync`", code=code or None)
    if code == "RESOURCE_DOES_NOT_EXIST":
        return BlockedError(text, action="the MLflow run or experiment is gone: restore it, then run `dualtrack sync`",
                            code=code)
    return TransientError(text, code=code or None)


def classify_http(status: int, body: bytes | str, headers: Any, what: str) -> DeliveryError:
    """The error for a non-200 HTTP answer. ``what``: the endpoint, for the message."""
    import json

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
            return BlockedError(message, action="check the MLflow credentials, then run `dualtrack sync`")
        # a 404 from a proxy being redeployed, an HTML error page: not the server's word on the record
        return TransientError(message + " (not an MLflow answer: retrying)")
    return from_code(code, message, status=status)


def _retry_after(headers: Any) -> float | None:
    try:
        value = headers.get("Retry-After") if headers is not None else None
        return float(value) if value else None
    except (TypeError, ValueError):
        return None


def classify_mlflow(err: BaseException) -> DeliveryError:
    """Map an exception from ``MlflowClient`` (any store) to its kind, by MLflow's error code."""
    if isinstance(err, DeliveryError):
        return err
    if not _is_mlflow_exception(err):
        return classify(err)
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
            return BlockedError(message, action="check the MLflow credentials, then run `dualtrack sync`", code=code)
        return TransientError(message + " (not an MLflow answer: retrying)", code=code)
    return from_code(code, message)


def _is_mlflow_exception(err: BaseException) -> bool:
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover - mlflow missing: nothing raised it
        return False
    return isinstance(err, MlflowException)


def classify(err: BaseException) -> DeliveryError:
    """Any exception raised while delivering a record: already classified, MLflow's, conversion, or transient."""
    if isinstance(err, DeliveryError):
        return err
    if _is_mlflow_exception(err):
        return classify_mlflow(err)
    if isinstance(err, CONVERSION_ERRORS):
        return ConversionError(f"{type(err).__name__}: {str(err)[:500]}")
    return TransientError(f"{type(err).__name__}: {str(err)[:500]}")


def reason_may_have_passed(kind: str, code: str | None = None) -> bool:
    """Whether ``dualtrack sync`` retries a set-aside record without ``--retry-rejected``.

    A record the backend validated and refused (``INVALID_PARAMETER_VALUE``) or that the sink could not
    convert fails the same way again; anything else set aside (an older version's 404/413 verdicts, an
    unknown code) may pass.
    """
    return kind not in ("rejected", "conversion") or (code is not None and code not in REJECTED_CODES)
