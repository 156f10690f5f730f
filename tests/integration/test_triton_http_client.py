"""tritonio's clients against the stack's real Triton: the pooled HTTP client gives the same answers as the
gRPC and the blocking clients; readiness, unknown models and versions, Triton's own refusals (as tritonio
classifies them and as the gateway maps them), and the pool under concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import torch
import uvloop
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.errors import ModelNotReady, UpstreamError
from gateway.settings import GatewaySettings
from gateway.upstream import UpstreamClient, make_client
from modelspec import Routing
from registry.tabular import encode
from tests.integration.conftest import RunningStack
from tritonio.aio import TritonHttpClient
from tritonio.blocking import BlockingTritonClient
from tritonio.errors import Refused
from tritonio.grpc import TritonGrpcClient

pytestmark = pytest.mark.integration

MODEL = "solar_ghi"
T = TypeVar("T")


def _run(body: Callable[[], Awaitable[T]]) -> T:
    """Run on uvloop, the gateway's event loop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(asyncio.wait_for(body(), 120))


def _http(stack: RunningStack, **kwargs: Any) -> TritonHttpClient:
    return TritonHttpClient(f"{stack.settings.host}:{stack.settings.triton_http_port}", timeout_s=30, **kwargs)


def _champion(stack: RunningStack) -> int:
    routing = Routing.read(stack.settings.model_repository / MODEL)
    assert routing is not None and routing.champion is not None
    return routing.champion


def _tensors(stack: RunningStack, rows: int = 64) -> dict[str, np.ndarray]:
    trained = stack.trained
    numeric, categorical = encode(trained.frame.iloc[trained.test_index[:rows]], trained.schema)
    schema = trained.schema
    return {schema.numeric_tensor: numeric, schema.categorical_tensor: categorical}


def _outputs(stack: RunningStack) -> list[str]:
    return [o.name for o in stack.trained.schema.outputs]


def test_http_and_grpc_clients_answer_the_same(running_stack: RunningStack) -> None:
    version = _champion(running_stack)
    tensors, outputs = _tensors(running_stack), _outputs(running_stack)
    assert np.isnan(tensors["numeric"]).any(), "the sample should include missing values"

    async def body() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        http = _http(running_stack)
        grpc = TritonGrpcClient(running_stack.stack.triton_grpc, timeout_s=30)
        try:
            by_http = await http.infer(MODEL, version, tensors, outputs, request_id="http-1")
            by_grpc = await grpc.infer(MODEL, version, tensors, outputs, request_id="grpc-1")
        finally:
            await http.close()
            await grpc.close()
        return by_http, by_grpc

    by_http, by_grpc = _run(body)
    s = running_stack.settings
    with BlockingTritonClient(f"{s.host}:{s.triton_http_port}", timeout_s=30) as blocking:
        by_blocking = blocking.infer(MODEL, version, tensors, outputs, request_id="blocking-1")
    assert set(by_http) == set(outputs) == set(by_grpc) == set(by_blocking)
    for name in outputs:
        assert by_http[name].dtype == by_grpc[name].dtype == by_blocking[name].dtype == np.float32
        assert by_http[name].shape == by_grpc[name].shape == by_blocking[name].shape == (64, 1)
        np.testing.assert_allclose(by_http[name], by_grpc[name], rtol=1e-6, atol=1e-5)
        np.testing.assert_array_equal(by_http[name], by_blocking[name])
    with torch.no_grad():
        module = running_stack.trained.module
        expected = module(torch.from_numpy(tensors["numeric"]), torch.from_numpy(tensors["categorical"])).numpy()
    got = by_http[outputs[0]][:, 0]
    assert np.abs(got - expected[:, 0]).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))


def test_readiness(running_stack: RunningStack) -> None:
    version = _champion(running_stack)

    async def body() -> list[bool]:
        http = _http(running_stack)
        try:
            return [
                await http.server_ready(),
                await http.model_ready(MODEL, version),
                await http.model_ready(MODEL, version + 1000),
                await http.model_ready("no_such_model", 1),
            ]
        finally:
            await http.close()

    assert _run(body) == [True, True, False, False]
    s = running_stack.settings
    with BlockingTritonClient(f"{s.host}:{s.triton_http_port}", timeout_s=30) as blocking:
        assert [
            blocking.server_ready(),
            blocking.model_ready(MODEL, version),
            blocking.model_ready(MODEL, version + 1000),
            blocking.model_ready("no_such_model", 1),
        ] == [True, True, False, False]
        index = blocking.repository_index()
    assert {"name": MODEL, "version": str(version), "state": "READY"}.items() <= next(
        e for e in index if e.get("name") == MODEL and e.get("version") == str(version)
    ).items()


