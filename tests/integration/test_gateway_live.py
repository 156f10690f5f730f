"""Gateways built in-process with their own settings, against the stack's real Triton and model repository:
upstream failures, canary and shadow with a real challenger version, the audit log."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.testing import metric_value
from modelspec import ModelSchema, NumericFeature, Routing
from servers.processes import free_port
from tests.integration.conftest import RunningStack, Trained, train_and_promote

pytestmark = pytest.mark.integration

MODEL = "solar_ghi"
ADMIN = {"authorization": "Bearer admin-key-for-tests"}


def _settings(stack: RunningStack, tmp_path: Path, **overrides) -> GatewaySettings:
    values = {
        "triton_grpc_url": stack.stack.triton_grpc,
        "triton_http_url": stack.stack.triton_http,
        "model_repository": stack.settings.model_repository,
        "default_model": MODEL,
        "admin_keys": ["admin-key-for-tests"],
        "traffic_policy_path": tmp_path / "traffic.json",
        "feedback_db_path": tmp_path / "feedback.db",
        "audit_log_path": tmp_path / "audit.jsonl",
        "readiness_cache_s": 0,
        "routing_poll_s": 0.1,
    }
    return GatewaySettings(**{**values, **overrides})


def _record(stack: RunningStack) -> dict:
    return stack.trained.schema.example_record()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_timeout_is_504(running_stack: RunningStack, tmp_path: Path, protocol: str) -> None:
    settings = _settings(running_stack, tmp_path, triton_timeout_s=1e-4, triton_protocol=protocol)
    with TestClient(create_app(settings)) as client:
        resp = client.post("/predict", json=[_record(running_stack)] * 512)
        assert resp.status_code == 504, resp.text
        assert resp.json()["error"]["code"] == "upstream_timeout"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_unreachable_is_503_with_retry_after(running_stack: RunningStack, tmp_path: Path, protocol: str) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    settings = _settings(
        running_stack,
        tmp_path,
        triton_grpc_url=nowhere,
        triton_http_url=nowhere,
        triton_protocol=protocol,
        triton_timeout_s=2,
    )
    with TestClient(create_app(settings)) as client:
        resp = client.post("/predict", json=_record(running_stack))
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["code"] == "model_not_ready" and resp.headers["retry-after"]
        assert client.get("/healthz/ready").status_code == 503


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_rejecting_the_request_is_502(running_stack: RunningStack, tmp_path: Path, protocol: str) -> None:
    """A repository whose schema has one column too many: the real Triton refuses the tensor."""
    source = running_stack.settings.model_repository / MODEL
    version = running_stack.trained.versions[0]
    repo = tmp_path / "repo"
    shutil.copytree(source / str(version), repo / MODEL / str(version), ignore=shutil.ignore_patterns("model.*"))
    shutil.copy(source / "routing.json", repo / MODEL / "routing.json")
    schema_path = repo / MODEL / str(version) / "schema.json"
    schema = ModelSchema.model_validate_json(schema_path.read_bytes())
    extra = NumericFeature(name="bogus", minimum=0, maximum=1, nullable=True, example=0.5)
    schema_path.write_text(schema.model_copy(update={"features": [*schema.features, extra]}).model_dump_json())
    settings = _settings(running_stack, tmp_path, model_repository=repo, triton_protocol=protocol)
    with TestClient(create_app(settings)) as client:
        resp = client.post("/predict", json=_record(running_stack))
        assert resp.status_code == 502, resp.text
        assert resp.json()["error"] == {
            "code": "upstream_error",
            "message": resp.json()["error"]["message"],
            "field": None,
        }


@pytest.fixture(scope="module")
def challenger(running_stack: RunningStack) -> Iterator[int]:
    """A second registered version behind the alias challenger, loaded in Triton by the sync controller."""
    from mlflow import MlflowClient

    rs = running_stack.stack.registry_settings()
    version = train_and_promote(rs, Trained(), seed=11)
    client = MlflowClient(rs.tracking_uri)
    client.set_registered_model_alias(MODEL, "challenger", str(version))
    deadline = time.monotonic() + 90
    routing = None
    while time.monotonic() < deadline:
        routing = Routing.read(running_stack.settings.model_repository / MODEL)
        if routing is not None and routing.challenger == version:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the sync controller did not serve the challenger: {routing}")
    try:
        yield version
    finally:
        client.delete_registered_model_alias(MODEL, "challenger")


def test_canary_and_shadow_with_a_real_challenger(running_stack: RunningStack, challenger: int, tmp_path: Path) -> None:
    champion = running_stack.trained.versions[0]
    records = [_record(running_stack)] * 3
    with TestClient(create_app(_settings(running_stack, tmp_path))) as client:
        put = client.put(f"/admin/models/{MODEL}/traffic", json={"canary_share": 1.0}, headers=ADMIN)
        assert put.status_code == 200
        body = client.post("/predict", json=records, headers={"x-request-id": "canary-1"}).json()
        assert body["model"] == {"name": MODEL, "version": challenger, "alias": "challenger"}

        client.put(f"/admin/models/{MODEL}/traffic", json={"canary_share": 0.0, "shadow": True}, headers=ADMIN)
        body = client.post("/predict", json=records, headers={"x-request-id": "shadow-1"}).json()
        assert body["model"] == {"name": MODEL, "version": champion, "alias": "champion"}
        labels = {"model": MODEL, "champion_version": str(champion), "challenger_version": str(challenger)}
        deadline = time.monotonic() + 10
        count = None
        while time.monotonic() < deadline and not count:
            text = client.get("/metrics").text
            count = metric_value(text, "modelops_gateway_shadow_disagreement_count", **labels)
            time.sleep(0.1)
        assert count == 3
        total = metric_value(text, "modelops_gateway_shadow_disagreement_sum", **labels)
        assert total is not None and total > 0, "two differently seeded versions agree exactly"
        assert metric_value(text, "modelops_gateway_canary_share", model=MODEL) == 0.0
        assert metric_value(text, "modelops_gateway_shadow_enabled", model=MODEL) == 1.0
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    by_id = {line["request_id"]: line for line in lines}
    routing = Routing.read(running_stack.settings.model_repository / MODEL)
    assert routing is not None
    assert by_id["canary-1"]["alias"] == "challenger" and by_id["canary-1"]["version"] == challenger
    assert by_id["canary-1"]["run_id"] == routing.challenger_run_id
    assert by_id["shadow-1"]["run_id"] == routing.champion_run_id and by_id["shadow-1"]["status"] == 200
