"""TritonHttpClient against a small HTTP/1.1 server written here: binary tensors, the pool, failures.

The server speaks just enough of Triton's HTTP/REST protocol with the binary tensor data
extension: it doubles the input ``x`` into the output ``y`` and answers the row numbers as
``idx``. Each connection has a reader that queues requests as they arrive and a responder that
answers them in order, so a client that pipelined would be seen (``max_per_connection``). Every
test runs on the standard event loop and on uvloop (the gateway's).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import uvloop

from gateway.errors import GatewayError, ModelNotReady, UpstreamError, UpstreamTimeout
from gateway.settings import GatewaySettings
from gateway.upstream import TritonClient, TritonHttpClient, make_client
from servers.processes import free_port

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_}
TENSORS = {
    "x": np.arange(12, dtype=np.float32).reshape(4, 3) / 7,
    "c": np.array([[1], [2], [3], [2**40]], dtype=np.int64),
}


@dataclass
class Request:
    """One request as the fake server read it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    connection: int


def response(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    """An HTTP/1.1 response with Content-Length (as Triton frames every answer)."""
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}.get(status, "X")
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def error(status: int, message: str) -> bytes:
    """Triton's error answer: ``{"error": "..."}``."""
    return response(status, json.dumps({"error": message}).encode(), {"Content-Type": "application/json"})


def decode_request(request: Request) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON header and the input arrays of a binary infer request."""
    json_length = int(request.headers["inference-header-content-length"])
    header = json.loads(request.body[:json_length])
    offset, arrays = json_length, {}
    for spec in header["inputs"]:
        size = spec["parameters"]["binary_data_size"]
        data = request.body[offset : offset + size]
        arrays[spec["name"]] = np.frombuffer(data, DTYPES[spec["datatype"]]).reshape(spec["shape"])
        offset += size
    assert offset == len(request.body), "bytes after the last input"
    return header, arrays


def infer_answer(request: Request, *, binary: bool = True) -> bytes:
    """The fake model: ``y = 2 * x`` and ``idx`` = row numbers; binary outputs where asked."""
    header, arrays = decode_request(request)
    values = {"y": arrays["x"] * 2, "idx": np.arange(arrays["x"].shape[0], dtype=np.int64).reshape(-1, 1)}
    datatypes = {"y": "FP32", "idx": "INT64"}
    outputs, blobs = [], []
    for spec in header["outputs"]:
        name = spec["name"]
        out: dict[str, Any] = {"name": name, "datatype": datatypes[name], "shape": list(values[name].shape)}
        if binary and spec.get("parameters", {}).get("binary_data"):
            blob = values[name].astype(values[name].dtype.newbyteorder("<")).tobytes()
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            out["data"] = values[name].ravel().tolist()
        outputs.append(out)
    doc = json.dumps({"id": header.get("id", ""), "model_name": "m", "model_version": "1", "outputs": outputs})
    if not blobs:
        return response(200, doc.encode(), {"Content-Type": "application/json"})
    head = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(doc))}
    return response(200, doc.encode() + b"".join(blobs), head)


Handler = Callable[[Request], Awaitable[bytes | None]]


class FakeTritonHttp:
    """An HTTP/1.1 server answering like Triton; ``handler`` returns the response bytes or None (drop)."""

    def __init__(self) -> None:
        self.handler: Handler = self.answer
        self.delay_s = 0.0
        self.requests: list[Request] = []
        self.accepted = 0
        self.client_closed = 0  # connections on which the client sent EOF (or reset)
        self.in_flight = 0
        self.max_in_flight = 0
        self.max_per_connection = 0
        self.release = asyncio.Event()
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def answer(self, request: Request) -> bytes | None:
        """Readiness 200, infer as the fake model."""
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if request.method == "GET":
            return response(200, headers={"Content-Type": "text/plain"})
        return infer_answer(request)

    async def hang(self, request: Request) -> bytes | None:
        """Never answer (until ``release`` is set)."""
        await self.release.wait()
        return await self.answer(request)

    async def __aenter__(self) -> FakeTritonHttp:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        connection = self.accepted
        self.accepted += 1
        queue: asyncio.Queue[Request | None] = asyncio.Queue()
        unanswered = [0]

        async def read_requests() -> None:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.client_closed += 1
                    queue.put_nowait(None)
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _version = lines[0].split(" ")
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                unanswered[0] += 1
                self.max_per_connection = max(self.max_per_connection, unanswered[0])
                queue.put_nowait(Request(method, path, headers, body, connection))

        reading = asyncio.create_task(read_requests())
        self._tasks.add(reading)
        try:
            while (request := await queue.get()) is not None:
                self.requests.append(request)
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    answer = await self.handler(request)
                finally:
                    self.in_flight -= 1
                if answer is None:
                    break
                unanswered[0] -= 1
                writer.write(answer)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            reading.cancel()  # first, so that closing here is not counted as the client closing
            await asyncio.gather(reading, return_exceptions=True)
            writer.close()


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Iterator[Callable[[Callable[[], Awaitable[Any]]], Any]]:
    """Run an async test body on a fresh event loop of each kind."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def _run(body: Callable[[], Awaitable[Any]]) -> Any:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(asyncio.wait_for(body(), 20))

    yield _run


