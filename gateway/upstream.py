"""The gateway's only door to Triton: async inference and readiness, over HTTP or gRPC.

Two clients implement :class:`InferenceClient`; :func:`make_client` picks one from
``MODELOPS_GATEWAY_TRITON_PROTOCOL``:

* :class:`TritonHttpClient` (``http``, the default): a pool of keep-alive HTTP/1.1 connections
  speaking Triton's binary tensor data extension; several times less client CPU per call than
  gRPC, which is what bounds a gateway worker.
* :class:`TritonClient` (``grpc``): one shared ``tritonclient.grpc.aio`` channel.

Both map failures onto the gateway's own errors the same way: Triton unreachable, the model
(version) unknown or not ready -> 503 (:class:`ModelNotReady`, with Retry-After), no answer
within the deadline -> 504 (:class:`UpstreamTimeout`), anything else -> 502
(:class:`UpstreamError`). Triton's message is logged at warning, never returned to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from typing import Protocol
from urllib.parse import quote

import numpy as np
import orjson
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor, serialize_byte_tensor

from gateway.errors import GatewayError, ModelNotReady, UpstreamError, UpstreamTimeout
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


class InferenceClient(Protocol):
    """What the gateway needs from an inference server (:class:`TritonHttpClient`, :class:`TritonClient`;
    a fake in unit tests)."""

    async def close(self) -> None:
        """Release the connection."""

    async def server_ready(self) -> bool:
        """Whether the server answers and is ready."""

    async def model_ready(self, model: str, version: int) -> bool:
        """Whether ``model`` ``version`` is loaded and ready."""

    async def infer(
        self,
        model: str,
        version: int,
        tensors: dict[str, np.ndarray],
        outputs: list[str],
        request_id: str = "",
    ) -> dict[str, np.ndarray]:
        """Run one inference on an explicit version; return the named output arrays."""


class TritonClient:
    """One shared async gRPC channel to Triton."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._client = grpcaio.InferenceServerClient(url)

    async def close(self) -> None:
        """Close the channel."""
        await self._client.close()

    async def server_ready(self) -> bool:
        """Whether Triton answers and is ready."""
        try:
            return bool(await self._client.is_server_ready(client_timeout=2.0))
        except InferenceServerException:
            return False

    async def model_ready(self, model: str, version: int) -> bool:
        """Whether ``model`` ``version`` is loaded and ready."""
        try:
            return bool(await self._client.is_model_ready(model, str(version), client_timeout=2.0))
        except InferenceServerException:
            return False

    async def infer(
        self,
        model: str,
        version: int,
        tensors: dict[str, np.ndarray],
        outputs: list[str],
        request_id: str = "",
    ) -> dict[str, np.ndarray]:
        """Run one inference on an explicit version; return the named output arrays."""
        inputs = []
        for name, array in tensors.items():
            dtype = "FP32" if array.dtype == np.float32 else "INT64"
            tensor = grpcclient.InferInput(name, list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        requested = [grpcclient.InferRequestedOutput(o) for o in outputs]
        try:
            result = await self._client.infer(
                model,
                inputs,
                model_version=str(version),
                outputs=requested,
                request_id=request_id,
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as exc:
            raise _translate(exc, model, version) from exc
        arrays: dict[str, np.ndarray] = {}
        for o in outputs:
            arr = result.as_numpy(o)
            if arr is None:
                raise UpstreamError(f"model {model} v{version} returned no output {o!r}; check its export")
            arrays[o] = arr
        return arrays


def _translate(exc: InferenceServerException, model: str, version: int) -> Exception:
    status = str(exc.status() or "")
    message = exc.message() or ""
    log.warning("Triton error on %s v%d: %s %s", model, version, status, message)
    if "DEADLINE_EXCEEDED" in status or "Deadline Exceeded" in message:
        return UpstreamTimeout("the model did not answer in time; retry, or send fewer records")
    if "UNAVAILABLE" in status or "unavailable" in message.lower() or "not ready" in message.lower():
        return ModelNotReady("the model server is not available right now; retry shortly", headers={"Retry-After": "1"})
    if "NOT_FOUND" in status or "unknown model" in message.lower():
        return ModelNotReady(
            f"model {model} version {version} is not loaded; retry shortly", headers={"Retry-After": "1"}
        )
    return UpstreamError("the model server failed this request; if it persists, tell the operators")


# --- HTTP/1.1 with binary tensors ----------------------------------------------------------------

NOT_AVAILABLE = "the model server is not available right now; retry shortly"
READY_TIMEOUT_S = 2.0
"""Deadline of ``server_ready`` and ``model_ready`` (as the gRPC client)."""
MAX_DEADLINE_TICK_S = 0.05
"""Deadlines are checked this often at most (a tenth of the shortest deadline when that is less)."""

_NUMPY_TO_TRITON: dict[str, str] = {
    "|b1": "BOOL",
    "|i1": "INT8",
    "<i2": "INT16",
    "<i4": "INT32",
    "<i8": "INT64",
    "|u1": "UINT8",
    "<u2": "UINT16",
    "<u4": "UINT32",
    "<u8": "UINT64",
    "<f2": "FP16",
    "<f4": "FP32",
    "<f8": "FP64",
}
"""Numpy dtype (``dtype.str``, little-endian) -> Triton datatype of a binary input."""

_TRITON_TO_NUMPY: dict[str, np.dtype] = {v: np.dtype(k) for k, v in _NUMPY_TO_TRITON.items()}
_TRITON_TO_NUMPY["BYTES"] = np.dtype(object)


class _ConnectionFailed(Exception):
    """Triton could not be reached, or the connection broke before the whole response came."""


class _BadResponse(Exception):
    """Triton's answer is not the HTTP/1.1 this client understands."""


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

    Bound to the event loop that first uses it (as the gRPC channel is).
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
        self.host, self.port = _host_port(url)
        netloc = url.removeprefix("http://").rstrip("/")
        self._host_header = netloc.encode("ascii")
        self._ready_request = b"GET /v2/health/ready HTTP/1.1\r\nHost: %s\r\n\r\n" % self._host_header
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
        """Close idle connections; busy ones close when their call ends; later calls fail with 503."""
        self._closed = True  # the deadline sweeper stops by itself after the last call in flight
        idle, self._idle = self._idle, []
        self._slots -= len(idle)
        for conn in idle:
            conn.close()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(_ConnectionFailed("the Triton client is closed"))
        for conn in idle:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await conn.writer.wait_closed()

    async def server_ready(self) -> bool:
        """Whether Triton answers ``GET /v2/health/ready`` with 200 within 2 s."""
        return await self._get_ok(self._ready_request)

    async def model_ready(self, model: str, version: int) -> bool:
        """Whether ``model`` ``version`` is loaded and ready (200 within 2 s)."""
        path = b"/v2/models/%s/versions/%d/ready" % (quote(model, safe="").encode(), version)
        return await self._get_ok(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, self._host_header))

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
            ModelNotReady: Triton unreachable, or the model version unknown or not ready (503).
            UpstreamTimeout: no complete answer within ``timeout_s`` (504).
            UpstreamError: Triton refused or failed the request, or answered nonsense (502).
        """
        prefix = self._infer_prefixes.get((model, version))
        if prefix is None:
            prefix = self._infer_prefix(model, version)
        inputs = []
        chunks: list[bytes | memoryview] = [b"", b""]
        size = 0
        for name, array in tensors.items():
            datatype, data, nbytes = _encode(array)
            inputs.append(
                {"name": name, "shape": array.shape, "datatype": datatype, "parameters": {"binary_data_size": nbytes}}
            )
            chunks.append(data)
            size += nbytes
        header: dict[str, object] = {
            "inputs": inputs,
            "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs],
        }
        if request_id:
            header["id"] = request_id
        head = orjson.dumps(header)
        chunks[0] = prefix + b"%d\r\nContent-Length: %d\r\n\r\n" % (len(head), len(head) + size)
        chunks[1] = head
        try:
            status, json_length, body = await self._roundtrip(b"".join(chunks), self.timeout_s)
        except _ConnectionFailed as exc:
            log.warning("Triton unreachable for %s v%d: %s", model, version, exc)
            raise ModelNotReady(NOT_AVAILABLE, headers={"Retry-After": "1"}) from exc
        except TimeoutError as exc:
            log.warning("Triton did not answer %s v%d within %.3g s", model, version, self.timeout_s)
            raise UpstreamTimeout("the model did not answer in time; retry, or send fewer records") from exc
        except _BadResponse as exc:
            log.warning("Triton answered %s v%d with an unreadable response: %s", model, version, exc)
            raise UpstreamError("the model server failed this request; if it persists, tell the operators") from exc
        if status != 200:
            raise _http_error(status, body, model, version)
        return _decode(body, json_length, outputs, model, version)

    # -- internals -------------------------------------------------------------------------------
    def _infer_prefix(self, model: str, version: int) -> bytes:
        """Request line and fixed headers of an infer call, up to the value of the JSON length."""
        if len(self._infer_prefixes) > 4096:  # versions come and go; never grow without bound
            self._infer_prefixes.clear()
        path = b"/v2/models/%s/versions/%d/infer" % (quote(model, safe="").encode(), version)
        prefix = (
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\n"
            b"Inference-Header-Content-Length: " % (path, self._host_header)
        )
        self._infer_prefixes[(model, version)] = prefix
        return prefix

    async def _get_ok(self, request: bytes) -> bool:
        """Whether a GET answers 200 within the readiness deadline; False on any failure."""
        if self._closed:
            return False
        try:
            status, _length, _body = await self._roundtrip(request, READY_TIMEOUT_S)
        except Exception as exc:  # any failure means not ready; cancellation still propagates
            log.debug("Triton readiness check failed: %r", exc)
            return False
        return status == 200

    async def _roundtrip(self, request: bytes, timeout_s: float) -> tuple[int, int | None, bytes]:
        """Send ``request`` on a pooled connection and read the whole response within ``timeout_s``.

        Returns the status, the ``Inference-Header-Content-Length`` (None when absent) and the
        body. The connection goes back to the pool only after a complete, reusable response.

        Raises:
            TimeoutError: past ``timeout_s``, waiting for a connection included.
            _ConnectionFailed: cannot connect, or the connection broke before the whole response.
            _BadResponse: an answer that is not HTTP/1.1 as this client reads it.
        """
        if self._closed:
            raise _ConnectionFailed("the Triton client is closed")
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

    async def _exchange(self, conn: _Connection | None, request: bytes) -> tuple[int, int | None, bytes]:
        """One request and its response on ``conn`` (None: open a new one in the slot held)."""
        retried = False
        try:
            while True:
                reused = conn is not None
                if conn is None:
                    conn = await self._connect()
                conn.writer.write(request)
                try:
                    head = await conn.reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    if reused and not retried and not exc.partial:
                        conn.close()
                        conn, retried = None, True
                        log.debug("a pooled connection to Triton was closed; retrying on a new one")
                        continue
                    raise _ConnectionFailed("Triton closed the connection before answering") from exc
                except OSError as exc:
                    if reused and not retried:
                        conn.close()
                        conn, retried = None, True
                        log.debug("a pooled connection to Triton failed (%r); retrying on a new one", exc)
                        continue
                    raise _ConnectionFailed(f"connection to Triton failed: {exc!r}") from exc
                except asyncio.LimitOverrunError as exc:
                    raise _BadResponse("response headers too large") from exc
                status, length, json_length, chunked, keep_alive = _parse_head(head)
                try:
                    if length is not None:
                        body = await conn.reader.readexactly(length)
                    elif chunked:
                        body = await _read_chunked(conn.reader)
                    elif status in (204, 304) or status < 200:
                        body = b""
                    else:  # no framing: the body runs until the server closes
                        body = await conn.reader.read()
                        keep_alive = False
                except (asyncio.IncompleteReadError, OSError) as exc:
                    raise _ConnectionFailed("the connection to Triton broke during the response") from exc
                except asyncio.LimitOverrunError as exc:
                    raise _BadResponse("malformed chunked response") from exc
                break
        except BaseException:
            # timeout, cancellation, broken or unreadable response: never reuse this connection
            if conn is not None:
                conn.close()
            self._give(None)
            raise
        if keep_alive and not self._closed:
            self._give(conn)
        else:
            conn.close()
            self._give(None)
        return status, json_length, body

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
            raise _ConnectionFailed(f"cannot connect to Triton at {self.host}:{self.port}: {exc}") from exc
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(reader, writer)


def make_client(settings: GatewaySettings) -> InferenceClient:
    """The inference client ``settings.triton_protocol`` asks for (HTTP by default)."""
    if settings.triton_protocol == "grpc":
        return TritonClient(settings.triton_grpc_url, settings.triton_timeout_s)
    return TritonHttpClient(settings.triton_http_url, settings.triton_timeout_s, settings.triton_max_connections)


def _host_port(url: str) -> tuple[str, int]:
    """``host:port`` (optionally ``http://host:port`` or ``[v6]:port``) -> (host, port)."""
    if url.startswith("https://"):
        raise ValueError(f"Triton HTTP URL {url!r}: TLS is not supported; give host:port")
    netloc = url.removeprefix("http://").rstrip("/")
    host, sep, port = netloc.rpartition(":")
    if not sep or not port.isdigit() or not host or "/" in netloc:
        raise ValueError(f"Triton HTTP URL {url!r}: expected host:port")
    return host.strip("[]"), int(port)


def _encode(array: np.ndarray) -> tuple[str, bytes | memoryview, int]:
    """Triton datatype, little-endian row-major bytes (or a C-contiguous array) and their size."""
    datatype = _NUMPY_TO_TRITON.get(array.dtype.str)
    if datatype is not None:
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        return datatype, array.data, array.nbytes
    if array.dtype.kind in "OSU":
        serialized = serialize_byte_tensor(array)
        data = serialized.item() if serialized.size else b""
        return "BYTES", data, len(data)
    little = array.dtype.newbyteorder("<")
    datatype = _NUMPY_TO_TRITON.get(little.str)
    if datatype is None:
        raise TypeError(f"no Triton datatype for numpy dtype {array.dtype}")
    converted = np.ascontiguousarray(array, dtype=little)
    return datatype, converted.data, converted.nbytes


def _parse_head(head: bytes) -> tuple[int, int | None, int | None, bool, bool]:
    """Status line and headers -> (status, content length, inference header length, chunked, keep-alive)."""
    if not head.startswith(b"HTTP/1."):
        raise _BadResponse(f"not an HTTP/1.x response: {head[:40]!r}")
    lower = head.lower()
    try:
        status = int(head[9:12])
        start = lower.find(b"\r\ncontent-length:")
        length = None if start < 0 else int(lower[start + 17 : lower.find(b"\r\n", start + 17)])
        start = lower.find(b"\r\ninference-header-content-length:")
        json_length = None if start < 0 else int(lower[start + 35 : lower.find(b"\r\n", start + 35)])
    except ValueError as exc:
        raise _BadResponse(f"malformed response head: {head[:200]!r}") from exc
    keep_alive = head[7:8] == b"1"
    chunked = False
    # Triton sends none of these on its own (Connection: close only when asked): the slow path.
    if b"\r\ntransfer-encoding:" in lower or b"\r\nconnection:" in lower or b"\r\ncontent-encoding:" in lower:
        if _header(lower, b"\r\ncontent-encoding:") not in (None, b"identity"):
            raise _BadResponse("compressed response (the client never asks for compression)")
        encoding = _header(lower, b"\r\ntransfer-encoding:")
        if encoding is not None and b"chunked" in encoding:
            chunked, length = True, None  # RFC 9112: Transfer-Encoding overrides Content-Length
        connection = _header(lower, b"\r\nconnection:")
        if connection is not None:
            keep_alive = b"close" not in connection and (keep_alive or b"keep-alive" in connection)
    return status, length, json_length, chunked, keep_alive


def _header(lower_head: bytes, name: bytes) -> bytes | None:
    """The value of the header ``name`` (lower case, with its leading CRLF and colon) or None."""
    start = lower_head.find(name)
    if start < 0:
        return None
    start += len(name)
    return lower_head[start : lower_head.find(b"\r\n", start)].strip()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """The body of a ``Transfer-Encoding: chunked`` response (trailers skipped)."""
    parts: list[bytes] = []
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise _BadResponse(f"malformed chunk size line {line[:40]!r}") from exc
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return b"".join(parts)
        chunk = await reader.readexactly(size + 2)
        if chunk[-2:] != b"\r\n":
            raise _BadResponse("malformed chunk terminator")
        parts.append(chunk[:-2])


def _decode(
    body: bytes, json_length: int | None, outputs: list[str], model: str, version: int
) -> dict[str, np.ndarray]:
    """The requested outputs of a 200 response, binary (after the JSON header) or JSON ``data``."""
    try:
        document = orjson.loads(body if json_length is None else memoryview(body)[:json_length])
        offset = json_length or 0
        found: dict[str, np.ndarray] = {}
        for output in document.get("outputs") or ():
            datatype = output["datatype"]
            parameters = output.get("parameters")
            size = parameters.get("binary_data_size") if parameters else None
            if size is not None:
                if json_length is None:
                    raise _BadResponse("binary output without Inference-Header-Content-Length")
                end = offset + size
                if end > len(body):
                    raise _BadResponse("binary output beyond the end of the body")
                if datatype == "BYTES":
                    array = deserialize_bytes_tensor(body[offset:end])
                else:
                    dtype = _TRITON_TO_NUMPY[datatype]
                    if size % dtype.itemsize:
                        raise _BadResponse(f"{size} bytes is no whole number of {datatype}")
                    array = np.frombuffer(body, dtype, size // dtype.itemsize, offset)
                offset = end
            else:
                array = np.array(output["data"], dtype=_TRITON_TO_NUMPY[datatype])
            found[output["name"]] = array.reshape(output["shape"])
    except (_BadResponse, KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("Triton answered %s v%d with unreadable outputs: %r", model, version, exc)
        raise UpstreamError("the model server failed this request; if it persists, tell the operators") from exc
    arrays: dict[str, np.ndarray] = {}
    for name in outputs:
        array = found.get(name)
        if array is None:
            raise UpstreamError(f"model {model} v{version} returned no output {name!r}; check its export")
        arrays[name] = array
    return arrays


def _http_error(status: int, body: bytes, model: str, version: int) -> GatewayError:
    """The gateway error for a non-200 infer response (same mapping as :func:`_translate`)."""
    try:
        document = orjson.loads(body)
        message = str(document.get("error", "")) if isinstance(document, dict) else ""
    except orjson.JSONDecodeError:
        message = body[:500].decode("utf-8", "replace")
    message = message[:500]
    log.warning("Triton error on %s v%d: HTTP %d %s", model, version, status, message)
    lowered = message.lower()
    if status in (400, 404, 503):
        if "unknown model" in lowered or "not found" in lowered:
            return ModelNotReady(
                f"model {model} version {version} is not loaded; retry shortly", headers={"Retry-After": "1"}
            )
        if "not ready" in lowered or "unavailable" in lowered:
            return ModelNotReady(NOT_AVAILABLE, headers={"Retry-After": "1"})
    return UpstreamError("the model server failed this request; if it persists, tell the operators")
