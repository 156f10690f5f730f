"""The Grafana dashboard: valid JSON, valid PromQL, only catalogued metrics, every SRE view."""

from __future__ import annotations

from pathlib import Path

import yaml
from deploy_support import (
    DEPLOY,
    dashboard_panels,
    dashboard_queries,
    dashboards,
    grafana_to_promql,
    load_catalog,
    load_compose,
    load_json,
    recorded_names,
    require_tool,
    run_tool,
    selectors,
)

PROVISIONING = DEPLOY / "grafana" / "provisioning"

# What the issue asks the dashboard to show, as the metric each view cannot do without.
REQUIRED_VIEWS = {
    "GPU utilisation": "nv_gpu_utilization",
    "GPU memory": "nv_gpu_memory_used_bytes",
    "GPU power": "nv_gpu_power_usage",
    "Triton queue time": "nv_inference_queue_duration_us",
    "Triton compute time": "nv_inference_compute_infer_duration_us",
    "gateway latency percentiles": "modelops_gateway_request_duration_seconds_bucket",
    "error ratio": "modelops_gateway_requests_total",
    "drift per feature": "modelops_gateway_feature_drift_psi",
    "served version per alias": "modelops_gateway_served_version",
}


def test_there_is_a_dashboard() -> None:
    assert [p.name for p in dashboards()] == ["modelops.json"]


def test_dashboard_is_importable_json() -> None:
    for path in dashboards():
        dash = load_json(path)
        assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36, path.name
        assert dash.get("id") is None, f"{path.name}: exported with a database id; set it to null"
        ids = [p["id"] for p in dashboard_panels(dash)]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"


def test_every_query_goes_through_the_datasource_variable() -> None:
    """No hard-coded data source uid: the JSON imports into any Grafana."""
    for path in dashboards():
        dash = load_json(path)
        for panel in dashboard_panels(dash):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "${datasource}", f"{path.name}: {panel['title']}"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", f"{path.name}: {panel['title']}"


def test_every_queried_metric_and_label_exists() -> None:
    catalog = load_catalog()
    recorded = recorded_names()
    for path in dashboards():
        for where, expr in dashboard_queries(load_json(path)):
            found = selectors(grafana_to_promql(expr))
            assert found, f"{path.name} {where}: no metric in {expr!r}"
            for sel in found:
                if sel.metric in recorded:
                    continue
                assert sel.metric in catalog.series, (
                    f"{path.name} {where}: {sel.metric} is not exported by the gateway, Triton or the "
                    "sync controller (deploy/metrics_catalog.yaml)"
                )
                for label, _, _ in sel.matchers:
                    assert label in catalog.labels_of(sel.metric), f"{path.name} {where}: {sel.metric}{{{label}}}"


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """promtool parses every query (Grafana variables replaced), as recording rules."""
    promtool = require_tool("promtool")
    rules = []
    for path in dashboards():
        for n, (_, expr) in enumerate(dashboard_queries(load_json(path))):
            rules.append({"record": f"dashboard:query_{n}", "expr": grafana_to_promql(expr)})
    rule_file = tmp_path / "dashboard.rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_tool(promtool, "check", "rules", str(rule_file))


def test_dashboard_shows_what_sres_need() -> None:
    queried = {
        sel.metric
        for path in dashboards()
        for _, e in dashboard_queries(load_json(path))
        for sel in selectors(grafana_to_promql(e))
    }
    missing = {view: metric for view, metric in REQUIRED_VIEWS.items() if metric not in queried}
    assert not missing, f"the dashboard lacks: {missing}"


def test_gpu_panels_are_per_gpu() -> None:
    for path in dashboards():
        for where, expr in dashboard_queries(load_json(path)):
            if "nv_gpu_" in expr:
                assert "gpu_uuid" in expr, f"{path.name} {where}: show GPU metrics per GPU (by gpu_uuid)"


def test_compose_provisions_the_dashboard_and_datasource() -> None:
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "modelops.yml").read_text())["providers"]
    dashboard_path = providers[0]["options"]["path"]
    grafana = load_compose()["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"] if v.startswith("./")}
    assert mounts[dashboard_path] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