async def eventually(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    """Wait until ``condition()`` holds; fail after ``timeout_s``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.005)


def check_outputs(result: dict[str, np.ndarray]) -> None:
    """The fake model's answer to TENSORS."""
    assert set(result) == {"y", "idx"}
    assert result["y"].dtype == np.float32 and result["y"].shape == (4, 3)
    np.testing.assert_array_equal(result["y"], TENSORS["x"] * 2)
    assert result["idx"].dtype == np.int64
    np.testing.assert_array_equal(result["idx"], [[0], [1], [2], [3]])


# --- the protocol --------------------------------------------------------------------------------


def test_binary_request_and_binary_outputs(run) -> None:
    async def body() -> None:
        async with FakeTritonHttp() as server:
            client = TritonHttpClient(server.url, timeout_s=5)
            result = await client.infer("solar_ghi", 3, TENSORS, ["y", "idx"], request_id="req-7")
            check_outputs(result)
            (request,) = server.requests
            assert request.method == "POST" and request.path == "/v2/models/solar_ghi/versions/3/infer"
            assert request.headers["host"] == server.url
            assert request.headers["content-type"] == "application/octet-stream"
            assert int(request.headers["content-length"]) == len(request.body)
            assert "accept-encoding" not in request.headers, "asked for a compressed answer"
            header, arrays = decode_request(request)
            assert header["id"] == "req-7"
            assert header["inputs"] == [
                {"name": "x", "shape": [4, 3], "datatype": "FP32", "parameters": {"binary_data_size": 48}},
                {"name": "c", "shape": [4, 1], "datatype": "INT64", "parameters": {"binary_data_size": 32}},
            ]
            assert header["outputs"] == [
                {"name": "y", "parameters": {"binary_data": True}},
                {"name": "idx", "parameters": {"binary_data": True}},
            ]
            np.testing.assert_array_equal(arrays["x"], TENSORS["x"])
            np.testing.assert_array_equal(arrays["c"], TENSORS["c"])
            await client.close()

    run(body)


def test_inputs_of_other_dtypes_layouts_and_no_request_id(run) -> None:
    async def body() -> None:
        async with FakeTritonHttp() as server:
            client = TritonHttpClient(f"http://{server.url}", timeout_s=5)
            x = np.asfortranarray(np.arange(8, dtype=">f4").reshape(4, 2))  # big-endian, column-major
            flags = np.array([[True], [False], [True], [True]])
            result = await client.infer("m", 1, {"x": x, "flag": flags, "n": np.ones((4, 1), np.int32)}, ["y"])
            np.testing.assert_array_equal(result["y"], x.astype(np.float32) * 2)
            header, arrays = decode_request(server.requests[0])
            assert "id" not in header
            assert [i["datatype"] for i in header["inputs"]] == ["FP32", "BOOL", "INT32"]
            np.testing.assert_array_equal(arrays["x"], x)
            np.testing.assert_array_equal(arrays["flag"], flags)
            await client.close()

    run(body)


def test_json_outputs_are_decoded_too(run) -> None:
    async def json_only(request: Request) -> bytes:
        return infer_answer(request, binary=False)

    async def body() -> None:
        async with FakeTritonHttp() as server:
            server.handler = json_only
            client = TritonHttpClient(server.url, timeout_s=5)
            check_outputs(await client.infer("m", 1, TENSORS, ["y", "idx"]))
            await client.close()

    run(body)


def test_chunked_response_is_read(run) -> None:
    async def chunked(request: Request) -> bytes:
        answer = infer_answer(request)
        head, _, payload = answer.partition(b"\r\n\r\n")
        head = b"\r\n".join(h for h in head.split(b"\r\n") if not h.lower().startswith(b"content-length"))
        chunks = [payload[:10], payload[10:11], payload[11:]]
        framed = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks if c)
        return head + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + framed + b"0\r\nX-Trailer: 1\r\n\r\n"

    async def body() -> None:
        async with FakeTritonHttp() as server:
            server.handler = chunked
            client = TritonHttpClient(server.url, timeout_s=5)
            for _ in range(2):  # the framing was consumed exactly: the connection is reusable
                check_outputs(await client.infer("m", 1, TENSORS, ["y", "idx"]))
            assert server.accepted == 1
            await client.close()

    run(body)


