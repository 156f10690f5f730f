"""The running gateway (started by ``modelops``' embedded stack) as a contract: validation, fuzzing,
drift against the training profile, and live quality from feedback. Real MLflow and Triton."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.testing import metric_value
from modelspec import ModelSchema
from tests.integration.conftest import RunningStack
from tests.unit.test_gateway_fuzz import check_answer, encode, from_json_schema, mutated_bodies

pytestmark = pytest.mark.integration

MODEL = "solar_ghi"
PSI_ALERT = 0.25  # deploy/prometheus/rules: ModelopsFeatureDriftHigh / ModelopsPredictionDriftHigh
SNAPSHOT_SCHEMA = Path(__file__).resolve().parents[1] / "snapshots" / "solar_ghi.schema.json"


def _records(frame, rows) -> list[dict[str, Any]]:
    out = []
    for _, row in frame.iloc[rows].iterrows():
        out.append({k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()})
    return out


def _metrics(stack: RunningStack) -> str:
    return httpx.get(f"{stack.gateway_url}/metrics", timeout=10).text


@pytest.mark.parametrize(
    ("change", "status", "code", "field"),
    [
        ({"dry_bulb_temp_c": "warm"}, 422, "invalid_input", "[1].dry_bulb_temp_c"),
        ({"pressure_mbar": None}, 422, "invalid_input", "[1].pressure_mbar"),
        ({"wind_direction": "up"}, 422, "invalid_input", "[1].wind_direction"),
        ({"humidity": 3}, 422, "invalid_input", "[1].humidity"),
        ({"wind_speed_ms": ...}, 422, "invalid_input", "[1].wind_speed_ms"),
    ],
)
def test_bad_records_are_4xx_naming_the_field(running_stack: RunningStack, change, status, code, field) -> None:
    good = running_stack.trained.schema.example_record()
    bad = {**good, **change}
    bad = {k: v for k, v in bad.items() if v is not ...}
    resp = httpx.post(f"{running_stack.gateway_url}/predict", json=[good, bad], timeout=30)
    assert resp.status_code == status, resp.text
    assert resp.json() == {"error": {"code": code, "message": resp.json()["error"]["message"], "field": field}}


def test_transport_errors(running_stack: RunningStack) -> None:
    url = f"{running_stack.gateway_url}/predict"
    record = running_stack.trained.schema.example_record()
    assert httpx.post(url, content=b"[]", headers={"content-type": "application/json"}).status_code == 422
    nan = json.dumps([{**record, "dry_bulb_temp_c": float("nan")}]).encode()
    resp = httpx.post(url, content=nan, headers={"content-type": "application/json"})
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "[0].dry_bulb_temp_c"
    assert httpx.post(url, content=json.dumps(record), headers={"content-type": "text/csv"}).status_code == 415
    assert httpx.post(url, json=[record] * 2000, timeout=30).status_code == 413
    flagged = httpx.post(url, json=[record, {**record, "pressure_mbar": 1100.0}], timeout=30).json()
    assert flagged["flags"] == [{"record": 1, "field": "pressure_mbar", "reason": "out_of_range"}]


def _outside_trained_ranges(schema: ModelSchema, body: Any) -> bool:
    """Whether a record of ``body`` has a number outside its feature's trained range (accepted and flagged)."""
    records = body if isinstance(body, list) else [body]
    return any(
        isinstance(record.get(f.name), int | float) and not f.minimum <= record[f.name] <= f.maximum
        for record in records
        for f in schema.numeric
    )


def test_fuzzing_the_real_stack_never_gives_a_null_or_an_unexplained_5xx(running_stack: RunningStack) -> None:
    """Valid bodies answer 200 with finite predictions; broken ones a 4xx.

    The one 5xx a valid body may get is ``502 non_finite_prediction``, and only when a value lies outside the
    trained range: the contract accepts those (flagged) up to the float32 limit, and the real model overflows
    on some (``precipitable_water_cm`` = 2.2e37 answered ``null`` in a 200 before the gateway checked).
    """
    url = f"{running_stack.gateway_url}/predict"
    served = running_stack.trained.schema

    def _explained_non_finite(resp: httpx.Response, body: Any) -> bool:
        if resp.status_code != 502 or resp.json()["error"]["code"] != "non_finite_prediction":
            return False
        assert _outside_trained_ranges(served, body), f"{body!r}: {resp.text}"
        assert "outside the trained ranges" in resp.json()["error"]["message"], resp.text
        return True

    spec = httpx.get(f"{running_stack.gateway_url}/openapi.json").json()
    schema = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    fuzz = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    with httpx.Client(timeout=30, headers={"content-type": "application/json"}) as client:

        @fuzz
        @given(from_json_schema(schema))
        def valid(body: Any) -> None:
            resp = client.post(url, content=encode(body))
            if _explained_non_finite(resp, body):
                return
            assert resp.status_code == 200, f"{body!r}: {resp.text}"
            predictions = resp.json()["predictions"]
            assert all(isinstance(v, float) and math.isfinite(v) for p in predictions for v in p.values()), resp.text

        @fuzz
        @given(mutated_bodies(schema) | st.binary(max_size=100))
        def broken(body: Any) -> None:
            raw = body if isinstance(body, bytes) else encode(body)
            resp = client.post(url, content=raw)
            if not _explained_non_finite(resp, body):  # a mutation may leave the body valid
                check_answer(resp.status_code, resp.text, body)

        valid()
        broken()


