"""tritonio.aio.TritonHttpClient against a small HTTP/1.1 server written for it: binary tensors, the pool, failures.

The server (tests/unit/fake_triton_http.py) answers like Triton; failures are the neutral
:mod:`tritonio.errors` here (what the gateway makes of them: tests/unit/test_gateway_upstream.py).
Every test runs on the standard event loop and on uvloop (the gateway's).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import numpy as np
import pytest

from servers.processes import free_port
from tests.unit.fake_triton_http import (
    LOOPS,
    TENSORS,
    UNREADABLE,
    FakeTritonHttp,
    Request,
    check_outputs,
    decode_request,
    error,
    eventually,
    infer_answer,
    response,
    runner,
)
from tritonio.aio import TritonHttpClient
from tritonio.errors import BadResponse, DeadlineExceeded, MissingOutput, Refused, Unavailable


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Iterator[Callable[[Callable[[], Awaitable[Any]]], Any]]:
    """Run an async test body on a fresh event loop of each kind."""
    yield runner(request.param)


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


@pytest.mark.parametrize("answer", list(UNREADABLE.values()), ids=list(UNREADABLE))
def test_unreadable_answers_are_bad_responses(run, answer: bytes) -> None:
    async def bad(_request: Request) -> bytes:
        return answer

    async def body() -> None:
        async with FakeTritonHttp() as server:
            server.handler = bad
            client = TritonHttpClient(server.url, timeout_s=5)
            with pytest.raises(BadResponse) as caught:
                await client.infer("m", 1, TENSORS, ["y"])
            if answer == UNREADABLE["missing-output"]:
                assert isinstance(caught.value, MissingOutput) and caught.value.name == "y"
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
            with pytest.raises(Unavailable):
                await client.infer("m", 1, TENSORS, ["y"])
            assert len(server.requests) == 1, "a request on a fresh connection was retried"
            server.handler = server.answer
            await client.infer("m", 1, TENSORS, ["y"])
            server.handler = drop
            with pytest.raises(Unavailable):
                await client.infer("m", 1, TENSORS, ["y"])
            assert len(server.requests) == 4 and server.accepted == 3  # the reused one, then one retry
            assert client.open_connections == 0
            await client.close()

    run(body)


def test_a_connection_the_server_closed_while_idle_is_not_used(run, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="tritonio.aio")

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


def test_timeout_is_deadline_exceeded_and_that_connection_is_closed(run) -> None:
    async def body() -> None:
        async with FakeTritonHttp() as server:
            client = TritonHttpClient(server.url, timeout_s=0.2)
            await client.infer("m", 1, TENSORS, ["y"])
            server.handler = server.hang
            with pytest.raises(DeadlineExceeded) as caught:
                await client.infer("m", 1, TENSORS, ["y"])
            assert caught.value.timeout_s == 0.2
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
            assert [type(r) for r in results] == [DeadlineExceeded, DeadlineExceeded]
            # waiting did not start a second deadline: both end at ~0.2 s, not 0.2 + 0.2
            assert asyncio.get_running_loop().time() - started < 0.35
            assert client.open_connections == 0
            await client.close()

    run(body)


REFUSALS = [
    (400, "Request for unknown model: 'm' is not found", "not_found"),
    (404, "Request for unknown model: 'm' version 1 is not found", "not_found"),
    (400, "Request for unknown model: 'm' has no available versions", "not_found"),
    (503, "Server not ready", "unavailable"),
    (400, "[request id: r] unexpected shape for input 'x' for model 'm'", "failed"),
    (500, "onnxruntime: failed to run", "failed"),
    (503, "busy", "failed"),
]
"""Triton's refusals and what they mean (the gateway's statuses for them: test_gateway_upstream.py)."""


@pytest.mark.parametrize(("status", "message", "kind"), REFUSALS)
def test_triton_refusals_carry_status_message_and_meaning(run, status: int, message: str, kind: str) -> None:
    async def refuse(_request: Request) -> bytes:
        return error(status, message)

    async def body() -> None:
        async with FakeTritonHttp() as server:
            server.handler = refuse
            client = TritonHttpClient(server.url, timeout_s=5)
            for _ in range(2):
                with pytest.raises(Refused) as caught:
                    await client.infer("m", 1, TENSORS, ["y"])
                assert (caught.value.status, caught.value.message, caught.value.kind) == (status, message, kind)
            assert server.accepted == 1, "an error answer closed a healthy keep-alive connection"
            await client.close()

    run(body)


def test_unreachable_triton_is_unavailable_and_not_ready(run) -> None:
    async def body() -> None:
        client = TritonHttpClient(f"127.0.0.1:{free_port()}", timeout_s=5)
        with pytest.raises(Unavailable):
            await client.infer("m", 1, TENSORS, ["y"])
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
            with pytest.raises(Unavailable):
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