@pytest.mark.parametrize(
    "answer",
    [
        response(200, b"not json", {"Inference-Header-Content-Length": "8"}),
        response(
            200,
            b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [4, 3], '
            b'"parameters": {"binary_data_size": 48}}]}',
        ),
        response(200, b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [9, 9], "data": [1.0]}]}'),
        response(200, b'{"outputs": [{"name": "idx", "datatype": "INT64", "shape": [1], "data": [1]}]}'),
        b"SSH-2.0-OpenSSH\r\n\r\n",
    ],
    ids=["bad-json", "binary-without-length", "bad-shape", "missing-output", "not-http"],
)
def test_unreadable_answers_are_upstream_errors(run, answer: bytes) -> None:
    async def bad(_request: Request) -> bytes:
        return answer

    async def body() -> None:
        async with FakeTritonHttp() as server:
            server.handler = bad
            client = TritonHttpClient(server.url, timeout_s=5)
            with pytest.raises(UpstreamError):
                await client.infer("m", 1, TENSORS, ["y"])
            await client.close()

    run(body)


# --- the pool ------------------------------------------------------------------------------------


def test_sequential_calls_share_one_keep_alive_connection(run) -> None:
    async def body() -> None:
        async with FakeTritonHttp() as server:
            client = TritonHttpClient(server.url, timeout_s=5)
            for _ in range(20):
                check_outputs(await client.infer("m", 1, TENSORS, ["y", "idx"]))
            assert await client.server_ready()
            assert await client.model_ready("m", 1)
            assert server.accepted == 1 and len(server.requests) == 22
            assert [r.path for r in server.requests[-2:]] == ["/v2/health/ready", "/v2/models/m/versions/1/ready"]
            assert client.open_connections == 1
            await client.close()

    run(body)


def test_the_pool_limit_holds_under_concurrency_without_pipelining(run) -> None:
    async def body() -> None:
        async with FakeTritonHttp() as server:
            server.delay_s = 0.05
            client = TritonHttpClient(server.url, timeout_s=5, max_connections=3)
            results = await asyncio.gather(*(client.infer("m", 1, TENSORS, ["y", "idx"]) for _ in range(12)))
            for result in results:
                check_outputs(result)
            assert server.accepted == 3, "more connections than max_connections"
            assert server.max_in_flight == 3, "the pool did not use its connections in parallel"
            assert server.max_per_connection == 1, "a second request was sent before the first was answered"
            assert client.open_connections == 3
            await client.close()

    run(body)


def test_a_caller_cancelled_while_waiting_for_a_connection_takes_nothing(run) -> None:
    async def body() -> None:
        async with FakeTritonHttp() as server:
            server.delay_s = 0.1
            client = TritonHttpClient(server.url, timeout_s=5, max_connections=1)
            first = asyncio.create_task(client.infer("m", 1, TENSORS, ["y", "idx"]))
            await eventually(lambda: server.in_flight == 1)
            waiting = asyncio.create_task(client.infer("m", 1, TENSORS, ["y", "idx"]))
            await asyncio.sleep(0.02)
            waiting.cancel()
            check_outputs(await first)
            with pytest.raises(asyncio.CancelledError):
                await waiting
            check_outputs(await client.infer("m", 1, TENSORS, ["y", "idx"]))
            assert server.accepted == 1 and len(server.requests) == 2
            await client.close()

    run(body)


