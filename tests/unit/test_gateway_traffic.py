"""Canary and shadow: runtime-configurable, visible in /metrics, shadow off the client's path."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.testing import MODEL, FakeTriton, factory, metric_value, training_records, write_repository

ADMIN = {"authorization": "Bearer admin-key-123"}
RECORDS = training_records(4, seed=3)


def _settings(tmp_path: Path, **overrides) -> GatewaySettings:
    values = {
        "model_repository": tmp_path / "repo",
        "default_model": MODEL,
        "admin_keys": ["admin-key-123"],
        "traffic_policy_path": tmp_path / "state" / "traffic.json",
        "routing_poll_s": 0.05,
    }
    return GatewaySettings(**{**values, **overrides})


@pytest.fixture
def fake() -> FakeTriton:
    return FakeTriton()


@pytest.fixture
def client(tmp_path: Path, fake: FakeTriton) -> Iterator[TestClient]:
    write_repository(tmp_path / "repo", champion=1, challenger=2)
    with TestClient(create_app(_settings(tmp_path), factory(fake))) as c:
        yield c


def _policy(client: TestClient, **policy) -> None:
    resp = client.put(f"/admin/models/{MODEL}/traffic", json=policy, headers=ADMIN)
    assert resp.status_code == 200, resp.text


def _versions(client: TestClient, n: int) -> list[tuple[int, str]]:
    out = []
    for _ in range(n):
        body = client.post("/predict", json=RECORDS).json()
        out.append((body["model"]["version"], body["model"]["alias"]))
    return out


def test_without_a_policy_the_champion_answers(client: TestClient) -> None:
    assert set(_versions(client, 20)) == {(1, "champion")}
    metrics = client.get("/metrics").text
    assert f'modelops_gateway_canary_share{{model="{MODEL}"}} 0.0' in metrics


def test_canary_share_goes_to_the_challenger_and_the_response_says_so(client: TestClient) -> None:
    _policy(client, canary_share=1.0)
    resp = client.post("/predict", json=RECORDS)
    assert resp.json()["model"] == {"name": MODEL, "version": 2, "alias": "challenger"}
    assert resp.headers["x-model-version"] == "2" and resp.headers["x-model-alias"] == "challenger"
    _policy(client, canary_share=0.3)
    seen = _versions(client, 300)
    share = sum(1 for v in seen if v == (2, "challenger")) / len(seen)
    assert 0.2 < share < 0.4, share
    assert {v for v in seen} == {(1, "champion"), (2, "challenger")}
    metrics = client.get("/metrics").text
    assert f'modelops_gateway_canary_share{{model="{MODEL}"}} 0.3' in metrics
    assert f'code="ok",model="{MODEL}",route="/predict",status="200",version="2"' in metrics
    assert 'modelops_gateway_triton_duration_seconds_count{model="demo_model",version="2"}' in metrics


def test_canary_without_a_challenger_stays_on_the_champion(tmp_path: Path) -> None:
    write_repository(tmp_path / "repo", champion=1)
    with TestClient(create_app(_settings(tmp_path), factory(FakeTriton()))) as client:
        _policy(client, canary_share=1.0, shadow=True)
        assert set(_versions(client, 5)) == {(1, "champion")}


def test_shadow_mirrors_off_the_response_path_and_measures_disagreement(client: TestClient, fake: FakeTriton) -> None:
    fake.delays[2] = 0.8  # the challenger is slow: the client must not wait for it
    _policy(client, shadow=True)
    started = time.monotonic()
    resp = client.post("/predict", json=RECORDS, headers={"x-request-id": "shadowed-1"})
    elapsed = time.monotonic() - started
    assert resp.status_code == 200 and resp.json()["model"]["alias"] == "champion"
    assert elapsed < 0.5, f"the client waited {elapsed:.2f} s for the shadow call"
    assert ("demo_model", 2, 4, "shadowed-1:shadow") in fake.calls
    deadline = time.monotonic() + 5
    metrics = ""
    while time.monotonic() < deadline:
        metrics = client.get("/metrics").text
        if "modelops_gateway_shadow_disagreement_count" in metrics:
            break
        time.sleep(0.05)
    labels = {"model": MODEL, "champion_version": "1", "challenger_version": "2"}
    # the fake's versions differ by 1.0 on every record
    assert metric_value(metrics, "modelops_gateway_shadow_disagreement_count", **labels) == 4
    assert metric_value(metrics, "modelops_gateway_shadow_disagreement_bucket", le="0.5", **labels) == 0
    assert metric_value(metrics, "modelops_gateway_shadow_disagreement_bucket", le="2.5", **labels) == 4
    assert f'modelops_gateway_shadow_requests_total{{model="{MODEL}",outcome="ok",version="2"}} 1.0' in metrics
    assert f'modelops_gateway_shadow_enabled{{model="{MODEL}"}} 1.0' in metrics


def test_shadow_failures_never_reach_the_client(client: TestClient, fake: FakeTriton) -> None:
    fake.errors[2] = RuntimeError("challenger broke")
    _policy(client, shadow=True)
    assert client.post("/predict", json=RECORDS).status_code == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if 'outcome="error"' in client.get("/metrics").text:
            return
        time.sleep(0.05)
    pytest.fail("the failed shadow call was not counted")


def test_shadow_is_bounded(tmp_path: Path, fake: FakeTriton) -> None:
    write_repository(tmp_path / "repo", champion=1, challenger=2)
    fake.delays[2] = 1.0
    with TestClient(create_app(_settings(tmp_path, shadow_max_in_flight=2), factory(fake))) as client:
        _policy(client, shadow=True)
        for _ in range(5):
            assert client.post("/predict", json=RECORDS).status_code == 200
        assert 'outcome="dropped",version="2"} 3.0' in client.get("/metrics").text


def test_admin_api_needs_an_admin_key_and_valid_values(client: TestClient, tmp_path: Path) -> None:
    url = f"/admin/models/{MODEL}/traffic"
    assert client.put(url, json={"canary_share": 0.5}).status_code == 401
    assert (
        client.put(url, json={"canary_share": 0.5}, headers={"authorization": "Bearer wrong-key-1"}).status_code == 401
    )
    bad = client.put(url, json={"canary_share": 1.5}, headers=ADMIN)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "canary_share"
    assert client.put(url, json={"canary": 0.5}, headers=ADMIN).status_code == 422
    assert client.put("/admin/models/nope/traffic", json={}, headers=ADMIN).status_code == 404
    assert client.put("/admin/models/..%2F..%2Fetc/traffic", json={}, headers=ADMIN).status_code == 404
    _policy(client, canary_share=0.25, shadow=True)
    assert client.get("/admin/traffic", headers=ADMIN).json() == {
        "models": {MODEL: {"canary_share": 0.25, "shadow": True}}
    }
    assert client.get("/admin/traffic").status_code == 401
    assert (tmp_path / "state" / "traffic.json").exists()


def test_admin_api_is_off_without_admin_keys(tmp_path: Path) -> None:
    write_repository(tmp_path / "repo", champion=1, challenger=2)
    with TestClient(create_app(_settings(tmp_path, admin_keys=[]), factory(FakeTriton()))) as client:
        resp = client.put(f"/admin/models/{MODEL}/traffic", json={"canary_share": 1}, headers=ADMIN)
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "forbidden"


def test_the_policy_file_is_shared_by_every_worker(tmp_path: Path) -> None:
    """Two apps on one policy file stand for two uvicorn workers: a change on one reaches the other."""
    write_repository(tmp_path / "repo", champion=1, challenger=2)
    settings = _settings(tmp_path)
    with (
        TestClient(create_app(settings, factory(FakeTriton()))) as one,
        TestClient(create_app(settings, factory(FakeTriton()))) as two,
    ):
        _policy(one, canary_share=1.0)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and two.post("/predict", json=RECORDS).json()["model"]["version"] != 2:
            time.sleep(0.05)
        assert two.post("/predict", json=RECORDS).json()["model"]["alias"] == "challenger"
        # an operator can also edit the file by hand
        (tmp_path / "state" / "traffic.json").write_text('{"models": {"demo_model": {"canary_share": 0.0}}}')
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and one.post("/predict", json=RECORDS).json()["model"]["version"] != 1:
            time.sleep(0.05)
        assert one.post("/predict", json=RECORDS).json()["model"]["alias"] == "champion"
        assert 'canary_share{model="demo_model"} 0.0' in two.get("/metrics").text
