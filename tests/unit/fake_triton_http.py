"""A small HTTP/1.1 server that answers like Triton, for the unit tests of the Triton clients.

It speaks just enough of Triton's HTTP/REST protocol with the binary tensor data extension: it
doubles the input ``x`` into the output ``y`` and answers the row numbers as ``idx``. Each
connection has a reader that queues requests as they arrive and a responder that answers them in
order, so a client that pipelined would be seen (``max_per_connection``). The request is decoded
here with numpy alone, independently of :mod:`tritonio.codec`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import uvloop

LOOPS = ["asyncio", "uvloop"]
"""Every async test runs on the standard event loop and on uvloop (the gateway's)."""

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
    every = [{"name": name, "parameters": {"binary_data": True}} for name in values]  # none named: all of them
    for spec in header.get("outputs") or every:
        name = spec["name"]
        if name not in values:
            continue  # as a model exported without it
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


def runner(kind: str) -> Callable[[Callable[[], Awaitable[Any]]], Any]:
    """Run an async test body on a fresh event loop of ``kind`` (one of :data:`LOOPS`)."""
    factory = uvloop.new_event_loop if kind == "uvloop" else None

    def _run(body: Callable[[], Awaitable[Any]]) -> Any:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(asyncio.wait_for(body(), 20))

    return _run


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


UNREADABLE = {
    "bad-json": response(200, b"not json", {"Inference-Header-Content-Length": "8"}),
    "binary-without-length": response(
        200,
        b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [4, 3], "parameters": {"binary_data_size": 48}}]}',
    ),
    "bad-shape": response(200, b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [9, 9], "data": [1.0]}]}'),
    "missing-output": response(200, b'{"outputs": [{"name": "idx", "datatype": "INT64", "shape": [1], "data": [1]}]}'),
    "not-http": b"SSH-2.0-OpenSSH\r\n\r\n",
}
"""Answers to an infer call asking for ``y`` that a client cannot use."""


@contextlib.contextmanager
def serving_in_a_thread(handler: Handler | None = None) -> Iterator[FakeTritonHttp]:
    """A :class:`FakeTritonHttp` on its own event loop in a thread, for blocking clients.

    ``handler`` replaces its answers (it may call ``server.answer``); set ``server.handler`` later
    from the test's thread only between calls.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = FakeTritonHttp()
    if handler is not None:
        server.handler = handler
    asyncio.run_coroutine_threadsafe(server.__aenter__(), loop).result(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.__aexit__(None, None, None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