def test_shifted_inputs_raise_drift_above_the_threshold_and_unshifted_do_not(running_stack: RunningStack) -> None:
    trained = running_stack.trained
    version = str(trained.versions[0])
    rng = np.random.default_rng(5)
    rows = rng.choice(len(trained.frame), size=1000, replace=False)
    url = f"{running_stack.gateway_url}/predict"
    # the default window is 1000 records: one request of 1000 replaces it whole
    assert httpx.post(url, json=_records(trained.frame, rows), timeout=60).status_code == 200
    text = _metrics(running_stack)
    features = [f.name for f in trained.schema.features]
    calm = {
        f: metric_value(text, "modelops_gateway_feature_drift_psi", model=MODEL, version=version, feature=f)
        for f in features
    }
    assert all(v is not None and v < PSI_ALERT for v in calm.values()), calm
    prediction = metric_value(
        text, "modelops_gateway_prediction_drift_psi", model=MODEL, version=version, output="ghi_wm2"
    )
    assert prediction is not None and prediction < PSI_ALERT

    shifted = _records(trained.frame, rows)
    for record in shifted:
        record["dry_bulb_temp_c"] += 15.0  # a heat wave the model never saw
    assert httpx.post(url, json=shifted, timeout=60).status_code == 200
    text = _metrics(running_stack)
    drift = metric_value(
        text, "modelops_gateway_feature_drift_psi", model=MODEL, version=version, feature="dry_bulb_temp_c"
    )
    assert drift is not None and drift > PSI_ALERT
    for other in ("pressure_mbar", "wind_direction", "ceiling_height_m"):
        value = metric_value(text, "modelops_gateway_feature_drift_psi", model=MODEL, version=version, feature=other)
        assert value is not None and value < PSI_ALERT, (other, value)
    flags = metric_value(
        text, "modelops_gateway_feature_flags_total", model=MODEL, version=version, feature="dry_bulb_temp_c"
    )
    assert flags and flags > 0, "values above the trained maximum were not flagged"


def test_contradicting_outcomes_move_live_quality_past_its_threshold(running_stack: RunningStack) -> None:
    trained = running_stack.trained
    version = str(trained.versions[0])
    url = running_stack.gateway_url
    rows = trained.test_index[:300]
    labels = {"model": MODEL, "version": version, "metric": "rmse"}

    def predict_and_report(truth_of) -> None:
        body = httpx.post(f"{url}/predict", json=_records(trained.frame, rows), timeout=60).json()
        outcomes = [{"ghi_wm2": float(v)} for v in truth_of(body)]
        resp = httpx.post(f"{url}/feedback", json={"request_id": body["request_id"], "outcomes": outcomes}, timeout=30)
        assert resp.status_code == 200, resp.text
        assert resp.json()["version"] == int(version)

    # the measured irradiance: live quality close to what the version was gated on
    predict_and_report(lambda _body: trained.target[rows])
    text = _metrics(running_stack)
    threshold = metric_value(text, "modelops_gateway_live_quality_alert_threshold", **labels)
    trained_rmse = metric_value(text, "modelops_gateway_trained_quality", **labels)
    live = metric_value(text, "modelops_gateway_live_quality", **labels)
    assert threshold and trained_rmse and live is not None
    assert live < threshold, (live, trained_rmse, threshold)
    # outcomes that contradict the predictions
    for _ in range(3):
        predict_and_report(lambda body: [p["ghi_wm2"] + 400.0 for p in body["predictions"]])
    live = metric_value(_metrics(running_stack), "modelops_gateway_live_quality", **labels)
    assert live is not None and live > threshold, (live, threshold)

    unknown = httpx.post(f"{url}/feedback", json={"request_id": "nobody-asked", "outcomes": [None]})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_request_id"


def test_the_documented_contract_is_the_served_one(running_stack: RunningStack) -> None:
    """docs/contract.md is generated from tests/snapshots/solar_ghi.schema.json (a unit test checks that);
    here: that schema is the one the stack serves."""
    settings = running_stack.settings
    version = running_stack.trained.versions[0]
    served = ModelSchema.model_validate_json(
        (settings.model_repository / MODEL / str(version) / "schema.json").read_bytes()
    )
    assert served == ModelSchema.model_validate_json(SNAPSHOT_SCHEMA.read_bytes()), (
        "the served schema changed: cp it to tests/snapshots/solar_ghi.schema.json and regenerate docs/contract.md"
    )
    # Triton's own metrics stay available next to the gateway's
    assert "nv_inference_request_success" in httpx.get(running_stack.triton_metrics_url, timeout=10).text
