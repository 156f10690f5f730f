"""Prometheus: the compose config and the shared alert rules pass promtool, use only catalogued
metrics, cover what SREs must be told about, and match the Kubernetes PrometheusRule."""

from __future__ import annotations

import importlib.util
import re

import jsonschema
import yaml
from deploy_support import (
    DEPLOY,
    K8S,
    ROOT,
    RULES_DIR,
    load_catalog,
    recorded_names,
    require_tool,
    rule_expressions,
    run_tool,
    selectors,
)

PROMETHEUS_DIR = DEPLOY / "prometheus"
RULES_TEST = PROMETHEUS_DIR / "tests" / "modelops.rules.test.yml"
PROMETHEUS_RULE = K8S / "base" / "monitoring" / "prometheusrule.yaml"
CRD = DEPLOY / "schemas" / "prometheus-operator" / "monitoring.coreos.com_prometheusrules.yaml"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

# What the issue asks alerts for, by name (p99 over budget, error ratio, drift, GPU too high or
# idle, served version changed) plus what keeps the stack itself honest.
REQUIRED_ALERTS = {
    "ModelopsGatewayLatencyP99OverBudget",
    "ModelopsGatewayErrorRatioHigh",
    "ModelopsFeatureDriftHigh",
    "ModelopsPredictionDriftHigh",
    "ModelopsGpuUtilizationHigh",
    "ModelopsGpuIdle",
    "ModelopsServedVersionChanged",
    "ModelopsSyncFailing",
    "ModelopsTargetDown",
}
SEVERITIES = {"page", "ticket", "info"}


def _alerts() -> list[dict[str, object]]:
    rules: list[dict[str, object]] = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += [r for r in group["rules"] if "alert" in r]
    return rules


def test_promtool_check_config() -> None:
    promtool = require_tool("promtool")
    out = run_tool(promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert "SUCCESS" in out.stdout


def test_promtool_check_rules() -> None:
    promtool = require_tool("promtool")
    files = [str(p) for p in sorted(RULES_DIR.glob("*.yml"))]
    assert files, "no rule files"
    run_tool(promtool, "check", "rules", *files)


def test_promtool_rule_unit_tests() -> None:
    promtool = require_tool("promtool")
    run_tool(promtool, "test", "rules", str(RULES_TEST), cwd=RULES_TEST.parent)


def test_every_alert_fires_and_stays_quiet_in_the_rule_unit_tests() -> None:
    """An alert that never fires in a promtool test could have any broken expression; one never checked quiet
    could fire always. Each needs a case with the alert expected, and one (or a time) with none."""
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(str(check["alertname"]))
    alerts = {str(a["alert"]) for a in _alerts()}
    assert not alerts - fired, f"alerts that never fire in {RULES_TEST.name}: {sorted(alerts - fired)}"
    assert not alerts - quiet, f"alerts never checked quiet in {RULES_TEST.name}: {sorted(alerts - quiet)}"
    assert not (fired | quiet) - alerts, f"tests of unknown alerts: {sorted((fired | quiet) - alerts)}"


def test_rules_use_only_catalogued_metrics_and_labels() -> None:
    catalog = load_catalog()
    recorded = recorded_names()
    for name, expr in rule_expressions():
        for sel in selectors(expr):
            if sel.metric in recorded:
                continue
            assert sel.metric in catalog.series, f"rule {name}: {sel.metric} is not in deploy/metrics_catalog.yaml"
            for label, _, _ in sel.matchers:
                assert label in catalog.labels_of(sel.metric), f"rule {name}: {sel.metric} has no label {label!r}"


def test_required_alerts_exist_with_severity_and_runbook() -> None:
    alerts = {str(a["alert"]): a for a in _alerts()}
    assert alerts.keys() >= REQUIRED_ALERTS, f"missing alerts: {sorted(REQUIRED_ALERTS - alerts.keys())}"
    doc = DEPLOY_DOC.read_text()
    anchors = {_anchor(h) for h in re.findall(r"^#+\s+(.+?)\s*$", doc, flags=re.M)}
    for name, alert in alerts.items():
        labels = alert.get("labels") or {}
        assert isinstance(labels, dict) and labels.get("severity") in SEVERITIES, f"{name}: severity"
        annotations = alert.get("annotations") or {}
        assert isinstance(annotations, dict) and annotations.get("summary"), f"{name}: summary"
        runbook = str(annotations.get("runbook_url", ""))
        assert runbook.startswith("docs/deploy.md#"), f"{name}: runbook_url into docs/deploy.md"
        assert runbook.split("#", 1)[1] in anchors, f"{name}: docs/deploy.md has no heading for {runbook}"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-")


def test_kubernetes_prometheusrule_is_generated_from_the_same_rules() -> None:
    spec = importlib.util.spec_from_file_location("render_prometheusrule", PROMETHEUS_DIR / "render_prometheusrule.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert PROMETHEUS_RULE.read_text() == module.render(), (
        "k8s/base/monitoring/prometheusrule.yaml is stale: run python deploy/prometheus/render_prometheusrule.py"
    )
    shared = yaml.safe_load((RULES_DIR / "modelops.rules.yml").read_text())
    assert yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]["groups"] == shared["groups"]


def test_prometheusrule_matches_the_operator_crd_schema() -> None:
    crd = yaml.safe_load(CRD.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    obj = yaml.safe_load(PROMETHEUS_RULE.read_text())
    jsonschema.Draft7Validator(schema).validate(obj)


def test_the_crd_schema_rejects_a_broken_rule() -> None:
    """Negative control: the vendored schema really constrains rules."""
    crd = yaml.safe_load(CRD.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    broken = {"spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "for": "ten minutes"}]}]}}
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(broken))
    assert errors, "a rule without expr and with a bad duration passed the CRD schema"


def test_prometheus_scrapes_every_source_under_the_job_names_the_rules_use() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {c["job_name"] for c in config["scrape_configs"]}
    assert {"modelops-gateway", "modelops-triton", "modelops-sync"} <= jobs
    assert config["rule_files"] == ["rules/*.yml"]
