"""HTTP details of the JSON routes: content type, size limits, JSON parsing, request ids, API keys.

Everything here answers with a :class:`~gateway.errors.GatewayError` (one error shape) and
never echoes what the client sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import re
import time
from typing import Any

import orjson
from fastapi import Request
from pydantic import SecretStr

from gateway.errors import (
    ClientDisconnected,
    MalformedRequest,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def new_request_id() -> str:
    """A new request id: a UUIDv7 (RFC 9562) as 32 hex digits, milliseconds first, then 74 random bits.

    Time-ordered on purpose: the feedback store keys every answered prediction by its request id,
    and SQLite appends ordered keys at the right edge of its index where random ones (UUIDv4) land
    all over it: measured ~4 µs against ~29 µs of CPU per stored prediction with 600k stored.
    """
    rand = int.from_bytes(os.urandom(10), "big") >> 6  # 74 bits
    value = (
        (time.time_ns() // 1_000_000) << 80  # unix_ts_ms, 48 bits
        | 0x7 << 76  # version
        | (rand >> 62) << 64  # rand_a, 12 bits
        | 0b10 << 62  # variant
        | (rand & ((1 << 62) - 1))  # rand_b, 62 bits
    )
    return f"{value:032x}"


def request_id_of(request: Request) -> str:
    """The client's ``X-Request-ID`` when it is a safe token, else a new time-ordered id."""
    given = request.headers.get("x-request-id", "")
    return given if _REQUEST_ID.fullmatch(given) else new_request_id()


def valid_request_id(value: object) -> bool:
    """Whether ``value`` could be a request id the gateway answered with."""
    return isinstance(value, str) and bool(_REQUEST_ID.fullmatch(value))


class BodyDeadlines:
    """Cuts body reads that take longer than ``timeout_s`` (answered 408 ``request_timeout``).

    A client that declares a body and trickles it (or sends none) would otherwise hold its
    connection, its task and its buffer for ever. The request path only registers its task in a
    dict while it reads (no timer, no task per request); one sweeper task per app, started with
    the first read, cancels the reads that are past their deadline, every ``tick_s``. A read is
    therefore cut between ``timeout_s`` and ``timeout_s + tick_s`` after it began.
    """

    def __init__(self, timeout_s: float) -> None:
        """Args:
        timeout_s: the most seconds one request's body may take to arrive.
        """
        self.timeout_s = timeout_s
        self.tick_s = min(1.0, max(0.05, timeout_s / 10))
        self._reading: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def watch(self) -> asyncio.Task[Any] | None:
        """Register the current task as reading a body; returns it (None outside a task)."""
        task = asyncio.current_task()
        if task is None:
            return None
        self._reading[task] = time.monotonic() + self.timeout_s
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = task.get_loop().create_task(self._sweep(), name="modelops-body-deadlines")
        return task

    def done(self, task: asyncio.Task[Any]) -> bool:
        """Unregister ``task``; True when its read was cut by the deadline (the cancellation was ours)."""
        self._reading.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    @property
    def reading(self) -> int:
        """Body reads in progress."""
        return len(self._reading)

    async def stop(self) -> None:
        """Stop the sweeper (the app's shutdown)."""
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            now = time.monotonic()
            for task, deadline in list(self._reading.items()):
                if deadline <= now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()


async def read_json_bytes(request: Request, limit: int, deadlines: BodyDeadlines | None = None) -> bytes:
    """The raw body of a JSON request, at most ``limit`` bytes (413 beyond, without reading it all).

    Args:
        request: the request.
        limit: the most bytes accepted.
        deadlines: bounds the time the body may take (408 ``request_timeout`` beyond); None = no bound.

    Raises:
        UnsupportedMediaType: not JSON (415).
        PayloadTooLarge: over ``limit`` (413).
        RequestTimeout: the body did not arrive within the deadline (408; the connection is closed).
        ClientDisconnected: the client went away before its body was read (never answered).
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType("send the body as JSON with Content-Type: application/json", field="content-type")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is over {limit} bytes: split the request", field="body")
    receive = request.receive
    task = deadlines.watch() if deadlines is not None else None
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise ClientDisconnected("the client disconnected before sending its whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the body is over {limit} bytes: split the request", field="body")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
    except asyncio.CancelledError:
        if task is not None and deadlines is not None and deadlines.done(task):
            task = None
            asyncio.current_task().uncancel()  # type: ignore[union-attr]  # the cancellation was the deadline's
            raise RequestTimeout(
                f"the body did not arrive within {deadlines.timeout_s:g} s: send it at once",
                field="body",
                headers={"Connection": "close"},
            ) from None
        raise
    finally:
        if task is not None and deadlines is not None:
            deadlines.done(task)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
"""A JSON string, to take strings out before counting the brackets outside them."""


def parse_json(raw: bytes, max_containers: int | None = None) -> Any:
    """Parse a JSON body once; MalformedRequest (400) when it is not JSON.

    NaN, Infinity, -Infinity and numbers beyond a double (1e400) are not JSON orjson accepts; only
    when orjson stops at one of them (or at a lone surrogate) is the body read again with the
    standard library, so validation can name the field that holds them (422). Any other invalid
    body is parsed once.

    Args:
        raw: the body.
        max_containers: the most objects and arrays a valid body can hold (records are flat: one per
            record, plus the list around them); a body with more is refused (413) before it is parsed,
            so a few MiB of ``[{},{},...]`` do not become millions of Python objects. None = no bound.
    """
    if not raw.strip():
        raise MalformedRequest("the body is empty: send JSON", field="body")
    if max_containers is not None and raw.count(b"{") + raw.count(b"[") > max_containers:
        # Brackets inside strings do not count: only then is the (rarer, slower) exact count made.
        bare = _JSON_STRING.sub(b"", raw) if b'"' in raw else raw
        opened = bare.count(b"{"), bare.count(b"[")
        if sum(opened) > max_containers:
            if opened != (bare.count(b"}"), bare.count(b"]")):  # unbalanced outside strings: not JSON at all
                raise MalformedRequest("the body is not valid JSON (unbalanced brackets)", field="body")
            raise PayloadTooLarge(
                f"the body holds more than {max_containers} objects and arrays: send at most the record limit "
                "per request, one flat object per record",
                field="body",
            )
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        first = exc
    at = raw[first.pos : first.pos + 1]
    if (
        at in (b"N", b"I")
        or raw[max(0, first.pos - 1) : first.pos + 1] == b"-I"
        or "surrogate" in first.msg
        or "infinity" in first.msg  # 1e400, or an integer of hundreds of digits
    ):
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            pass
    raise MalformedRequest(f"the body is not valid JSON (line {first.lineno}, column {first.colno})", field="body")


def check_bearer(request: Request, keys: list[SecretStr], *, what: str = "an API key") -> None:
    """Raise Unauthorized unless the request carries ``Authorization: Bearer <key>`` with one of ``keys``."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    given = token.strip().encode()
    ok = False
    for key in keys:
        # compare every key in constant time, so timing does not tell how much of a key matched
        ok |= hmac.compare_digest(given, key.get_secret_value().encode())
    if scheme.lower() != "bearer" or not given or not ok:
        raise Unauthorized(f"send {what} as `Authorization: Bearer <key>`", headers={"WWW-Authenticate": "Bearer"})