def test_the_most_recently_used_connection_is_reused_first(run) -> None:
    async def body() -> None:
        async with FakeTritonHttp() as server:
            server.delay_s = 0.02
            client = TritonHttpClient(server.url, timeout_s=5, max_connections=3)
            await asyncio.gather(*(client.infer("m", 1, TENSORS, ["y"]) for _ in range(3)))
            assert server.accepted == 3
            for _ in range(6):
                await client.infer("m", 1, TENSORS, ["y"])
            assert len({r.connection for r in server.requests[-6:]}) == 1, "idle connections were rotated"
            await client.close()

    run(body)


def test_a_connection_handed_to_a_caller_cancelled_at_that_moment_is_passed_on(run) -> None:
    async def body() -> None:
        async with FakeTritonHttp() as server:
            server.delay_s = 0.05
            client = TritonHttpClient(server.url, timeout_s=2, max_connections=1)

            async def first_then_cancel_the_waiter() -> None:
                await client.infer("m", 1, TENSORS, ["y"])  # hands its connection to the waiter...
                waiting.cancel()  # ...which is cancelled before it could run

            first = asyncio.create_task(first_then_cancel_the_waiter())
            await eventually(lambda: server.in_flight == 1)
            waiting = asyncio.create_task(client.infer("m", 1, TENSORS, ["y"]))
            await first
            with pytest.raises(asyncio.CancelledError):
                await waiting
            check_outputs(await client.infer("m", 1, TENSORS, ["y", "idx"]))  # the connection was not lost
            assert server.accepted == 1 and client.open_connections == 1
            await client.close()

    run(body)


def test_a_stale_pooled_connection_is_retried_once_on_a_new_one(run) -> None:
    async def body() -> None:
        async with FakeTritonHttp() as server:
            client = TritonHttpClient(server.url, timeout_s=5)
            check_outputs(await client.infer("m", 1, TENSORS, ["y", "idx"]))

            async def drop_on_first_connection(request: Request) -> bytes | None:
                # Triton restarted: the old keep-alive socket takes the request and closes
                return None if request.connection == 0 else await server.answer(request)

            server.handler = drop_on_first_connection
            check_outputs(await client.infer("m", 1, TENSORS, ["y", "idx"]))
            assert server.accepted == 2 and [r.connection for r in server.requests] == [0, 0, 1]
            await client.close()

    run(body)


def test_only_one_retry_and_never_on_a_fresh_connection(run) -> None:
    async def drop(_request: Request) -> None:
        return None

    async def body() -> None:
        async with FakeTritonHttp() as server:
            client = TritonHttpClient(server.url, timeout_s=5)
            server.handler = drop
            with pytest.raises(ModelNotReady) as fresh:
                await client.infer("m", 1, TENSORS, ["y"])
            assert fresh.value.headers == {"Retry-After": "1"}
            assert len(server.requests) == 1, "a request on a fresh connection was retried"
            server.handler = server.answer
            await client.infer("m", 1, TENSORS, ["y"])
            server.handler = drop
            with pytest.raises(ModelNotReady):
                await client.infer("m", 1, TENSORS, ["y"])
            assert len(server.requests) == 4 and server.accepted == 3  # the reused one, then one retry
            assert client.open_connections == 0
            await client.close()

    run(body)


def test_a_connection_the_server_closed_while_idle_is_not_used(run, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.upstream")

    async def body() -> None:
        async with FakeTritonHttp() as server:
            client = TritonHttpClient(server.url, timeout_s=5)
            await client.infer("m", 1, TENSORS, ["y"])
            for writer in server._writers:
                writer.close()
            await asyncio.sleep(0.05)  # the client's socket sees the FIN while idle
            check_outputs(await client.infer("m", 1, TENSORS, ["y", "idx"]))
            assert server.accepted == 2 and len(server.requests) == 2
            assert not [r for r in caplog.records if "retrying" in r.getMessage()], "the closed socket was tried"
            await client.close()

    run(body)


def test_connection_close_is_honoured(run) -> None:
    async def close_after(request: Request) -> bytes | None:
        return infer_answer(request).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)

    async def body() -> None:
        async with FakeTritonHttp() as server:
            server.handler = close_after
            client = TritonHttpClient(server.url, timeout_s=5)
            for _ in range(3):
                check_outputs(await client.infer("m", 1, TENSORS, ["y", "idx"]))
            assert server.accepted == 3
            await eventually(lambda: server.client_closed == 3)
            await client.close()

    run(body)


