"""Metrics, drift against the training profile, feedback and live quality, the audit log."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.audit import AuditEntry, AuditLog
from gateway.drift import VersionWindow
from gateway.settings import GatewaySettings
from gateway.testing import (
    MODEL,
    TRAINED_RMSE,
    FakeTriton,
    build_profile,
    demo_schema,
    factory,
    metric_value,
    tensors_of,
    training_records,
    write_repository,
)
from gateway.transport import new_request_id

PSI_ALERT = 0.25  # deploy/prometheus/rules: ModelopsFeatureDriftHigh


def _settings(tmp_path: Path, **overrides) -> GatewaySettings:
    values = {
        "model_repository": tmp_path / "repo",
        "default_model": MODEL,
        "drift_window": 500,
        "drift_min_records": 200,
        "feedback_db_path": tmp_path / "state" / "feedback.db",
        "audit_log_path": tmp_path / "state" / "audit.jsonl",
    }
    return GatewaySettings(**{**values, **overrides})


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    write_repository(tmp_path / "repo", champion=1, challenger=2)
    with TestClient(create_app(_settings(tmp_path), factory(FakeTriton()))) as c:
        yield c


def _psi(client: TestClient, feature: str, version: str = "1") -> float | None:
    text = client.get("/metrics").text
    return metric_value(text, "modelops_gateway_feature_drift_psi", model=MODEL, version=version, feature=feature)


def test_request_metrics_carry_model_and_version(client: TestClient) -> None:
    client.post("/predict", json=training_records(3))
    client.post("/predict", json={"temperature_c": "warm"})
    text = client.get("/metrics").text
    ok = {"model": MODEL, "version": "1", "route": "/predict"}
    assert metric_value(text, "modelops_gateway_requests_total", status="200", code="ok", **ok) == 1
    assert metric_value(text, "modelops_gateway_requests_total", status="422", code="invalid_input", **ok) == 1
    assert metric_value(text, "modelops_gateway_request_duration_seconds_count", **ok) == 2
    assert metric_value(text, "modelops_gateway_triton_duration_seconds_count", model=MODEL, version="1") == 1
    assert metric_value(text, "modelops_gateway_records_per_request_sum", model=MODEL) == 3
    assert metric_value(text, "modelops_gateway_in_flight_requests", route="/predict") == 0
    assert metric_value(text, "modelops_gateway_served_version", model=MODEL, alias="challenger") == 2
    client.post("/predict", json=[{**r, "temperature_c": 90.0} for r in training_records(2)])
    text = client.get("/metrics").text
    flags = {"model": MODEL, "version": "1", "feature": "temperature_c", "reason": "out_of_range"}
    assert metric_value(text, "modelops_gateway_feature_flags_total", **flags) == 2


def test_drift_rises_above_the_threshold_only_for_the_shifted_feature(client: TestClient) -> None:
    client.post("/predict", json=training_records(100, seed=1))
    assert _psi(client, "temperature_c") is None, "PSI exported from a window smaller than drift_min_records"
    for seed in range(2, 7):
        assert client.post("/predict", json=training_records(100, seed=seed)).status_code == 200
    text = client.get("/metrics").text
    assert metric_value(text, "modelops_gateway_drift_window_records", model=MODEL, version="1") == 500
    for feature in ("temperature_c", "pressure_mbar", "cloud_cover_tenths", "wind_direction", "station_type"):
        value = _psi(client, feature)
        assert value is not None and value < 0.1, (feature, value)
    prediction = metric_value(text, "modelops_gateway_prediction_drift_psi", model=MODEL, version="1", output="ghi_wm2")
    assert prediction is not None and prediction < 0.1
    for seed in range(10, 15):  # the window (500) now holds shifted traffic only
        client.post("/predict", json=training_records(100, seed=seed, shift={"temperature_c": 12.0}))
    assert (_psi(client, "temperature_c") or 0) > PSI_ALERT
    assert (_psi(client, "pressure_mbar") or 1) < 0.1
    text = client.get("/metrics").text
    shifted = metric_value(text, "modelops_gateway_prediction_drift_psi", model=MODEL, version="1", output="ghi_wm2")
    assert shifted is not None and shifted > prediction


def test_psi_of_the_training_distribution_is_small_and_missing_values_count() -> None:
    schema = demo_schema()
    window = VersionWindow(schema, build_profile(schema, 1), size=2000)
    numeric, categorical = tensors_of(schema, training_records(2000, seed=99))
    window.add(numeric, categorical, np.zeros((2000, 1), dtype=np.float32))
    assert max(window.feature_psi().values()) < 0.05
    numeric[:, 2] = np.nan  # every cloud cover missing: 10% in training
    window.add(numeric, categorical, np.zeros((2000, 1), dtype=np.float32))
    assert window.feature_psi()["cloud_cover_tenths"] > PSI_ALERT


def test_generated_request_ids_are_uuid7_time_ordered_and_unique(client: TestClient) -> None:
    first = client.post("/predict", json=training_records(1)).json()["request_id"]
    time.sleep(0.002)
    ids = [new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    for rid in (first, *ids[:50]):
        assert len(rid) == 32 and int(rid, 16) >= 0
        assert rid[12] == "7" and rid[16] in "89ab"  # version 7, RFC 9562 variant
    # the leading 48 bits are milliseconds: ids sort by creation time, to the millisecond
    assert first < ids[0] and ids[0][:12] <= ids[-1][:12]
    assert abs(int(ids[-1][:12], 16) - time.time() * 1000) < 5_000


def _feedback(client: TestClient, request_id: str, outcomes) -> object:
    return client.post("/feedback", json={"request_id": request_id, "outcomes": outcomes})


def test_feedback_joins_outcomes_and_moves_live_quality_past_its_threshold(client: TestClient) -> None:
    labels = {"model": MODEL, "version": "1", "metric": "rmse"}
    for seed in range(3):
        body = client.post("/predict", json=training_records(20, seed=seed)).json()
        truth = [{"ghi_wm2": p["ghi_wm2"] + 5.0} for p in body["predictions"]]  # close to the predictions
        resp = _feedback(client, body["request_id"], truth)
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"request_id": body["request_id"], "model": MODEL, "version": 1, "outcomes": 20}
    text = client.get("/metrics").text
    threshold = metric_value(text, "modelops_gateway_live_quality_alert_threshold", **labels)
    assert threshold == pytest.approx(TRAINED_RMSE * 1.5)
    assert metric_value(text, "modelops_gateway_trained_quality", **labels) == TRAINED_RMSE
    assert metric_value(text, "modelops_gateway_live_quality", **labels) == pytest.approx(5.0, abs=0.01)
    # outcomes that contradict the predictions
    for seed in range(3, 9):
        body = client.post("/predict", json=training_records(20, seed=seed)).json()
        truth = [{"ghi_wm2": p["ghi_wm2"] + 300.0} for p in body["predictions"]]
        assert _feedback(client, body["request_id"], truth).status_code == 200
    text = client.get("/metrics").text
    live = metric_value(text, "modelops_gateway_live_quality", **labels)
    assert live is not None and live > threshold
    assert metric_value(text, "modelops_gateway_live_quality_outcomes", model=MODEL, version="1") == 180


def test_feedback_errors_are_clear_4xx(client: TestClient) -> None:
    body = client.post("/predict", json=training_records(2), headers={"x-request-id": "order-42"}).json()
    assert body["request_id"] == "order-42"
    cases = [
        ({"request_id": "never-seen", "outcomes": [None]}, 404, "unknown_request_id", "request_id"),
        ({"request_id": "order-42", "outcomes": [{"ghi_wm2": 1.0}]}, 422, "invalid_input", "outcomes"),
        ({"request_id": "order-42", "outcomes": [{"ghi_wm3": 1.0}, None]}, 422, "invalid_input", "outcomes[0]"),
        ({"request_id": "order-42", "outcomes": [None, {"ghi_wm2": "x"}]}, 422, "invalid_input", "outcomes[1].ghi_wm2"),
        ({"request_id": "order-42", "outcomes": [None, None]}, 422, "invalid_input", "outcomes"),
        ({"request_id": "../../etc", "outcomes": [None]}, 422, "invalid_input", "request_id"),
        ({"request_id": "order-42"}, 422, "invalid_input", "outcomes"),
        ({"request_id": "order-42", "outcomes": [], "extra": 1}, 422, "invalid_input", "body"),
    ]
    for payload, status, code, field in cases:
        resp = client.post("/feedback", json=payload)
        assert resp.status_code == status, (payload, resp.text)
        assert resp.json()["error"] == {"code": code, "message": resp.json()["error"]["message"], "field": field}
    assert _feedback(client, "order-42", [{"ghi_wm2": 1.0}, None]).status_code == 200
    dup = _feedback(client, "order-42", [{"ghi_wm2": 1.0}, None])
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "duplicate_feedback"
    raw = client.post("/feedback", content=b"{", headers={"content-type": "application/json"})
    assert raw.status_code == 400


def test_feedback_reaches_any_worker_sharing_the_database(tmp_path: Path) -> None:
    write_repository(tmp_path / "repo")
    settings = _settings(tmp_path)
    with (
        TestClient(create_app(settings, factory(FakeTriton()))) as one,
        TestClient(create_app(settings, factory(FakeTriton()))) as two,
    ):
        body = one.post("/predict", json=training_records(3)).json()
        time.sleep(0.3)  # the writer batches
        outcomes = [{"ghi_wm2": 0.0}] * 3
        assert _feedback(two, body["request_id"], outcomes).status_code == 200
        assert _feedback(one, body["request_id"], outcomes).status_code == 409
        value = metric_value(one.get("/metrics").text, "modelops_gateway_live_quality_outcomes", model=MODEL)
        assert value == 3


def test_shadowed_requests_score_the_challenger_too(tmp_path: Path) -> None:
    write_repository(tmp_path / "repo", champion=1, challenger=2)
    settings = _settings(tmp_path, admin_keys=["admin-key-123"])
    with TestClient(create_app(settings, factory(FakeTriton()))) as client:
        client.put(
            f"/admin/models/{MODEL}/traffic", json={"shadow": True}, headers={"authorization": "Bearer admin-key-123"}
        )
        body = client.post("/predict", json=training_records(2)).json()
        time.sleep(0.3)
        truth = [{"ghi_wm2": p["ghi_wm2"]} for p in body["predictions"]]  # the champion is exact
        assert _feedback(client, body["request_id"], truth).status_code == 200
        text = client.get("/metrics").text
        assert metric_value(text, "modelops_gateway_live_quality", model=MODEL, version="1") == pytest.approx(
            0, abs=1e-3
        )
        # the fake challenger answers 1.0 higher than the champion
        assert metric_value(text, "modelops_gateway_live_quality", model=MODEL, version="2") == pytest.approx(
            1, abs=1e-3
        )


def _audit_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_request_gets_an_audit_line(tmp_path: Path) -> None:
    write_repository(tmp_path / "repo")
    settings = _settings(tmp_path)
    with TestClient(create_app(settings, factory(FakeTriton()))) as client:
        ok = client.post("/predict", json=training_records(2), headers={"x-request-id": "audit-1"})
        client.post("/predict", json={"temperature_c": "secret-ish"}, headers={"x-request-id": "audit-2"})
        client.post("/feedback", json={"request_id": "audit-1", "outcomes": [None, {"ghi_wm2": 3.0}]})
    lines = _audit_lines(tmp_path / "state" / "audit.jsonl")  # the lifespan flushed them
    first, second, third = lines
    assert first["request_id"] == "audit-1" and first["status"] == 200 and first["code"] == "ok"
    assert (first["model"], first["version"], first["alias"]) == (MODEL, 1, "champion")
    assert first["run_id"] == f"run{1:030d}" and first["records"] == 2 and first["latency_ms"] > 0
    assert len(first["input_sha256"]) == 64
    assert ok.json()["request_id"] == "audit-1"
    assert second["status"] == 422 and second["code"] == "invalid_input"
    assert "payload" not in second and "secret-ish" not in (tmp_path / "state" / "audit.jsonl").read_text()
    assert third["route"] == "/feedback" and third["request_id"] == "audit-1" and third["status"] == 200


def test_payloads_are_logged_only_when_enabled_and_pid_files(tmp_path: Path) -> None:
    write_repository(tmp_path / "repo")
    settings = _settings(tmp_path, audit_log_payloads=True, audit_log_path=tmp_path / "audit-{pid}.jsonl")
    records = training_records(1)
    with TestClient(create_app(settings, factory(FakeTriton()))) as client:
        client.post("/predict", json=records)
    (path,) = tmp_path.glob("audit-*.jsonl")
    assert path.name != "audit-{pid}.jsonl"
    assert _audit_lines(path)[0]["payload"] == records


def test_the_audit_log_rotates(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", max_bytes=4096, backups=2, payloads=False)
    log.start()
    entry = AuditEntry(time.time(), "r", "/predict", MODEL, 1, "champion", "run", 200, "ok", 0.001, 1, 0, b"{}")
    for _ in range(100):
        log.submit(entry)
    assert log.flush()
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    assert all(p.stat().st_size <= 4096 for p in tmp_path.iterdir())


MULTIPROCESS_SCRIPT = """
import sys
from pathlib import Path
from fastapi.testclient import TestClient
from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.testing import MODEL, FakeTriton, factory, training_records

root = Path(sys.argv[1])
settings = GatewaySettings(model_repository=root / "repo", default_model=MODEL, drift_min_records=10)
with TestClient(create_app(settings, factory(FakeTriton()))) as client:
    client.post("/predict", json=training_records(20))
    print(client.get("/metrics").text)
"""


def test_metrics_aggregate_across_workers_in_multiprocess_mode(tmp_path: Path) -> None:
    import subprocess
    import sys

    write_repository(tmp_path / "repo")
    (tmp_path / "prom").mkdir()
    env = {**__import__("os").environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    for _worker in range(2):  # two processes, one after the other, writing to the same folder
        out = subprocess.run(
            [sys.executable, "-c", MULTIPROCESS_SCRIPT, str(tmp_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
    ok = {"model": MODEL, "version": "1", "route": "/predict", "status": "200", "code": "ok"}
    assert metric_value(out.stdout, "modelops_gateway_requests_total", **ok) == 2
    assert metric_value(out.stdout, "modelops_gateway_served_version", model=MODEL, alias="champion") == 1
    assert metric_value(out.stdout, "modelops_gateway_drift_window_records", model=MODEL, version="1") == 20
