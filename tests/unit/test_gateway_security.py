"""API keys, unauthenticated health and metrics only when configured, no path traversal, no secrets in logs."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.serving import ServedModels
from gateway.settings import GatewaySettings
from gateway.testing import MODEL, FakeTriton, demo_schema, factory, write_repository

KEY = "k-predict-0123456789"
ADMIN_KEY = "k-admin-0123456789"
RECORD = demo_schema().example_record()


def _settings(tmp_path: Path, **overrides) -> GatewaySettings:
    values = {
        "model_repository": tmp_path / "repo",
        "default_model": MODEL,
        "api_keys": [KEY],
        "admin_keys": [ADMIN_KEY],
        "audit_log_path": tmp_path / "audit.jsonl",
    }
    return GatewaySettings(**{**values, **overrides})


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write_repository(tmp_path / "repo")
    return tmp_path


@pytest.fixture
def client(repo: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(repo), factory(FakeTriton()))) as c:
        yield c


def test_predict_feedback_and_models_need_a_bearer_key(client: TestClient) -> None:
    for headers in (
        {},
        {"authorization": "Bearer nope-nope-nope"},
        {"authorization": KEY},
        {"authorization": "Bearer "},
    ):
        resp = client.post("/predict", json=RECORD, headers=headers)
        assert resp.status_code == 401, headers
        assert resp.json()["error"]["code"] == "unauthorized" and resp.headers["www-authenticate"] == "Bearer"
    # the admin key is not an API key
    assert client.post("/predict", json=RECORD, headers={"authorization": f"Bearer {ADMIN_KEY}"}).status_code == 401
    auth = {"authorization": f"Bearer {KEY}"}
    body = client.post("/predict", json=RECORD, headers=auth).json()
    assert client.post(f"/models/{MODEL}/predict", json=RECORD).status_code == 401
    assert client.post(f"/models/{MODEL}/predict", json=RECORD, headers=auth).status_code == 200
    feedback = {"request_id": body["request_id"], "outcomes": [{"ghi_wm2": 1.0}]}
    assert client.post("/feedback", json=feedback).status_code == 401
    assert client.post("/feedback", json=feedback, headers=auth).status_code == 200
    assert client.get("/models").status_code == 401
    assert MODEL in client.get("/models", headers=auth).json()["models"]
    # the API key is not an admin key
    assert client.get("/admin/traffic", headers=auth).status_code == 401


def test_health_and_metrics_are_open_by_default(client: TestClient) -> None:
    assert client.get("/healthz/live").status_code == 200
    assert client.get("/healthz/ready").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_health_and_metrics_can_require_a_key(repo: Path) -> None:
    settings = _settings(repo, public_health=False, public_metrics=False)
    with TestClient(create_app(settings, factory(FakeTriton()))) as client:
        for path in ("/healthz/live", "/healthz/ready", "/metrics"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"authorization": f"Bearer {KEY}"}).status_code == 200, path


def test_without_keys_there_is_no_authentication(repo: Path) -> None:
    with TestClient(create_app(_settings(repo, api_keys=[]), factory(FakeTriton()))) as client:
        assert client.post("/predict", json=RECORD).status_code == 200


def test_weak_keys_are_refused_at_startup() -> None:
    with pytest.raises(ValueError, match="8 characters"):
        GatewaySettings(api_keys=["short"])


@pytest.mark.parametrize(
    "name",
    ["..%2F..%2Fetc", "%2e%2e", "%2e%2e%2fetc%2fpasswd", "Demo_Model", "demo-model", "a" * 65, "demo_model%00", "nope"],
)
def test_model_names_are_validated(client: TestClient, name: str) -> None:
    resp = client.post(f"/models/{name}/predict", json=RECORD, headers={"authorization": f"Bearer {KEY}"})
    assert resp.status_code in (404, 422), (name, resp.status_code)
    assert set(resp.json()) == {"error"}
    assert "etc" not in resp.json()["error"]["message"]


def test_model_folders_outside_the_repository_are_not_served(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_repository(tmp_path / "elsewhere")
    repo.mkdir()
    (repo / "escaped").symlink_to(tmp_path / "elsewhere" / MODEL, target_is_directory=True)
    write_repository(repo)  # the real model
    (repo / MODEL / "9").symlink_to(tmp_path / "elsewhere" / MODEL / "1", target_is_directory=True)
    (repo / "Bad Name").mkdir()
    (repo / "Bad Name" / "routing.json").write_text('{"model_name": "x", "champion": 1}')
    served = ServedModels(repo)
    served.refresh()
    assert set(served.models()) == {MODEL}
    with pytest.raises(Exception, match="no such model version"):
        served.schema(MODEL, 9)
    assert served.profile(MODEL, 9) is None
    with pytest.raises(Exception, match="no such model"):
        served.schema("../elsewhere", 1)


def test_no_secrets_in_logs_settings_or_audit(repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = _settings(repo)
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())
    with TestClient(create_app(settings, factory(FakeTriton()))) as client:
        client.post("/predict", json=RECORD, headers={"authorization": f"Bearer {KEY}"})
        client.post("/predict", json=RECORD, headers={"authorization": "Bearer wrong-but-secret-1"})
        client.put(
            f"/admin/models/{MODEL}/traffic", json={"shadow": True}, headers={"authorization": f"Bearer {ADMIN_KEY}"}
        )
    logged = caplog.text + (repo / "audit.jsonl").read_text()
    for secret in (KEY, ADMIN_KEY, "wrong-but-secret-1"):
        assert secret not in logged


def test_the_embedded_stack_binds_to_loopback_by_default() -> None:
    from modelops.settings import StackSettings

    env = {k: v for k, v in os.environ.items() if k.startswith("MODELOPS_")}
    for name in env:
        os.environ.pop(name)
    try:
        assert StackSettings().host == "127.0.0.1"
        assert GatewaySettings().triton_grpc_url.startswith("127.0.0.1:")
    finally:
        os.environ.update(env)


def test_the_gateway_never_imports_torch_mlflow_or_the_registry() -> None:
    import subprocess
    import sys

    script = (
        "import sys, gateway.main, gateway.app, gateway.docs, gateway.testing\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mlflow', 'registry')))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
