"""The spine end to end: register -> serve in Triton -> /predict equals the torch model."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import psutil
import pytest
import torch

from modelspec import BUNDLE_FILES, Manifest, Routing
from modelspec.repository import validate_config
from registry.tabular import encode
from tests.integration.conftest import RunningStack, stack_settings

pytestmark = pytest.mark.integration


def _records(frame, rows) -> list[dict]:
    out = []
    for _, row in frame.iloc[rows].iterrows():
        rec = {}
        for name, value in row.items():
            rec[name] = None if isinstance(value, float) and np.isnan(value) else value
        out.append(rec)
    return out


def test_predictions_equal_the_torch_model(running_stack: RunningStack) -> None:
    trained = running_stack.trained
    rows = trained.test_index[:64]
    records = _records(trained.frame, rows)
    assert any(r["ceiling_height_m"] is None for r in records), "the sample should include missing values"
    resp = httpx.post(f"{running_stack.gateway_url}/predict", json=records, timeout=30)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == {"name": "solar_ghi", "version": trained.versions[0], "alias": "champion"}
    assert len(body["request_id"]) >= 16
    got = np.array([p["ghi_wm2"] for p in body["predictions"]])
    numeric, categorical = encode(trained.frame.iloc[rows], trained.schema)
    with torch.no_grad():
        expected = trained.module(torch.from_numpy(numeric), torch.from_numpy(categorical)).numpy()[:, 0]
    tolerance = 1e-4 * max(1.0, float(np.abs(expected).max()))
    assert np.abs(got - expected).max() <= tolerance
    # The model is useful, not just consistent: it tracks measured irradiance.
    measured = trained.target[rows]
    assert np.corrcoef(got, measured)[0, 1] > 0.8


def test_single_record_and_its_version_header(running_stack: RunningStack) -> None:
    record = running_stack.trained.schema.example_record()
    record["ceiling_height_m"] = None
    resp = httpx.post(f"{running_stack.gateway_url}/predict", json=record, timeout=30)
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["predictions"]) == 1
    assert resp.headers["x-model-version"] == str(running_stack.trained.versions[0])


def test_invalid_input_is_a_4xx_naming_the_field(running_stack: RunningStack) -> None:
    record = running_stack.trained.schema.example_record()
    record["wind_direction"] = "upwards"
    resp = httpx.post(f"{running_stack.gateway_url}/predict", json=[record], timeout=30)
    assert resp.status_code == 422
    assert resp.json()["error"]["field"] == "[0].wind_direction"
    resp = httpx.post(
        f"{running_stack.gateway_url}/predict", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "malformed_json"


def test_health_and_metrics(running_stack: RunningStack) -> None:
    url = running_stack.gateway_url
    assert httpx.get(f"{url}/healthz/live").status_code == 200
    assert httpx.get(f"{url}/healthz/ready").json() == {"status": "ready"}
    httpx.post(f"{url}/predict", json=running_stack.trained.schema.example_record(), timeout=30)
    metrics = httpx.get(f"{url}/metrics").text
    assert 'modelops_gateway_requests_total{code="ok",model="solar_ghi",route="/predict",status="200"' in metrics
    assert "modelops_gateway_triton_duration_seconds_bucket" in metrics
    triton = httpx.get(running_stack.triton_metrics_url).text
    assert 'nv_inference_request_success{model="solar_ghi"' in triton


def test_docs_show_the_real_fields(running_stack: RunningStack) -> None:
    spec = httpx.get(f"{running_stack.gateway_url}/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    record = body["schema"]["oneOf"][0]
    assert "extraterrestrial_irradiance_wm2" in record["properties"]
    assert record["properties"]["wind_direction"]["enum"][:2] == ["calm", "N"]
    assert body["examples"]["one record"]["value"]["wind_direction"] == "SW"


def test_repository_and_registry_lineage(running_stack: RunningStack) -> None:
    from mlflow import MlflowClient

    settings = running_stack.settings
    version = running_stack.trained.versions[0]
    vdir = settings.model_repository / "solar_ghi" / str(version)
    assert sorted(p.name for p in vdir.iterdir() if p.name in BUNDLE_FILES) == sorted(BUNDLE_FILES)
    validate_config((settings.model_repository / "solar_ghi" / "config.pbtxt").read_text(), "solar_ghi")
    manifest = Manifest.model_validate_json((vdir / "manifest.json").read_bytes())
    assert manifest.version == version and manifest.data_hash.startswith("sha256:")
    routing = Routing.read(settings.model_repository / "solar_ghi")
    assert routing is not None and routing.champion == version

    client = MlflowClient(settings.tracking_uri)
    mv = client.get_model_version("solar_ghi", str(version))
    assert mv.tags["modelops.data_hash"] == manifest.data_hash
    assert mv.tags["modelops.sync_status"] == "serving"
    assert float(mv.tags["modelops.parity_max_abs_error"]) <= 1e-2
    run = client.get_run(mv.run_id)
    assert {"rmse", "mae", "r2", "parity_max_abs_error"} <= set(run.data.metrics)
    assert run.data.params["epochs"] == "15"
    assert run.data.tags["modelops.git_commit"]
    logged = run.info.artifact_uri
    assert logged, "the run has an artifact location"
    schema_doc = json.loads((vdir / "schema.json").read_text())
    assert schema_doc["features"][-1]["categories"][0] == "calm"


def test_second_start_reuses_the_registry_and_stop_leaves_no_process(running_stack: RunningStack, tmp_path) -> None:
    """A second start on the same state does not retrain, comes up fast, and stops cleanly."""
    from modelops.stack import EmbeddedStack

    first = running_stack.settings
    settings = stack_settings(tmp_path).model_copy(
        update={"state_dir": first.state_dir, "model_repository": first.model_repository}
    )

    def must_not_train(_rs) -> None:
        raise AssertionError("the second start retrained although a champion is served")

    stack = EmbeddedStack(settings, bootstrap=must_not_train)
    started = time.monotonic()
    stack.start()
    elapsed = time.monotonic() - started
    try:
        assert elapsed < 60, f"second start took {elapsed:.0f} s"
        resp = httpx.post(f"{stack.gateway_url}/predict", json=running_stack.trained.schema.example_record())
        assert resp.status_code == 200
        assert resp.json()["model"]["version"] == running_stack.trained.versions[0]
        procs = []
        for svc in (stack.mlflow, stack.triton, stack.gateway):
            assert svc is not None and svc.process is not None
            parent = psutil.Process(svc.process.pid)
            procs += [parent, *parent.children(recursive=True)]
        assert any("triton_python_backend_stub" in " ".join(p.cmdline()) for p in procs if p.is_running())
    finally:
        stack.stop()
    _gone, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive, f"left running: {[p.pid for p in alive]}"