def test_unknown_model_or_version_is_503_and_a_refused_tensor_is_502(running_stack: RunningStack) -> None:
    version = _champion(running_stack)
    tensors, outputs = _tensors(running_stack, rows=2), _outputs(running_stack)
    wrong_shape = {**tensors, "numeric": tensors["numeric"][:, :3]}
    calls = [
        ("no_such_model", 1, tensors),
        (MODEL, version + 1000, tensors),
        (MODEL, version, wrong_shape),
        (MODEL, version, tensors),  # errors left the keep-alive connection usable
    ]

    async def body() -> tuple[list[BaseException | dict[str, np.ndarray]], list[BaseException | dict[str, np.ndarray]]]:
        http = _http(running_stack, max_connections=1)
        gateway = UpstreamClient(http)  # what the gateway makes of the same answers
        try:
            raw: list[BaseException | dict[str, np.ndarray]] = []
            mapped: list[BaseException | dict[str, np.ndarray]] = []
            for model, ver, inputs in calls:
                try:
                    raw.append(await http.infer(model, ver, inputs, outputs))
                except Refused as exc:
                    raw.append(exc)
                try:
                    mapped.append(await gateway.infer(model, ver, inputs, outputs))
                except (ModelNotReady, UpstreamError) as exc:
                    mapped.append(exc)
            return raw, mapped
        finally:
            await http.close()

    raw, mapped = _run(body)
    # Triton's real refusals, as tritonio.errors.classify reads them
    assert [r.kind if isinstance(r, Refused) else "ok" for r in raw] == ["not_found", "not_found", "failed", "ok"]
    unknown, unknown_version, refused, ok = mapped
    assert isinstance(unknown, ModelNotReady) and unknown.headers == {"Retry-After": "1"}
    assert isinstance(unknown_version, ModelNotReady) and unknown_version.headers == {"Retry-After": "1"}
    assert isinstance(refused, UpstreamError) and "shape" not in refused.message
    assert isinstance(ok, dict) and ok[outputs[0]].shape == (2, 1)


def test_many_calls_in_flight_through_a_small_pool(running_stack: RunningStack) -> None:
    version = _champion(running_stack)
    tensors, outputs = _tensors(running_stack, rows=8), _outputs(running_stack)

    async def body() -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray], int]:
        http = _http(running_stack, max_connections=4)
        try:
            many = await asyncio.gather(*(http.infer(MODEL, version, tensors, outputs) for _ in range(64)))
            one = await http.infer(MODEL, version, tensors, outputs)
            return many, one, http.open_connections
        finally:
            await http.close()

    many, one, connections = _run(body)
    assert connections == 4
    for result in many:
        np.testing.assert_allclose(result[outputs[0]], one[outputs[0]], rtol=1e-6, atol=1e-5)


def test_the_gateway_predicts_the_same_over_http_and_grpc(running_stack: RunningStack, tmp_path: Path) -> None:
    """``make_client`` behind the real app: /predict answers alike with either protocol."""
    s = running_stack.settings
    records = [running_stack.trained.schema.example_record(), running_stack.trained.schema.example_record()]
    records[1]["ceiling_height_m"] = None
    answers = {}
    for protocol in ("http", "grpc"):
        settings = GatewaySettings(
            triton_protocol=protocol,
            triton_http_url=f"{s.host}:{s.triton_http_port}",
            triton_grpc_url=running_stack.stack.triton_grpc,
            model_repository=s.model_repository,
            default_model=MODEL,
            feedback_db_path=tmp_path / f"feedback-{protocol}.db",
            readiness_cache_s=0,
        )
        with TestClient(create_app(settings, make_client)) as client:
            assert client.get("/healthz/ready").status_code == 200
            resp = client.post("/predict", json=records)
            assert resp.status_code == 200, resp.text
            answers[protocol] = [p[_outputs(running_stack)[0]] for p in resp.json()["predictions"]]
    np.testing.assert_allclose(answers["http"], answers["grpc"], rtol=1e-6, atol=1e-5)
