"""Record a gated load test on the MLflow model version it measured.

The version gets the tags the promotion gate reads (``modelops.loadtest_status`` = passed|failed
and a one-line ``modelops.loadtest_summary``); the version's training run gets ``loadtest_*``
metrics and the report, summary and budgets under the ``loadtest/`` artifact folder. With
``MODELOPS_REGISTRY_REQUIRE_LOAD_TEST=true`` the sync controller refuses a champion whose
status is not ``passed``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from modelspec.tags import LOADTEST_REPORT_TAG, LOADTEST_STATUS_TAG, LOADTEST_SUMMARY_TAG

log = logging.getLogger(__name__)

ARTIFACT_DIR = "loadtest"


class RecordingFailed(RuntimeError):
    """MLflow could not be told about the result; the message says what to check."""


def summary_line(summary: dict[str, Any]) -> str:
    """A one-line account of a run for the version tag (MLflow tags hold up to 5,000 characters)."""
    result, load = summary["result"], summary["load"]
    parts = [
        "passed" if summary["passed"] else "failed: " + ", ".join(summary["failed_budgets"]),
        f"p50 {result['p50_ms']:.1f} ms, p95 {result['p95_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms",
        f"{result['predictions_per_s']:.0f} predictions/s, errors {result['error_ratio']:.2%}",
    ]
    cost = summary.get("cost")
    if cost and cost.get("per_1k") is not None:
        parts.append(f"{cost['per_1k']:.2g} {cost['currency']}/1k predictions")
    parts.append(
        f"{load['users']} users x {load['duration_s']:g} s, {load['records_per_request']} rec/req, "
        f"load by {load.get('engine', 'locust')}, {summary['started_at']}"
    )
    return "; ".join(parts)


def metrics_of(summary: dict[str, Any]) -> dict[str, float]:
    """The ``loadtest_*`` metrics logged on the version's run (finite values only)."""
    result = summary["result"]
    metrics = {
        "loadtest_p50_ms": result["p50_ms"],
        "loadtest_p95_ms": result["p95_ms"],
        "loadtest_p99_ms": result["p99_ms"],
        "loadtest_rps": result["throughput_rps"],
        "loadtest_predictions_per_s": result["predictions_per_s"],
        "loadtest_error_ratio": result["error_ratio"],
        "loadtest_passed": 1.0 if summary["passed"] else 0.0,
    }
    cost = summary.get("cost")
    if cost and cost.get("per_1k") is not None:
        metrics["loadtest_cost_per_1k"] = cost["per_1k"]
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


def record_on_version(tracking_uri: str, summary: dict[str, Any], files: list[Path]) -> str:
    """Tag the version, log metrics and artifacts on its run; return the run id.

    Raises:
        RecordingFailed: the version does not exist in the registry, or MLflow refused a write.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    model, version = summary["model"], summary.get("version")
    if version is None:
        raise RecordingFailed("the run does not say which version answered; nothing recorded")
    client = MlflowClient(tracking_uri)
    try:
        mv = client.get_model_version(model, str(version))
        run_id = mv.run_id
        if not run_id:
            raise RecordingFailed(f"{model} v{version} has no source run to log metrics and the report on")
        for path in files:
            client.log_artifact(run_id, str(path), ARTIFACT_DIR)
        for key, value in metrics_of(summary).items():
            client.log_metric(run_id, key, value)
        client.set_model_version_tag(model, str(version), LOADTEST_SUMMARY_TAG, summary_line(summary)[:4900])
        client.set_model_version_tag(
            model, str(version), LOADTEST_REPORT_TAG, f"runs:/{run_id}/{ARTIFACT_DIR}/report.html"
        )
        # The status goes last: a gate that reads "passed" can rely on the rest being there.
        client.set_model_version_tag(
            model, str(version), LOADTEST_STATUS_TAG, "passed" if summary["passed"] else "failed"
        )
    except MlflowException as exc:
        raise RecordingFailed(f"could not record the load test on {model} v{version} at {tracking_uri}: {exc}") from exc
    log.info(
        "recorded on %s v%s: %s=%s, metrics and %s/ on run %s",
        model,
        version,
        LOADTEST_STATUS_TAG,
        "passed" if summary["passed"] else "failed",
        ARTIFACT_DIR,
        run_id,
    )
    return str(run_id)
