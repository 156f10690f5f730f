"""Metrics, drift against the training profile, feedback and live quality, the audit log."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import gateway.feedback as feedback_module
from gateway.app import create_app
from gateway.audit import AuditEntry, AuditLog
from gateway.drift import DriftMonitor, VersionWindow
from gateway.errors import DuplicateFeedback, UnknownRequestId
from gateway.feedback import FeedbackStore, StoredPrediction
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
from modelspec import (
    CategoricalFeature,
    CategoricalProfile,
    ModelSchema,
    NumericFeature,
    NumericProfile,
    OutputSpec,
    TrainingProfile,
)

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


def test_drift_psi_of_a_hand_built_window_matches_the_hand_computed_value() -> None:
    """One numeric feature, one categorical, one output, with profiles whose PSI is easy to work out.

    Numeric: edges [0, 10], shares [0.25, 0.5, 0.25] of the present values, 20 % missing, so the
    expected bins are [0.2, 0.4, 0.2 | missing 0.2]; the window holds -1, 5 x4, 10 x3, NaN x2, i.e.
    [0.1, 0.4, 0.3 | 0.2]: PSI = (0.1 - 0.2) ln(0.1 / 0.2) + (0.3 - 0.2) ln(0.3 / 0.2) = 0.1 ln 3.
    Categorical ["a", "b"] at [0.5, 0.5], no missing: expected [0.5, 0.5 | 0]; the window is
    a x8, b x2: (0.8 - 0.5) ln 1.6 + (0.2 - 0.5) ln 0.4 (the empty missing bin is floored on both sides).
    The output, edges [100] at [0.5, 0.5]: all ten predictions at 200 give [1e-4, 1, 1e-4 floored].
    """
    schema = ModelSchema(
        model_name="m",
        features=[
            NumericFeature(name="x", minimum=-5, maximum=20, example=1),
            CategoricalFeature(name="c", categories=["a", "b"], example="a"),
        ],
        outputs=[OutputSpec(name="y")],
    )
    profile = TrainingProfile(
        rows=100,
        numeric={
            "x": NumericProfile(edges=[0.0, 10.0], proportions=[0.25, 0.5, 0.25], missing_rate=0.2, mean=0, std=1)
        },
        categorical={"c": CategoricalProfile(proportions={"a": 0.5, "b": 0.5}, missing_rate=0.0)},
        predictions={"y": NumericProfile(edges=[100.0], proportions=[0.5, 0.5], missing_rate=0.0, mean=0, std=1)},
    )
    window = VersionWindow(schema, profile, size=10)
    numeric = np.array([[-1.0]] + [[5.0]] * 4 + [[10.0]] * 3 + [[np.nan]] * 2, dtype=np.float32)
    categorical = np.array([[0]] * 8 + [[1]] * 2, dtype=np.int64)
    window.add(numeric, categorical, np.full((10, 1), 200.0, dtype=np.float32))
    got = window.feature_psi()
    assert got["x"] == pytest.approx(0.1 * np.log(3.0), rel=1e-9)
    assert got["c"] == pytest.approx(0.3 * np.log(1.6) - 0.3 * np.log(0.4), rel=1e-9)
    eps = 1e-4
    expected_y = (eps - 0.5) * np.log(eps / 0.5) + (1 - 0.5) * np.log(1 / 0.5)  # the missing bin: 0 vs 0
    assert window.prediction_psi()["y"] == pytest.approx(expected_y, rel=1e-9)
    # and the exported gauges carry exactly these values
    monitor = DriftMonitor(window=10, min_records=10)
    monitor.observe("m", 1, schema, profile, numeric, categorical, np.full((10, 1), 200.0, dtype=np.float32))
    families = {
        f.name: {s.labels.get("feature", s.labels.get("output")): s.value for s in f.samples} for f in monitor.collect()
    }
    assert families["modelops_gateway_feature_drift_psi"]["x"] == pytest.approx(0.1 * np.log(3.0), rel=1e-9)
    assert families["modelops_gateway_prediction_drift_psi"]["y"] == pytest.approx(expected_y, rel=1e-9)


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


def test_a_repeated_request_id_keeps_the_first_prediction_and_its_one_report(client: TestClient) -> None:
    """Repeating an X-Request-ID neither resets the one report it takes nor replaces the stored prediction."""
    first = client.post("/predict", json=training_records(2), headers={"x-request-id": "dup-1"}).json()
    truth = [{"ghi_wm2": p["ghi_wm2"]} for p in first["predictions"]]
    assert _feedback(client, "dup-1", truth).status_code == 200
    again = client.post("/predict", json=training_records(2, seed=1), headers={"x-request-id": "dup-1"})
    assert again.status_code == 200 and again.json()["request_id"] == "dup-1"  # answered as usual
    time.sleep(0.3)  # let the writer store (or not) the second prediction
    dup = _feedback(client, "dup-1", truth)
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "duplicate_feedback", dup.text
    # another client reusing an id before its feedback does not replace the first prediction (2 records)
    client.post("/predict", json=training_records(2), headers={"x-request-id": "shared-1"})
    time.sleep(0.3)
    client.post("/predict", json=training_records(3), headers={"x-request-id": "shared-1"})
    time.sleep(0.3)
    resp = _feedback(client, "shared-1", [{"ghi_wm2": 1.0}, None])
    assert resp.status_code == 200, resp.text


def test_outcomes_beyond_the_float32_range_are_a_clear_422(client: TestClient) -> None:
    """1e200 is finite but its square is not: it would hide the version's live quality for the whole window."""
    client.post("/predict", json=training_records(2), headers={"x-request-id": "big-1"})
    for value in (1e200, -1e39):
        resp = _feedback(client, "big-1", [None, {"ghi_wm2": value}])
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"]["field"] == "outcomes[1].ghi_wm2"
        assert "float32" in resp.json()["error"]["message"]
    assert _feedback(client, "big-1", [None, {"ghi_wm2": 3.0e38}]).status_code == 200
    live = metric_value(client.get("/metrics").text, "modelops_gateway_live_quality", model=MODEL, version="1")
    assert live is not None and np.isfinite(live)


