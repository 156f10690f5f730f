"""Upstream failures map to 503/504/502 with the error shape (one mapping, gateway.upstream); load is shed;
shutdown drains."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.errors import GatewayError, ModelNotReady, UpstreamError, UpstreamTimeout
from gateway.serving import ServedModels
from gateway.settings import GatewaySettings
from gateway.testing import MODEL, FakeTriton, demo_schema, factory, write_repository
from gateway.upstream import FAILED, NOT_AVAILABLE, RETRY_AFTER, UpstreamClient, gateway_error, make_client
from modelspec import Routing, ServingOptions
from servers.processes import free_port
from tests.unit.fake_triton_http import LOOPS, TENSORS, UNREADABLE, FakeTritonHttp, Request, error, runner
from tritonio.aio import TritonHttpClient
from tritonio.errors import (
    BadResponse,
    DeadlineExceeded,
    MissingOutput,
    Refused,
    TritonError,
    Unavailable,
    from_grpc_status,
)
from tritonio.grpc import TritonGrpcClient

RECORD = demo_schema().example_record()


def _settings(tmp_path: Path, **overrides) -> GatewaySettings:
    return GatewaySettings(**{"model_repository": tmp_path / "repo", "default_model": MODEL, **overrides})


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write_repository(tmp_path / "repo")
    return tmp_path


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", UpstreamTimeout),
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", ModelNotReady),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'm' version 3 is not found", ModelNotReady),
        ("StatusCode.INTERNAL", "onnxruntime: invalid input shape", UpstreamError),
        (None, "something else", UpstreamError),
    ],
)
def test_triton_exceptions_become_gateway_errors(status, message, expected) -> None:
    error = gateway_error(from_grpc_status(status, message, 10.0), "m", 3)
    assert type(error) is expected
    assert "onnxruntime" not in error.message, "upstream internals reach the client"
    if expected is ModelNotReady:
        assert error.headers["Retry-After"]


@pytest.mark.parametrize(
    ("error", "expected", "status", "message"),
    [
        (Unavailable("connection refused"), ModelNotReady, 503, NOT_AVAILABLE),
        (DeadlineExceeded(0.2), UpstreamTimeout, 504, "the model did not answer in time; retry, or send fewer records"),
        (
            Refused(404, "Request for unknown model"),
            ModelNotReady,
            503,
            "model m version 3 is not loaded; retry shortly",
        ),
        (Refused(503, "Server not ready"), ModelNotReady, 503, NOT_AVAILABLE),
        (Refused(400, "unexpected shape for input 'x'"), UpstreamError, 502, FAILED),
        (BadResponse("not json"), UpstreamError, 502, FAILED),
        (MissingOutput("y"), UpstreamError, 502, "model m v3 returned no output 'y'; check its export"),
        (TritonError("anything else"), UpstreamError, 502, FAILED),
    ],
)
def test_one_mapping_of_triton_failures(caplog, error, expected, status: int, message: str) -> None:
    mapped = gateway_error(error, "m", 3)
    assert (type(mapped), mapped.status_code, mapped.message) == (expected, status, message)
    assert mapped.headers == ({"Retry-After": "1"} if status == 503 else {})
    assert [r.levelname for r in caplog.records if r.name == "gateway.upstream"] == ["WARNING"]


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (ModelNotReady("model server not available", headers={"Retry-After": "1"}), 503, "model_not_ready"),
        (UpstreamTimeout("too slow"), 504, "upstream_timeout"),
        (UpstreamError("failed"), 502, "upstream_error"),
        (RuntimeError("a bug with a secret inside"), 500, "internal_error"),
    ],
)
def test_upstream_failures_have_the_error_shape(repo: Path, error: Exception, status: int, code: str) -> None:
    fake = FakeTriton(error=error)
    with TestClient(create_app(_settings(repo), factory(fake)), raise_server_exceptions=False) as client:
        resp = client.post("/predict", json=RECORD, headers={"x-request-id": "req-1"})
        assert resp.status_code == status
        assert resp.json() == {"error": {"code": code, "message": resp.json()["error"]["message"], "field": None}}
        assert "secret" not in resp.text and "RuntimeError" not in resp.text
        if status == 503:
            assert resp.headers["retry-after"] == "1"
        metrics = client.get("/metrics").text
        assert f'code="{code}",model="{MODEL}",route="/predict",status="{status}",version="1"' in metrics


class _RefusingClient:
    """Fails every call the way the real client does: through :func:`gateway_error` (shared headers)."""

    async def close(self) -> None:
        return None

    async def server_ready(self) -> bool:
        return True

    async def model_ready(self, model: str, version: int) -> bool:
        return True

    async def infer(self, model: str, version: int, tensors, outputs, request_id: str = "") -> dict:
        raise gateway_error(Unavailable("connection refused"), model, version)


def test_each_error_answer_carries_its_own_request_id(repo: Path) -> None:
    # Errors built from one module-level headers dict once shared it: the first request's id
    # stuck to every later 503 of the process.
    with TestClient(create_app(_settings(repo), lambda _s: _RefusingClient())) as client:
        for rid in ("first-request", "second-request"):
            resp = client.post("/predict", json=RECORD, headers={"x-request-id": rid})
            assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
            assert resp.headers["x-request-id"] == rid
    a = ModelNotReady("x", headers=RETRY_AFTER)
    a.headers["x-request-id"] = "r"
    assert RETRY_AFTER == {"Retry-After": "1"} and ModelNotReady("y", headers=RETRY_AFTER).headers == RETRY_AFTER


class _StrictlyUnreadyTriton(FakeTriton):
    """Triton with a failed version somewhere: strict readiness false, the champion READY."""

    async def server_ready(self) -> bool:
        return False


def test_a_failed_version_elsewhere_in_triton_leaves_the_gateway_ready(repo: Path) -> None:
    # A candidate that failed to load stays UNAVAILABLE in Triton's index and turns its strict
    # readiness false (seen with the real Triton after a refused smoke test): the gateway, whose
    # champion is READY, must stay in its load balancer.
    with TestClient(create_app(_settings(repo, readiness_cache_s=0), factory(_StrictlyUnreadyTriton()))) as client:
        assert client.get("/healthz/ready").json() == {"status": "ready"}


def test_triton_not_ready_makes_readiness_false(repo: Path) -> None:
    fake = FakeTriton(ready=False)
    with TestClient(create_app(_settings(repo, readiness_cache_s=0), factory(fake))) as client:
        assert client.get("/healthz/ready").status_code == 503
        assert client.get("/healthz/live").status_code == 200
        fake.ready = True
        assert client.get("/healthz/ready").json() == {"status": "ready"}


def test_no_champion_yet_is_503_with_retry_after(tmp_path: Path) -> None:
    write_repository(tmp_path / "repo")
    (tmp_path / "repo" / MODEL / "routing.json").write_text(f'{{"model_name": "{MODEL}"}}')
    with TestClient(create_app(_settings(tmp_path), factory(FakeTriton()))) as client:
        resp = client.post("/predict", json=RECORD)
        assert resp.status_code == 503 and resp.headers["retry-after"]
        assert resp.json()["error"]["code"] == "model_not_ready"


def test_load_beyond_the_limit_is_shed_quickly(repo: Path) -> None:
    fake = FakeTriton(delay_s=0.6)
    with TestClient(create_app(_settings(repo, max_in_flight=3), factory(fake))) as client:

        def call(_i: int) -> tuple[int, float, str | None]:
            started = time.monotonic()
            resp = client.post("/predict", json=RECORD)
            return resp.status_code, time.monotonic() - started, resp.headers.get("retry-after")

        with ThreadPoolExecutor(max_workers=10) as pool:
            results = list(pool.map(call, range(10)))
        ok = [r for r in results if r[0] == 200]
        shed = [r for r in results if r[0] == 503]
        assert len(ok) == 3 and len(shed) == 7, results
        assert all(elapsed < 0.5 for _s, elapsed, _r in shed), "shedding waited for the busy requests"
        assert all(retry == "1" for _s, _e, retry in shed)
        assert 'code="overloaded"' in client.get("/metrics").text


def test_lifespan_shutdown_lets_in_flight_requests_finish(repo: Path) -> None:
    fake = FakeTriton(delay_s=0.5)
    client = TestClient(create_app(_settings(repo), factory(fake)))
    results: list[int] = []
    with client:
        worker = threading.Thread(target=lambda: results.append(client.post("/predict", json=RECORD).status_code))
        worker.start()
        time.sleep(0.15)
    # leaving the block ran the shutdown: it waited for the request before closing the client
    worker.join(5)
    assert results == [200]
    assert fake.closed


@pytest.fixture
def served_by_uvicorn(repo: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    env = dict(
        os.environ,
        MODELOPS_GATEWAY_MODEL_REPOSITORY=str(repo / "repo"),
        MODELOPS_GATEWAY_DEFAULT_MODEL=MODEL,
        MODELOPS_GATEWAY_SHUTDOWN_DRAIN_S="1.0",
        MODELOPS_GATEWAY_READINESS_CACHE_S="0",
        MODELOPS_FAKE_TRITON_DELAY_S="1.0",
    )
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "gateway.testing:create_fake_app", "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--timeout-graceful-shutdown", "5"], env=env, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("the gateway did not become ready")
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_sigterm_turns_readiness_false_first_and_in_flight_requests_finish(served_by_uvicorn) -> None:
    proc, url = served_by_uvicorn
    results: list[int] = []

    def predict() -> None:
        results.append(httpx.post(f"{url}/predict", json=RECORD, timeout=10).status_code)

    first = threading.Thread(target=predict)
    first.start()
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    ready = httpx.get(f"{url}/healthz/ready", timeout=2)
    assert ready.status_code == 503 and ready.json() == {"status": "draining"}
    second = threading.Thread(target=predict)  # still accepted while draining
    second.start()
    first.join(10)
    second.join(10)
    assert results == [200, 200]
    assert proc.wait(10) is not None
    log = proc.stderr.read().decode() if proc.stderr else ""
    assert "readiness is false" in log


def _record_serving(model_dir: Path, serving: ServingOptions | None) -> None:
    """Record the options the loaded config was rendered with in routing.json, as the sync controller does."""
    routing = Routing.read(model_dir)
    assert routing is not None
    routing.model_copy(update={"serving": serving}).write(model_dir)


def test_requests_larger_than_the_model_batch_are_split(repo: Path) -> None:
    _record_serving(repo / "repo" / MODEL, ServingOptions(max_batch_size=4))
    fake = FakeTriton()
    records = [{**RECORD, "temperature_c": float(i)} for i in range(10)]
    with TestClient(create_app(_settings(repo), factory(fake))) as client:
        resp = client.post("/predict", json=records, headers={"x-request-id": "big"})
        assert resp.status_code == 200
        assert sorted((rows, rid) for _m, _v, rows, rid in fake.calls) == [(2, "big.2"), (4, "big.0"), (4, "big.1")]
        split = [p["ghi_wm2"] for p in resp.json()["predictions"]]
        fake.calls.clear()
        singles = [client.post("/predict", json=r).json()["predictions"][0]["ghi_wm2"] for r in records]
        assert split == singles, "the chunks came back out of order"


def test_max_batch_size_follows_the_routing_document(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    write_repository(root)
    (root / MODEL / "config.pbtxt").write_text(f'name: "{MODEL}"\nmax_batch_size: 4\n')  # no longer parsed
    served = ServedModels(root)
    served.refresh()
    assert served.max_batch_size(MODEL) is None, "a routing without serving options: no splitting"
    assert served.max_batch_size("not_served") is None
    _record_serving(root / MODEL, ServingOptions(max_batch_size=64))
    served.refresh()
    assert served.max_batch_size(MODEL) == 64
    _record_serving(root / MODEL, ServingOptions(max_batch_size=8, dynamic_batching=False))
    served.refresh()
    assert served.max_batch_size(MODEL) == 8


def test_one_request_of_at_most_max_batch_size_rows_is_not_split(repo: Path) -> None:
    _record_serving(repo / "repo" / MODEL, ServingOptions(max_batch_size=10))
    fake = FakeTriton()
    with TestClient(create_app(_settings(repo), factory(fake))) as client:
        resp = client.post("/predict", json=[RECORD] * 10, headers={"x-request-id": "fits"})
        assert resp.status_code == 200 and [rows for _m, _v, rows, _rid in fake.calls] == [10]


# --- the gateway's client over a Triton that misbehaves (tests/unit/fake_triton_http.py) -----------


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Iterator[Callable[[Callable[[], Awaitable[Any]]], Any]]:
    """Run an async test body on a fresh event loop of each kind."""
    yield runner(request.param)


def _client(url: str, timeout_s: float = 5, max_connections: int = 64) -> UpstreamClient:
    return UpstreamClient(TritonHttpClient(url, timeout_s=timeout_s, max_connections=max_connections))


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
            client = _client(server.url)
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


@pytest.mark.parametrize("answer", list(UNREADABLE.values()), ids=list(UNREADABLE))
def test_unreadable_answers_are_upstream_errors(run, answer: bytes) -> None:
    async def bad(_request: Request) -> bytes:
        return answer

    async def body() -> None:
        async with FakeTritonHttp() as server:
            server.handler = bad
            client = _client(server.url)
            with pytest.raises(UpstreamError):
                await client.infer("m", 1, TENSORS, ["y"])
            await client.close()

    run(body)


def test_unreachable_triton_is_503_and_not_ready(run) -> None:
    async def body() -> None:
        client = make_client(GatewaySettings(triton_http_url=f"127.0.0.1:{free_port()}"))
        with pytest.raises(ModelNotReady) as caught:
            await client.infer("m", 1, TENSORS, ["y"])
        assert caught.value.status_code == 503 and caught.value.headers == {"Retry-After": "1"}
        assert await client.server_ready() is False
        assert await client.model_ready("m", 1) is False
        await client.close()

    run(body)


def test_a_dropped_answer_is_503_and_a_timeout_504(run) -> None:
    async def drop(_request: Request) -> None:
        return None

    async def body() -> None:
        async with FakeTritonHttp() as server:
            client = _client(server.url, timeout_s=0.2)
            server.handler = drop
            with pytest.raises(ModelNotReady) as fresh:
                await client.infer("m", 1, TENSORS, ["y"])
            assert fresh.value.headers == {"Retry-After": "1"}
            server.handler = server.hang
            with pytest.raises(UpstreamTimeout) as late:
                await client.infer("m", 1, TENSORS, ["y"])
            assert late.value.status_code == 504
            await client.close()
            with pytest.raises(ModelNotReady):  # closed: as unreachable
                await client.infer("m", 1, TENSORS, ["y"])

    run(body)


def test_make_client_follows_the_protocol_setting(run) -> None:
    async def body() -> None:
        http = make_client(GatewaySettings(triton_http_url="triton:8000", triton_max_connections=7))
        assert isinstance(http, UpstreamClient) and isinstance(http.client, TritonHttpClient)
        inner = http.client
        assert (inner.host, inner.port, inner.max_connections, inner.timeout_s) == ("triton", 8000, 7, 10.0)
        grpc = make_client(GatewaySettings(triton_protocol="grpc", triton_grpc_url="triton:8001"))
        assert isinstance(grpc, UpstreamClient) and isinstance(grpc.client, TritonGrpcClient)
        assert grpc.client.url == "triton:8001"
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
