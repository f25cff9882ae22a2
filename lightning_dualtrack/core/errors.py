"""The error taxonomy: every delivery failure is one of four kinds.

=============  ==============================================  ==========================================
kind           examples                                        what delivery does
=============  ==============================================  ==========================================
transient      connection refused, timeout, 5xx, 429, an       retry with backoff (``Retry-After``
               answer that is not the backend's own (a proxy,  honoured); the records stay pending
               a captive portal), a non-JSON 200
too large      413 (from a proxy or the server)                split the request / batch and go on
rejected       the backend says *this record* is invalid and   set the record aside with the reason
               always will be; a record the sink cannot        (``state/<sink>.rejected.jsonl``), warn
               convert                                         once, deliver the next one; ``dualtrack
                                                               sync --retry-rejected`` tries it again
blocked        the run or experiment is deleted, credentials   keep everything pending, say once what
               refused: a person must act                      to do, retry slowly, go on with the rest
=============  ==============================================  ==========================================

What a backend's own exceptions mean is the sink's knowledge (``Sink.classify``, e.g.
:mod:`lightning_dualtrack.sinks.mlflow.sink.errors`); :func:`classify` here handles what is left over.
"""

from __future__ import annotations


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

    Records stay pending; delivery says once what to do and retries slowly. ``action``: what to do.
    """

    kind = "blocked"

    def __init__(self, message: str, action: str = "", code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.action = action


class PermanentError(DeliveryError):
    """The backend rejected this record (or these run settings) and always will: never retried as transient."""

    kind = "rejected"


class AlreadyExists(PermanentError):
    """The thing to create exists: for an idempotent create (registry, experiment) this is success."""

    kind = "exists"


class ConversionError(PermanentError):
    """The sink could not turn a record into the backend's form (a bug or bad data, not the network)."""

    kind = "conversion"


# Python errors a sink raises while *converting* a record (a record missing a field: KeyError; W&B's
# mixed-type table column: TypeError). Anything else unexpected is treated as transient.
CONVERSION_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, UnicodeError)


def classify(err: BaseException) -> DeliveryError:
    """An exception no sink classified: already one of ours, a conversion error, or transient."""
    if isinstance(err, DeliveryError):
        return err
    if isinstance(err, CONVERSION_ERRORS):
        return ConversionError(f"{type(err).__name__}: {str(err)[:500]}")
    return TransientError(f"{type(err).__name__}: {str(err)[:500]}")


def reason_may_have_passed(kind: str, code: str | None = None) -> bool:
    """Whether ``dualtrack sync`` retries a set-aside record without ``--retry-rejected``: a record the backend
    validated and refused, or that the sink could not convert, fails the same way again; anything else set aside
    (an older version's 404/413 verdicts) may pass."""
    return kind not in ("rejected", "conversion")