def _store(tmp_path: Path, **kwargs: float) -> FeedbackStore:
    store = FeedbackStore(
        tmp_path / "feedback.db", retention_s=kwargs.get("retention_s", 1000.0), window_s=kwargs.get("window_s", 1000.0)
    )
    store.start()
    return store


def _stored(request_id: str, values: list[float], created_at: float) -> StoredPrediction:
    return StoredPrediction(request_id, "m", 1, created_at, ("y",), np.array([[v] for v in values], dtype=np.float32))


def test_a_nan_stored_prediction_is_left_out_not_a_500(tmp_path: Path) -> None:
    """SQLite stores a NaN sum as NULL: the NOT NULL insert failed and the feedback answered 500 every time.

    ``submit`` now refuses a non-finite prediction; these rows stand for ones an older gateway stored.
    """
    store = _store(tmp_path)
    try:
        store.submit(_stored("nan-0", [float("nan")], time.time()))
        store.flush()
        with pytest.raises(UnknownRequestId):  # refused at submit: never stored
            store.join("nan-0", [{"y": 1.0}])
        store.write_batch([_stored("nan-1", [float("nan"), 10.0], time.time())])
        store.write_batch([_stored("nan-2", [float("nan")], time.time())])
        assert store.join("nan-1", [{"y": 1.0}, {"y": 13.0}]).outcomes == 1  # only the finite prediction
        assert store.join("nan-2", [{"y": 1.0}]).outcomes == 0
        with pytest.raises(DuplicateFeedback):
            store.join("nan-2", [{"y": 1.0}])
        [q] = store.quality()
        assert (q.n, q.sum_sq, q.sum_abs) == (1, 9.0, 3.0)
    finally:
        store.close()


