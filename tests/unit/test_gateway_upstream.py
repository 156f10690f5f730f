"""Upstream failures map to 503/504/502 with the error shape; load is shed; shutdown drains."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from gateway.app import create_app
from gateway.errors import ModelNotReady, UpstreamError, UpstreamTimeout
from gateway.serving import ServedModels
from gateway.settings import GatewaySettings
from gateway.testing import MODEL, FakeTriton, demo_schema, factory, write_repository
from gateway.upstream import _translate
from modelspec import Routing, ServingOptions
from servers.processes import free_port

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
    error = _translate(InferenceServerException(message, status=status), "m", 3)
    assert type(error) is expected
    assert "onnxruntime" not in error.message, "upstream internals reach the client"
    if expected is ModelNotReady:
        assert error.headers["Retry-After"]


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
