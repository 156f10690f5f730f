"""What can go wrong talking to Triton, the same for every client (HTTP, gRPC, blocking).

- :class:`Unavailable`: Triton could not be reached, or the connection broke before the whole answer.
- :class:`DeadlineExceeded`: no complete answer within the deadline.
- :class:`BadResponse`: an answer this package does not understand (HTTP framing or KServe v2
  body); :class:`MissingOutput` is the case of a requested output absent from a good answer.
- :class:`Refused`: Triton answered with an error: its status and its own message. What the
  refusal means is decided by :func:`classify`, the one place that reads Triton's status codes
  and messages: ``not_found`` (unknown model or version), ``unavailable`` (known but not ready),
  or ``failed`` (anything else: a bad tensor, an error in the model).

A gRPC status is turned into these by :func:`from_grpc_status` with the standard gRPC <-> HTTP
code mapping, so :func:`classify` sees one kind of status. Triton's messages stay in the errors
for logs; callers decide what, if anything, a client of theirs sees.

Standard library only.
"""

from __future__ import annotations

from typing import Literal

Refusal = Literal["not_found", "unavailable", "failed"]
"""What a refusal means to a caller: retry later on another version (``not_found``), retry later
(``unavailable``), or give up (``failed``)."""

MAX_MESSAGE = 500
"""Characters of Triton's message kept (an error can echo a whole tensor)."""

_GRPC_TO_HTTP: dict[str, int] = {
    "OK": 200,
    "CANCELLED": 499,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
"""gRPC status code -> HTTP status (as grpc-gateway and Triton's own HTTP front end map them);
anything else is 500."""


class TritonError(Exception):
    """Base of every error of this package."""


class Unavailable(TritonError):
    """Triton could not be reached, refused the connection, or the connection broke mid-answer."""


class DeadlineExceeded(TritonError):
    """No complete answer within the deadline (waiting for a connection included)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"no answer within {timeout_s:.3g} s")
        self.timeout_s = timeout_s


class BadResponse(TritonError):
    """An answer that is not HTTP/1.x as this package reads it, or not a KServe v2 infer response."""


class MissingOutput(BadResponse):
    """A well-formed infer response without one of the requested outputs (a model exported wrong)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the response has no output {name!r}")
        self.name = name


class Refused(TritonError):
    """Triton answered with an error status.

    Attributes:
        status: the HTTP status (a gRPC status is mapped to its HTTP equivalent).
        message: Triton's own message (at most :data:`MAX_MESSAGE` characters).
        code: the status as Triton sent it (``HTTP 400``, ``gRPC INVALID_ARGUMENT``).
        kind: what the refusal means (:func:`classify`).
    """

    def __init__(self, status: int, message: str, code: str = "") -> None:
        self.status = status
        self.message = message[:MAX_MESSAGE]
        self.code = code or f"HTTP {status}"
        self.kind: Refusal = classify(status, self.message)
        super().__init__(f"{self.code} {self.message}")


def classify(status: int, message: str) -> Refusal:
    """What a refusal with this (HTTP) status and Triton message means.

    Triton answers an unknown model or version with 404 (400 before 2.37), a model that is
    known but not ready with 400 or 503, and says which in its message: the status alone cannot
    tell "not ready" from "your tensor is wrong" (both 400), nor "not ready" from a busy server
    (both 503), so both are read.
    """
    if status == 404:
        return "not_found"
    if status in (400, 503):
        lowered = message.lower()
        if "unknown model" in lowered or "not found" in lowered:
            return "not_found"
        if "not ready" in lowered or "unavailable" in lowered:
            return "unavailable"
    return "failed"


def from_grpc_status(code: str | None, message: str, timeout_s: float) -> TritonError:
    """The error of a failed gRPC call, by its status code (``"NOT_FOUND"`` or ``"StatusCode.NOT_FOUND"``).

    ``UNAVAILABLE`` is what gRPC reports when the channel cannot reach the server (and what
    Triton sends for a model that is not ready): :class:`Unavailable`. ``DEADLINE_EXCEEDED``
    (or the client library's "Deadline Exceeded" without a code) is :class:`DeadlineExceeded`.
    Any other code is a :class:`Refused` with the code's HTTP status.

    Args:
        code: the call's status code name.
        message: the status details (Triton's message).
        timeout_s: the deadline the call had.
    """
    name = (code or "").removeprefix("StatusCode.")
    if name == "UNAVAILABLE":
        return Unavailable(message[:MAX_MESSAGE])
    if name == "DEADLINE_EXCEEDED" or (not name and "Deadline Exceeded" in message):
        return DeadlineExceeded(timeout_s)
    return Refused(_GRPC_TO_HTTP.get(name, 500), message, f"gRPC {name or 'UNKNOWN'}")