def test_live_quality_is_the_rmse_or_mae_computed_by_hand(tmp_path: Path) -> None:
    """Errors 3 and -4: RMSE sqrt(12.5), MAE 3.5 (a constant offset could not tell them apart)."""
    store = _store(tmp_path)
    try:
        store.submit(_stored("q-1", [10.0, 20.0], time.time()))
        store.flush()
        store.join("q-1", [{"y": 13.0}, {"y": 16.0}])
        [q] = store.quality()
        assert (q.n, q.sum_sq, q.sum_abs) == (2, 25.0, 7.0)
        assert q.value("rmse") == pytest.approx(12.5**0.5, rel=1e-12)
        assert q.value("mae") == pytest.approx(3.5, rel=1e-12)
    finally:
        store.close()


def test_the_gateway_exports_the_rmse_of_uneven_errors(client: TestClient) -> None:
    body = client.post("/predict", json=training_records(2)).json()
    p = [r["ghi_wm2"] for r in body["predictions"]]
    assert _feedback(client, body["request_id"], [{"ghi_wm2": p[0] + 3.0}, {"ghi_wm2": p[1] - 4.0}]).status_code == 200
    live = metric_value(client.get("/metrics").text, "modelops_gateway_live_quality", model=MODEL, version="1")
    assert live == pytest.approx(12.5**0.5, rel=1e-4)  # float32 predictions: not exactly 3 and 4


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def _rows(store: FeedbackStore, table: str) -> int:
    with sqlite3.connect(store.path) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def test_the_quality_window_is_exact_and_old_outcomes_and_predictions_are_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outcomes at t0, t0+70 and t0+130 with a 100 s window, read at t0+150: the last two (one of them read from
    the raw outcomes of the minute the window starts in, one from the rollup); the tick deletes the rest."""
    t0 = 1_000_000_030.0  # 10 s into a rollup minute
    clock = _Clock(t0)
    monkeypatch.setattr(feedback_module, "time", clock)
    store = _store(tmp_path, window_s=100.0, retention_s=120.0)
    try:
        for i in range(3):
            store.submit(_stored(f"w-{i}", [0.0], t0))
        store.flush()
        for i, offset in enumerate((0.0, 70.0, 130.0)):
            clock.now = t0 + offset
            store.join(f"w-{i}", [{"y": float(i + 1)}])
        store.submit(_stored("late", [0.0], t0 + 130.0))
        store.flush()
        clock.now = t0 + 150.0
        [q] = store.quality()
        assert (q.n, q.sum_sq) == (2, 4.0 + 9.0)
        assert (_rows(store, "outcomes"), _rows(store, "outcome_rollup")) == (3, 3)
        store.tick()
        assert _rows(store, "outcomes") == 2, "outcomes past the quality window were kept"
        assert _rows(store, "outcome_rollup") == 2, "rollup minutes wholly past the window were kept"
        [q] = store.quality()
        assert (q.n, q.sum_sq) == (2, 13.0)
        # retention: the predictions made at t0 are older than 120 s, "late" is not
        assert _rows(store, "predictions") == 1, "predictions past retention were kept"
        with pytest.raises(UnknownRequestId):
            store.join("w-0", [{"y": 1.0}])
    finally:
        store.close()


def test_the_rollup_is_built_from_a_database_written_before_it(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.submit(_stored("b-1", [0.0, 0.0], time.time()))
    store.flush()
    store.join("b-1", [{"y": 1.0}, {"y": 2.0}])
    store.close()
    with sqlite3.connect(store.path) as conn:
        conn.execute("DELETE FROM outcome_rollup")
    reopened = _store(tmp_path)
    try:
        [q] = reopened.quality()
        assert (q.n, q.sum_sq, q.sum_abs) == (2, 5.0, 3.0)
    finally:
        reopened.close()
