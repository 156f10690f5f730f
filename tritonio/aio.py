"""Triton over a pool of keep-alive HTTP/1.1 connections on asyncio, with binary tensors: the request path.

:class:`TritonHttpClient` is what the gateway calls per prediction (through
:mod:`gateway.upstream`): several times less client CPU per call than ``tritonclient.grpc.aio``
(about 0.035 ms against 0.14-0.17 ms on the development machine, docs/benchmarks.md), which is
what bounds a gateway worker. Bodies come from :mod:`tritonio.codec`, framing from
:mod:`tritonio.http1`; failures are :mod:`tritonio.errors`.

The file is over 300 lines because the pool's rules (one deadline timer for all calls, the
hand-over of a connection to a waiter, one retry of a stale socket) only make sense together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque

import numpy as np

from tritonio.codec import decode_response, encode_request, error_message
from tritonio.errors import BadResponse, DeadlineExceeded, Refused, Unavailable
from tritonio.http1 import (
    TERMINATOR,
    ResponseHead,
    get_request,
    infer_prefix,
    infer_request,
    model_path,
    parse_head,
    parse_url,
    read_response,
)

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 2.0
"""Deadline of ``server_ready`` and ``model_ready`` (as the gRPC client)."""
MAX_DEADLINE_TICK_S = 0.05
"""Deadlines are checked this often at most (a tenth of the shortest deadline when that is less)."""
MAX_PREFIXES = 4096
"""Infer request prefixes kept (one per model version called); versions come and go."""


class _Connection:
    """One keep-alive HTTP/1.1 connection: one request in flight at most."""

    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        """False once the server closed or reset it while it sat idle in the pool."""
        reader = self.reader
        return not (reader.at_eof() or reader.exception() is not None or self.writer.is_closing())

    def close(self) -> None:
        """Close the socket now (without waiting for the close to complete)."""
        self.writer.close()


class TritonHttpClient:
    """Triton over a pool of keep-alive HTTP/1.1 connections with the binary tensor data extension.

    At most ``max_connections`` connections, opened on first need and reused last-in first-out
    (the warmest socket first); one request in flight on each, so a call waits for a free
    connection when all are busy. A connection is closed rather than reused after a timeout, a
    cancelled call, a broken or unexpected response, or ``Connection: close``. A reused
    connection that fails before any byte of the response arrived (a keep-alive socket that
    Triton closed, e.g. after a restart) is retried once on a new connection: inference is
    idempotent. The whole call, waiting for a connection included, is bounded by ``timeout_s``.

    Bound to the event loop that first uses it (as a gRPC channel is).
    """

    def __init__(self, url: str, timeout_s: float, max_connections: int = 64) -> None:
        """Args:
        url: Triton's HTTP endpoint, ``host:port`` (an ``http://`` prefix is accepted).
        timeout_s: deadline of one inference call, waiting for a connection included.
        max_connections: most connections, hence most calls in flight.
        """
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.url = url
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.host, self.port, self._authority = parse_url(url)
        self._ready_request = get_request(self._authority, "/v2/health/ready")
        self._infer_prefixes: dict[tuple[str, int], bytes] = {}
        self._idle: list[_Connection] = []
        self._slots = 0  # connections open or being opened (idle ones included)
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._closed = False
        # One timer checks the deadlines of all calls in flight: a timer per call (asyncio.timeout)
        # costs as much client CPU as a third of the rest of a call on uvloop.
        self._deadlines: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._tick_s = min(max(min(timeout_s, READY_TIMEOUT_S) / 10, 0.001), MAX_DEADLINE_TICK_S)

    @property
    def open_connections(self) -> int:
        """Connections open now (idle and busy)."""
        return self._slots

    # -- public API ------------------------------------------------------------------------------
    async def close(self) -> None:
        """Close idle connections; busy ones close when their call ends; later calls fail (Unavailable)."""
        self._closed = True  # the deadline sweeper stops by itself after the last call in flight
        idle, self._idle = self._idle, []
        self._slots -= len(idle)
        for conn in idle:
            conn.close()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(Unavailable("the Triton client is closed"))
        for conn in idle:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await conn.writer.wait_closed()

    async def server_ready(self) -> bool:
        """Whether Triton answers ``GET /v2/health/ready`` with 200 within 2 s."""
        return await self._get_ok(self._ready_request)

    async def model_ready(self, model: str, version: int) -> bool:
        """Whether ``model`` ``version`` is loaded and ready (200 within 2 s)."""
        return await self._get_ok(get_request(self._authority, model_path(model, version, "ready")))

    async def infer(
        self,
        model: str,
        version: int,
        tensors: dict[str, np.ndarray],
        outputs: list[str],
        request_id: str = "",
    ) -> dict[str, np.ndarray]:
        """Run one inference on an explicit version; return the named output arrays.

        Raises:
            Unavailable: Triton unreachable, or the connection broke.
            DeadlineExceeded: no complete answer within ``timeout_s``.
            Refused: Triton answered with an error (its status and message).
            BadResponse: an answer this client cannot read (MissingOutput: an output absent).
        """
        prefix = self._infer_prefixes.get((model, version))
        if prefix is None:
            prefix = self._infer_prefix(model, version)
        request = infer_request(prefix, encode_request(tensors, outputs, request_id=request_id))
        try:
            head, body = await self._roundtrip(request, self.timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(self.timeout_s) from None
        if head.status != 200:
            raise Refused(head.status, error_message(body))
        return decode_response(body, head.header_length, outputs)

    # -- internals -------------------------------------------------------------------------------
    def _infer_prefix(self, model: str, version: int) -> bytes:
        if len(self._infer_prefixes) > MAX_PREFIXES:
            self._infer_prefixes.clear()
        prefix = infer_prefix(self._authority, model, version)
        self._infer_prefixes[(model, version)] = prefix
        return prefix

    async def _get_ok(self, request: bytes) -> bool:
        """Whether a GET answers 200 within the readiness deadline; False on any failure."""
        if self._closed:
            return False
        try:
            head, _body = await self._roundtrip(request, READY_TIMEOUT_S)
        except Exception as exc:  # any failure means not ready; cancellation still propagates
            log.debug("Triton readiness check failed: %r", exc)
            return False
        return head.status == 200

    async def _roundtrip(self, request: bytes, timeout_s: float) -> tuple[ResponseHead, bytes]:
        """Send ``request`` on a pooled connection and read the whole response within ``timeout_s``.

        The connection goes back to the pool only after a complete, reusable response.

        Raises:
            TimeoutError: past ``timeout_s``, waiting for a connection included.
            Unavailable: cannot connect, or the connection broke before the whole response.
            BadResponse: an answer that is not HTTP/1.1 as this client reads it.
        """
        if self._closed:
            raise Unavailable("the Triton client is closed")
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("TritonHttpClient must be called from an asyncio task")
        if task in self._deadlines:
            raise RuntimeError("one TritonHttpClient call at a time per task")
        cancelling = task.cancelling()
        self._deadlines[task] = loop.time() + timeout_s
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._tick_s, self._sweep)
        try:
            idle = self._idle
            conn: _Connection | None
            if idle:  # the usual case: a warm connection, no waiting
                conn = idle.pop()
                if not conn.usable():
                    conn.close()  # Triton closed it while idle: keep its slot, open a new one
                    conn = None
            else:
                conn = await self._take()
            return await self._exchange(conn, request)
        except asyncio.CancelledError:
            # our deadline (as asyncio.timeout: unless someone else cancelled the task too)
            if task in self._expired and task.uncancel() <= cancelling:
                raise TimeoutError from None
            raise
        finally:
            self._deadlines.pop(task, None)
            if self._expired:
                self._expired.discard(task)

    def _sweep(self) -> None:
        """Cancel the calls past their deadline; check again in a tick while calls are in flight."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for task in [t for t, deadline in self._deadlines.items() if deadline <= now]:
            self._expire(task)
        self._sweeper = loop.call_later(self._tick_s, self._sweep) if self._deadlines else None

    def _expire(self, task: asyncio.Task[object]) -> None:
        del self._deadlines[task]
        self._expired.add(task)
        task.cancel()

    async def _exchange(self, conn: _Connection | None, request: bytes) -> tuple[ResponseHead, bytes]:
        """One request and its response on ``conn`` (None: open a new one in the slot held)."""
        retried = False
        try:
            while True:
                reused = conn is not None
                if conn is None:
                    conn = await self._connect()
                conn.writer.write(request)
                try:
                    first = await conn.reader.readuntil(TERMINATOR)
                except asyncio.IncompleteReadError as exc:
                    if reused and not retried and not exc.partial:
                        conn.close()
                        conn, retried = None, True
                        log.debug("a pooled connection to Triton was closed; retrying on a new one")
                        continue
                    raise Unavailable("Triton closed the connection before answering") from exc
                except OSError as exc:
                    if reused and not retried:
                        conn.close()
                        conn, retried = None, True
                        log.debug("a pooled connection to Triton failed (%r); retrying on a new one", exc)
                        continue
                    raise Unavailable(f"connection to Triton failed: {exc!r}") from exc
                except asyncio.LimitOverrunError as exc:
                    raise BadResponse("response headers too large") from exc
                try:
                    head = parse_head(first)
                    length = head.content_length
                    if head.status == 200 and length is not None:
                        # How Triton answers an inference: read by length here, which saves the
                        # coroutine of read_response (~1 us of the ~18 us a call costs the client).
                        body = await conn.reader.readexactly(length) if length else b""
                    else:
                        head, body = await read_response(conn.reader, first)
                except (asyncio.IncompleteReadError, OSError) as exc:
                    raise Unavailable("the connection to Triton broke during the response") from exc
                if not head.identity:
                    raise BadResponse("compressed response (the client never asks for compression)")
                break
        except BaseException:
            # timeout, cancellation, broken or unreadable response: never reuse this connection
            if conn is not None:
                conn.close()
            self._give(None)
            raise
        if head.keep_alive and not self._closed:
            self._give(conn)
        else:
            conn.close()
            self._give(None)
        return head, body

    async def _take(self) -> _Connection | None:
        """With no idle connection: a free slot (None: the caller opens a connection in it) or,
        when all are busy, the first connection (or slot) given back."""
        if self._slots < self.max_connections:
            self._slots += 1
            return None
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            handed = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give(waiter.result())  # handed over just as we were cancelled: pass it on
            raise
        return handed  # just given back after a complete keep-alive response

    def _give(self, conn: _Connection | None) -> None:
        """Return a connection (or, with None, the slot of a closed one) to the next waiter or the pool."""
        if self._closed:
            if conn is not None:
                conn.close()
            self._slots -= 1
            return
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if conn is None:
            self._slots -= 1
        else:
            self._idle.append(conn)

    async def _connect(self) -> _Connection:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise Unavailable(f"cannot connect to Triton at {self.host}:{self.port}: {exc}") from exc
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(reader, writer)