# --- failures ------------------------------------------------------------------------------------


def test_timeout_is_504_and_that_connection_is_closed(run) -> None:
    async def body() -> None:
        async with FakeTritonHttp() as server:
            client = TritonHttpClient(server.url, timeout_s=0.2)
            await client.infer("m", 1, TENSORS, ["y"])
            server.handler = server.hang
            with pytest.raises(UpstreamTimeout):
                await client.infer("m", 1, TENSORS, ["y"])
            await eventually(lambda: server.client_closed == 1)
            assert client.open_connections == 0
            server.handler = server.answer
            check_outputs(await client.infer("m", 1, TENSORS, ["y", "idx"]))
            assert server.accepted == 2, "the timed-out connection was reused"
            await client.close()

    run(body)


def test_waiting_for_a_busy_pool_counts_against_the_timeout(run) -> None:
    async def body() -> None:
        async with FakeTritonHttp() as server:
            server.handler = server.hang
            client = TritonHttpClient(server.url, timeout_s=0.2, max_connections=1)
            started = asyncio.get_running_loop().time()
            results = await asyncio.gather(
                *(client.infer("m", 1, TENSORS, ["y"]) for _ in range(2)), return_exceptions=True
            )
            assert [type(r) for r in results] == [UpstreamTimeout, UpstreamTimeout]
            # waiting did not start a second deadline: both end at ~0.2 s, not 0.2 + 0.2
            assert asyncio.get_running_loop().time() - started < 0.35
            assert client.open_connections == 0
            await client.close()

    run(body)


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (400, "Request for unknown model: 'm' is not found", ModelNotReady),
        (404, "Request for unknown model: 'm' version 1 is not found", ModelNotReady),
        (400, "Request for unknown model: 'm' has no available versions", ModelNotReady),
        (503, "Server not ready", ModelNotReady),
        (400, "[request id: r] unexpected shape for input 'x' for model 'm'", UpstreamError),
        (500, "onnxruntime: failed to run", UpstreamError),
        (503, "busy", UpstreamError),
    ],
)
def test_triton_errors_become_gateway_errors(
    run, caplog, status: int, message: str, expected: type[GatewayError]
) -> None:
    async def refuse(_request: Request) -> bytes:
        return error(status, message)

    async def body() -> None:
        async with FakeTritonHttp() as server:
            server.handler = refuse
            client = TritonHttpClient(server.url, timeout_s=5)
            for _ in range(2):
                with pytest.raises(expected) as caught:
                    await client.infer("m", 1, TENSORS, ["y"])
                assert message not in caught.value.message, "Triton's message reached the client"
                if expected is ModelNotReady:
                    assert caught.value.headers == {"Retry-After": "1"}
            assert server.accepted == 1, "an error answer closed a healthy keep-alive connection"
            await client.close()

    run(body)
    assert any(message in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert not any("binary_data_size" in r.getMessage() for r in caplog.records), "the payload was logged"


def test_unreachable_triton_is_503_and_not_ready(run) -> None:
    async def body() -> None:
        client = TritonHttpClient(f"127.0.0.1:{free_port()}", timeout_s=5)
        with pytest.raises(ModelNotReady) as caught:
            await client.infer("m", 1, TENSORS, ["y"])
        assert caught.value.status_code == 503 and caught.value.headers == {"Retry-After": "1"}
        assert await client.server_ready() is False
        assert await client.model_ready("m", 1) is False
        assert client.open_connections == 0
        await client.close()

    run(body)


def test_readiness_is_false_on_errors_and_hangs(run) -> None:
    async def not_ready(request: Request) -> bytes:
        if request.path.endswith("/ready") and "/versions/1/" in request.path:
            return response(200)
        if request.path == "/v2/health/ready":
            await asyncio.sleep(3)  # longer than the 2 s readiness deadline
        return error(400, "Model version not ready")

    async def body() -> None:
        async with FakeTritonHttp() as server:
            server.handler = not_ready
            client = TritonHttpClient(server.url, timeout_s=5)
            assert await client.model_ready("m", 1) is True
            assert await client.model_ready("m", 2) is False
            assert await client.model_ready("a model/with?odd#chars", 2) is False
            assert server.requests[-1].path == "/v2/models/a%20model%2Fwith%3Fodd%23chars/versions/2/ready"
            started = asyncio.get_running_loop().time()
            assert await client.server_ready() is False
            assert 1.9 < asyncio.get_running_loop().time() - started < 2.5
            await client.close()

    run(body)


def test_cancelling_the_caller_closes_its_connection(run) -> None:
    async def body() -> None:
        async with FakeTritonHttp() as server:
            client = TritonHttpClient(server.url, timeout_s=5)
            await client.infer("m", 1, TENSORS, ["y"])
            server.handler = server.hang
            call = asyncio.create_task(client.infer("m", 1, TENSORS, ["y"]))
            await eventually(lambda: len(server.requests) == 2)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await eventually(lambda: server.client_closed == 1)
            assert client.open_connections == 0
            server.handler = server.answer
            check_outputs(await client.infer("m", 1, TENSORS, ["y", "idx"]))
            assert server.accepted == 2, "the connection of a cancelled call went back to the pool"
            await client.close()

    run(body)


def test_close_closes_idle_and_returning_connections(run) -> None:
    async def body() -> None:
        async with FakeTritonHttp() as server:
            client = TritonHttpClient(server.url, timeout_s=5, max_connections=2)
            await asyncio.gather(*(client.infer("m", 1, TENSORS, ["y"]) for _ in range(2)))
            assert server.accepted == 2
            server.handler = server.hang
            in_flight = asyncio.create_task(client.infer("m", 1, TENSORS, ["y", "idx"]))
            await eventually(lambda: server.in_flight == 1)
            await client.close()
            await eventually(lambda: server.client_closed == 1)  # the idle one, at once
            server.release.set()
            check_outputs(await in_flight)  # the call in flight still gets its answer
            await eventually(lambda: server.client_closed == 2)  # then its connection closes
            assert client.open_connections == 0
            with pytest.raises(ModelNotReady):
                await client.infer("m", 1, TENSORS, ["y"])
            assert await client.server_ready() is False
            assert server.accepted == 2

    run(body)


# --- construction --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [("triton:8000", "triton", 8000), ("http://10.0.0.1:9000/", "10.0.0.1", 9000), ("[::1]:8000", "::1", 8000)],
)
def test_urls(url: str, host: str, port: int) -> None:
    client = TritonHttpClient(url, timeout_s=1)
    assert (client.host, client.port) == (host, port)


