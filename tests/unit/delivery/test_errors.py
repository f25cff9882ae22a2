"""The error taxonomy: one verdict per failure, the same for REST answers and MlflowClient exceptions."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from mlflow.exceptions import MlflowException, RestException

from lightning_dualtrack.core.errors import (
    AlreadyExists,
    BlockedError,
    ConversionError,
    PermanentError,
    RetryAfter,
    TooLargeError,
    TransientError,
    classify,
    reason_may_have_passed,
)
from lightning_dualtrack.sinks.mlflow.errors import classify_http, classify_mlflow
from lightning_dualtrack.sinks.mlflow.rest import RestApi

MLFLOW_400 = json.dumps({"error_code": "INVALID_PARAMETER_VALUE", "message": "Invalid metric name: '../x'"})
MLFLOW_DELETED = json.dumps({"error_code": "INVALID_PARAMETER_VALUE",
                             "message": "The run abc must be in the 'active' state. Current state is deleted."})


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (404, "<html><body>Not Found</body></html>", TransientError),  # a proxy being redeployed
        (404, "", TransientError),
        (413, "<html>Request Entity Too Large</html>", TooLargeError),
        (413, json.dumps({"error_code": "INVALID_PARAMETER_VALUE", "message": "too big"}), TooLargeError),
        (400, "<html>Bad Request</html>", TransientError),  # not MLflow's word on the record
        (400, MLFLOW_400, PermanentError),
        (400, MLFLOW_DELETED, BlockedError),
        (404, json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Run 'abc' not found"}), BlockedError),
        (403, json.dumps({"error_code": "PERMISSION_DENIED", "message": "no"}), BlockedError),
        (401, "Unauthorized", BlockedError),
        (500, "oops", TransientError),
        (502, "", TransientError),
        (429, "", TransientError),
        (409, json.dumps({"error_code": "RESOURCE_ALREADY_EXISTS", "message": "exists"}), AlreadyExists),
    ],
)
def test_http_answers_are_classified(status: int, body: str, expected: type) -> None:
    err = classify_http(status, body.encode(), {}, "runs/log-batch")
    assert type(err) is expected, (status, body, err)
    assert f"HTTP {status}" in str(err)


def test_retry_after_is_kept() -> None:
    err = classify_http(503, b"", {"Retry-After": "7"}, "runs/log-batch")
    assert isinstance(err, RetryAfter) and err.retry_after == 7.0


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        ("RESOURCE_ALREADY_EXISTS", "Registered Model (name=clip) already exists.", AlreadyExists),
        ("INVALID_PARAMETER_VALUE", "Invalid value for metric 'x'", PermanentError),
        ("INVALID_PARAMETER_VALUE", "The run abc must be in the 'active' state. Current state is deleted.", BlockedError),
        ("RESOURCE_DOES_NOT_EXIST", "Run with id=abc not found", BlockedError),
        ("INTERNAL_ERROR", "database is locked", TransientError),
        ("TEMPORARILY_UNAVAILABLE", "busy", TransientError),
        ("BAD_REQUEST", "API request to endpoint /api/2.0/mlflow/runs/log-batch failed with error code 404 != 200. "
         "Response body: '<html>'", TransientError),
        ("INTERNAL_ERROR", "API request to endpoint x failed with error code 413 != 200. Response body: ''", TooLargeError),
    ],
)
def test_mlflow_exceptions_are_classified_by_error_code(code: str, message: str, expected: type) -> None:
    """sqlite/file stores raise MlflowException (not RestException): the same codes, the same verdicts."""
    from mlflow.protos import databricks_pb2

    raised = MlflowException(message, error_code=getattr(databricks_pb2, code))  # as the SQL store raises it
    assert raised.error_code == code
    err = classify_mlflow(raised)
    assert type(err) is expected, (code, message, err)


def test_rest_exception_is_classified_like_the_rest_path() -> None:
    err = classify_mlflow(RestException({"error_code": "RESOURCE_ALREADY_EXISTS", "message": "exists"}))
    assert isinstance(err, AlreadyExists)


def test_conversion_errors_are_rejections_and_other_errors_transient() -> None:
    assert isinstance(classify(KeyError("v")), ConversionError)
    assert isinstance(classify(TypeError("Data row contained incompatible types")), ConversionError)
    assert type(classify(ConnectionResetError("reset"))) is TransientError
    assert type(classify(OSError("disk"))) is TransientError


def test_sync_retries_by_default_only_what_may_have_passed() -> None:
    assert not reason_may_have_passed("rejected", "INVALID_PARAMETER_VALUE")
    assert not reason_may_have_passed("conversion")
    assert reason_may_have_passed("blocked")
    assert reason_may_have_passed("legacy")


class _Canned(BaseHTTPRequestHandler):
    status = 200
    body = b"<html>Welcome to the hotel wifi</html>"

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(self.status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(("status", "body", "expected"), [
    (200, b"<html>Welcome to the hotel wifi</html>", TransientError),  # a captive portal
    (200, b"\x00\xffgarbage", TransientError),
    (404, b"<html>404</html>", TransientError),
    (413, b"too large", TooLargeError),
])
def test_rest_client_never_takes_a_proxy_answer_as_final(status: int, body: bytes, expected: type) -> None:
    handler = type("H", (_Canned,), {"status": status, "body": body})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        api = RestApi(f"http://127.0.0.1:{server.server_address[1]}", timeout=5)
        with pytest.raises(expected) as info:
            api.log_batch("run", metrics=[("m", 1.0, 0, 0)])
        assert type(info.value) is expected
    finally:
        server.shutdown()
        server.server_close()
