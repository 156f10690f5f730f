"""Every metric the dashboard and alert rules may use (deploy/metrics_catalog.yaml) is really exported.

Checked against live scrapes of the running stack's gateway, Triton and sync controller; Triton's
GPU-only series are absent on a CPU host and were checked against an H100 scrape in tests/deploy.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from tests.integration.conftest import RunningStack

pytestmark = pytest.mark.integration

CATALOG = Path(__file__).resolve().parents[2] / "deploy" / "metrics_catalog.yaml"


def _families(text: str) -> set[str]:
    """Metric family names declared in a Prometheus text exposition (# TYPE lines)."""
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def test_catalog_metrics_exist_in_live_scrapes(running_stack: RunningStack) -> None:
    s = running_stack.settings
    httpx.post(f"{running_stack.gateway_url}/predict", json=running_stack.trained.schema.example_record())
    scrapes = {
        "gateway": _families(httpx.get(f"{running_stack.gateway_url}/metrics").text),
        "triton": _families(httpx.get(running_stack.triton_metrics_url).text),
        "sync": _families(httpx.get(f"http://{s.host}:{s.sync_metrics_port}/metrics").text),
    }
    catalog = yaml.safe_load(CATALOG.read_text())["metrics"]
    missing = []
    checked = 0
    for entry in catalog:
        source = entry["source"]
        if source not in scrapes or entry.get("gpu_only"):
            continue
        name = entry["name"]
        # prometheus-client declares counters without their _total suffix.
        family = name.removesuffix("_total") if source in ("gateway", "sync") else name
        checked += 1
        if family not in scrapes[source] and name not in scrapes[source]:
            missing.append(f"{source}: {name}")
    assert checked >= 25
    assert not missing, f"catalogued but not exported: {missing}"