@pytest.mark.parametrize("url", ["triton", "https://triton:8443", "triton:http", "triton:8000/v2"])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="Triton HTTP URL"):
        TritonHttpClient(url, timeout_s=1)


def test_make_client_follows_the_protocol_setting(run) -> None:
    async def body() -> None:
        http = make_client(GatewaySettings(triton_http_url="triton:8000", triton_max_connections=7))
        assert isinstance(http, TritonHttpClient)
        assert (http.host, http.port, http.max_connections, http.timeout_s) == ("triton", 8000, 7, 10.0)
        grpc = make_client(GatewaySettings(triton_protocol="grpc", triton_grpc_url="triton:8001"))
        assert isinstance(grpc, TritonClient) and grpc.url == "triton:8001"
        await http.close()
        await grpc.close()

    run(body)


def test_settings_defaults_and_limits(monkeypatch) -> None:
    settings = GatewaySettings()
    assert (settings.triton_protocol, settings.triton_http_url, settings.triton_max_connections) == (
        "http",
        "127.0.0.1:8000",
        64,
    )
    monkeypatch.setenv("MODELOPS_GATEWAY_TRITON_PROTOCOL", "grpc")
    monkeypatch.setenv("MODELOPS_GATEWAY_TRITON_MAX_CONNECTIONS", "8")
    assert (GatewaySettings().triton_protocol, GatewaySettings().triton_max_connections) == ("grpc", 8)
    for bad in ({"triton_protocol": "h2"}, {"triton_max_connections": 0}, {"triton_max_connections": 5000}):
        with pytest.raises(ValueError):
            GatewaySettings(**bad)
