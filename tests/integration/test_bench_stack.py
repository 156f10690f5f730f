"""``modelops bench`` against the real stack: the gate, its record in MLflow, and a short comparison.

Runs are seconds long: they prove the machinery (Locust against the real gateway, Triton and
``mlflow models serve``, budgets, exit codes, MLflow tags/metrics/artifacts), not the speed.
The measured comparison lives in docs/benchmarks.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from benchmarks.cli import main
from modelspec.tags import LOADTEST_STATUS_TAG as STATUS_TAG
from modelspec.tags import LOADTEST_SUMMARY_TAG as SUMMARY_TAG
from tests.integration.conftest import RunningStack

pytestmark = pytest.mark.integration


def _budgets(path: Path, latency: str, min_throughput: float) -> Path:
    path.write_text(
        "model: solar_ghi\n"
        "load: {users: 4, spawn_rate: 4, duration_s: 3, warmup_s: 1, records_per_request: 1}\n"
        f"latency_ms: {latency}\n"
        "max_error_ratio: 0.01\n"
        f"min_throughput_per_s: {min_throughput}\n"
        "cost: {price_per_hour: 0.0893, currency: USD, hardware: test node}\n"
    )
    return path


def test_gate_fails_on_an_impossible_budget_and_passes_on_a_generous_one(
    running_stack: RunningStack, tmp_path: Path
) -> None:
    tracking = running_stack.settings.tracking_uri
    common = ["bench", "--gateway-url", running_stack.gateway_url, "--tracking-uri", tracking]
    client = MlflowClient(tracking)
    version = str(client.get_model_version_by_alias("solar_ghi", "champion").version)

    impossible = _budgets(tmp_path / "impossible.yaml", "{p50: 0.001, p95: 0.002}", 1e9)
    assert main([*common, "--budgets", str(impossible), "--report-dir", str(tmp_path / "fail")]) == 1
    mv = client.get_model_version("solar_ghi", version)
    assert mv.tags[STATUS_TAG] == "failed"
    assert "latency p50" in mv.tags[SUMMARY_TAG] and "throughput" in mv.tags[SUMMARY_TAG]

    generous = _budgets(tmp_path / "generous.yaml", "{p50: 5000, p95: 10000, p99: 20000}", 1)
    assert main([*common, "--budgets", str(generous), "--report-dir", str(tmp_path / "pass")]) == 0
    mv = client.get_model_version("solar_ghi", version)
    assert mv.tags[STATUS_TAG] == "passed"
    summary = json.loads((tmp_path / "pass" / "summary.json").read_text())
    assert summary["version"] == int(version) and summary["result"]["failures"] == 0
    run = client.get_run(mv.run_id)
    assert run.data.metrics["loadtest_passed"] == 1.0
    assert run.data.metrics["loadtest_p95_ms"] == pytest.approx(summary["result"]["p95_ms"])
    assert run.data.metrics["loadtest_cost_per_1k"] > 0
    artifacts = {a.path for a in client.list_artifacts(mv.run_id, "loadtest")}
    assert {"loadtest/report.html", "loadtest/summary.json"} <= artifacts


def test_compare_measures_every_serving_path(running_stack: RunningStack, tmp_path: Path) -> None:
    s = running_stack.settings
    before = _tree(s.model_repository)
    code = main(
        [
            "bench",
            "--compare",
            "--gateway-url",
            running_stack.gateway_url,
            "--triton-url",
            f"http://{s.host}:{s.triton_http_port}",
            "--tracking-uri",
            s.tracking_uri,
            "--model-repository",
            str(s.model_repository),
            "--steps",
            "1,4",
            "--step-duration",
            "2",
            "--fixed-duration",
            "2",
            "--fixed-rps",
            "20",
            "--records-sweep",
            "1,4",
            "--sweep-users",
            "4",
            "--report-dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    doc = json.loads((tmp_path / "compare.json").read_text())
    assert set(doc["variants"]) == {"gateway", "triton", "triton_nobatch", "mlflow"}
    for name, variant in doc["variants"].items():
        assert variant["error"] is None, name
        assert [step["users"] for step in variant["steps"]] == [1, 4], name
        assert all(step["requests"] > 0 and step["error_ratio"] == 0 for step in variant["steps"]), name
        assert variant["fixed"]["requests"] > 0, name
    # every path answered the same records with the same predictions
    assert max(doc["agreement_max_relative_diff"].values()) < 1e-3
    assert [p["records_per_request"] for p in doc["sweep"]] == [1, 4]
    assert len(doc["targets"]) == 6
    assert "| variant |" in (tmp_path / "compare.md").read_text()
    # the stack's repository was only read: the temporary servers used their own
    assert _tree(s.model_repository) == before


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if ".staging" not in p.parts}
