"""One error base with its HTTP status and a stable code, and one JSON error shape.

Every error the gateway returns is ``{"error": {"code": ..., "message": ..., "field": ...}}``, and
:func:`error_body` is the only place that builds it: :meth:`GatewayError.body`, the internal-error
answer (:func:`internal_error_body`), the answers to unknown routes and methods
(:func:`http_error_body`) and to invalid path parameters all go through it. Messages say what to
do next; they never echo the client's payload or internal class names.
"""

from __future__ import annotations

from typing import Any

INTERNAL_ERROR_MESSAGE = "internal error; it was logged"
"""The message of every 500: what failed is in the gateway's log, never in the answer."""

_HTTP_ERRORS: dict[int, tuple[str, str]] = {
    404: ("not_found", "no such route; see /docs"),
    405: ("method_not_allowed", "method not allowed on this route"),
}


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    """The JSON error document; the one place it is built.

    Args:
        code: the stable machine-readable code, e.g. ``invalid_input``.
        message: what went wrong and what to do; never the client's input.
        field: the offending field (``wind_direction``, ``[3].wind_direction``, ``body``...), if any.
    """
    return {"error": {"code": code, "message": message, "field": field}}


def internal_error_body() -> dict[str, Any]:
    """The body of a 500 (an exception that is not a :class:`GatewayError`)."""
    return error_body("internal_error", INTERNAL_ERROR_MESSAGE)


def http_error_body(status: int) -> dict[str, Any]:
    """The body of an HTTP error raised by the framework itself (unknown route 404, wrong method 405, ...)."""
    code, message = _HTTP_ERRORS.get(status, ("http_error", "request not accepted"))
    return error_body(code, message)


class GatewayError(Exception):
    """Base of every error the gateway answers with; subclasses set ``status_code`` and ``code``."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, field: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = dict(headers) if headers else {}  # its own: handlers add x-request-id to it

    def body(self) -> dict[str, Any]:
        """The JSON error document."""
        return error_body(self.code, self.message, self.field)


class MalformedRequest(GatewayError):
    """400: the body is not valid JSON."""

    status_code = 400
    code = "malformed_json"


class Unauthorized(GatewayError):
    """401: missing or wrong API key."""

    status_code = 401
    code = "unauthorized"


class Forbidden(GatewayError):
    """403: the key is valid but not for this route, or the admin API is switched off."""

    status_code = 403
    code = "forbidden"


class ModelNotFound(GatewayError):
    """404: no model of that name is served."""

    status_code = 404
    code = "model_not_found"


class UnknownRequestId(GatewayError):
    """404: feedback names a request id the gateway never answered or has forgotten (retention)."""

    status_code = 404
    code = "unknown_request_id"


class DuplicateFeedback(GatewayError):
    """409: the outcome of this request id was already reported."""

    status_code = 409
    code = "duplicate_feedback"


class PayloadTooLarge(GatewayError):
    """413: body or record count over the configured limit."""

    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(GatewayError):
    """415: the request is not ``application/json``."""

    status_code = 415
    code = "unsupported_media_type"


class InvalidInput(GatewayError):
    """422: a record does not satisfy the feature schema; ``field`` names the offending field."""

    status_code = 422
    code = "invalid_input"


class Overloaded(GatewayError):
    """503: too many requests in flight; retry after the Retry-After delay."""

    status_code = 503
    code = "overloaded"


class ShuttingDown(GatewayError):
    """503: the gateway is draining before it stops; retry (another replica will answer)."""

    status_code = 503
    code = "shutting_down"


class ModelNotReady(GatewayError):
    """503: Triton or the model version is not ready; retry after the Retry-After delay."""

    status_code = 503
    code = "model_not_ready"


class UpstreamError(GatewayError):
    """502: Triton answered with an error."""

    status_code = 502
    code = "upstream_error"


class NonFinitePrediction(GatewayError):
    """502: the model's output was NaN or infinite; nothing was answered or stored. Report the request_id.

    A fault of the served version (an FP16 overflow, say), or of values far outside the trained
    ranges that the contract accepts and flags: counted in
    ``modelops_gateway_non_finite_predictions_total`` and never answered as ``null`` in a 200.
    """

    status_code = 502
    code = "non_finite_prediction"


class UpstreamTimeout(GatewayError):
    """504: Triton did not answer within the configured deadline."""

    status_code = 504
    code = "upstream_timeout"


class RequestTimeout(GatewayError):
    """408: the body did not arrive within ``body_read_timeout_s``; send it at once (the connection is closed)."""

    status_code = 408
    code = "request_timeout"


class ClientDisconnected(GatewayError):
    """499 (never sent): the client went away mid-request; counted and audited so, not as a 500."""

    status_code = 499
    code = "client_disconnected"
