"""tritonio.blocking.BlockingTritonClient against the fake Triton (tests/unit/fake_triton_http.py) in a thread:
readiness, loading, the repository index, inference, keep-alive and its retry, failures."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from servers.processes import free_port
from tests.unit.fake_triton_http import TENSORS, FakeTritonHttp, Request, check_outputs, error, response
from tests.unit.fake_triton_http import serving_in_a_thread as serving
from tritonio.blocking import BlockingTritonClient
from tritonio.errors import BadResponse, DeadlineExceeded, MissingOutput, Refused, Unavailable

INDEX = [
    {"name": "m", "version": "1", "state": "READY"},
    {"name": "m", "version": "2", "state": "UNAVAILABLE", "reason": "unloaded"},
]


def control(server: FakeTritonHttp):
    """Answers of the repository API on top of the fake model."""

    async def handler(request: Request) -> bytes | None:
        if request.path == "/v2/repository/index":
            return response(200, json.dumps(INDEX).encode(), {"Content-Type": "application/json"})
        if request.path == "/v2/repository/models/m/load":
            return response(200)
        if request.path.endswith("/load"):
            return error(400, "failed to load 'broken': no version is available")
        return await server.answer(request)

    return handler


def test_control_calls_share_one_keep_alive_connection() -> None:
    with serving() as server:
        server.handler = control(server)
        with BlockingTritonClient(server.url, timeout_s=5) as client:
            assert client.server_ready() and client.model_ready("m", 1)
            client.load_model("m")
            assert client.repository_index() == INDEX
            with pytest.raises(Refused) as caught:
                client.load_model("broken")
            assert (caught.value.status, caught.value.message) == (
                400,
                "failed to load 'broken': no version is available",
            )
            check_outputs(client.infer("m", 1, TENSORS, ["y", "idx"], request_id="r-1"))
        assert server.accepted == 1, "a new connection per call"
        assert [r.path for r in server.requests] == [
            "/v2/health/ready",
            "/v2/models/m/versions/1/ready",
            "/v2/repository/models/m/load",
            "/v2/repository/index",
            "/v2/repository/models/broken/load",
            "/v2/models/m/versions/1/infer",
        ]
        infer = server.requests[-1]
        assert infer.method == "POST" and infer.headers["content-type"] == "application/octet-stream"
        assert json.loads(infer.body[: int(infer.headers["inference-header-content-length"])])["id"] == "r-1"


def test_infer_without_outputs_named_returns_all_and_a_missing_one_is_named() -> None:
    with serving() as server, BlockingTritonClient(server.url, timeout_s=5) as client:
        check_outputs(client.infer("m", 1, TENSORS))
        with pytest.raises(MissingOutput):
            client.infer("m", 1, TENSORS, ["y", "nope"])


def test_a_keep_alive_connection_triton_closed_is_retried_once() -> None:
    with serving() as server, BlockingTritonClient(server.url, timeout_s=5) as client:
        assert client.server_ready()

        async def drop_first(request: Request) -> bytes | None:
            return None if request.connection == 0 else await server.answer(request)

        server.handler = drop_first
        check_outputs(client.infer("m", 1, TENSORS, ["y", "idx"]))
        assert server.accepted == 2

        async def drop(_request: Request) -> None:
            return None

        server.handler = drop
        with pytest.raises(Unavailable):  # the retry broke too: no third try
            client.infer("m", 1, TENSORS, ["y"])
        assert server.accepted == 3


def test_refusals_timeouts_and_nonsense() -> None:
    async def refuse(_request: Request) -> bytes:
        return error(404, "Request for unknown model: 'm' is not found")

    with serving(refuse) as server, BlockingTritonClient(server.url, timeout_s=0.3) as client:
        with pytest.raises(Refused) as caught:
            client.infer("m", 1, TENSORS, ["y"])
        assert caught.value.kind == "not_found"
        assert client.model_ready("m", 1) is False

        server.handler = server.hang
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            client.infer("m", 1, TENSORS, ["y"])
        assert time.monotonic() - started < 2
        assert client.server_ready() is False

        async def garbage(_request: Request) -> bytes:
            return b"SSH-2.0-OpenSSH\r\n\r\n"

        server.handler = garbage
        with pytest.raises(BadResponse):
            client.infer("m", 1, TENSORS, ["y"])

        async def gzip(request: Request) -> bytes:
            return response(200, b"\x1f\x8b", {"Content-Encoding": "gzip"})

        server.handler = gzip
        with pytest.raises(BadResponse, match="compressed"):
            client.repository_index()


def test_unreachable_triton() -> None:
    client = BlockingTritonClient(f"127.0.0.1:{free_port()}", timeout_s=2)
    assert client.server_ready() is False
    with pytest.raises(Unavailable):
        client.infer("m", 1, {"x": np.ones((1, 1), np.float32)})
    with pytest.raises(Unavailable):
        client.load_model("m")
    with pytest.raises(ValueError, match="Triton HTTP URL"):
        BlockingTritonClient("https://triton:8443")
