"""k8s/: every overlay builds with kustomize, validates against the Kubernetes API schemas, and
has the shape production needs (probes, GPUs, replicas, policies, monitoring, restricted pods)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from deploy_support import (
    K8S,
    KUBERNETES_VERSION,
    TRITON_IMAGE,
    container_env,
    kustomize_build,
    load_compose,
    overlays,
)

Obj = dict[str, Any]
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}
# Secrets the GPU overlay expects the operator to create (docs/deploy.md); gateway-api-keys is optional.
OPERATOR_SECRETS = {"postgres-credentials", "mlflow-db", "minio-credentials", "artifact-store", "gateway-api-keys"}
# Keys of a ServiceMonitor / PodMonitor endpoint (prometheus-operator monitoring.coreos.com/v1)
# that these manifests may use; a typo would otherwise be pruned silently by the API server.
MONITOR_ENDPOINT_KEYS = {
    "port",
    "path",
    "interval",
    "scrapeTimeout",
    "scheme",
    "relabelings",
    "metricRelabelings",
    "honorLabels",
}
RELABEL_KEYS = {"action", "sourceLabels", "separator", "targetLabel", "regex", "replacement", "modulus"}


def _build(overlay: Path) -> list[Obj]:
    return list(kustomize_build(overlay))


def _one(objs: Iterable[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _pod_spec(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]["template"]["spec"]
    return spec


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(params=overlays(), ids=lambda p: p.name)
def overlay(request: pytest.FixtureRequest) -> Path:
    return Path(request.param)


def test_there_are_cpu_and_gpu_overlays() -> None:
    assert [p.name for p in overlays()] == ["cpu", "gpu"]


def test_base_builds_on_its_own() -> None:
    assert _one(kustomize_build(K8S / "base"), "Namespace", "modelops")


def test_objects_validate_against_the_kubernetes_schemas(overlay: Path) -> None:
    errors = []
    for obj in _build(overlay):
        if obj["kind"] in CRD_KINDS:
            continue  # checked against the operator's schema / structurally below
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_the_validator_rejects_a_misspelt_field(overlay: Path) -> None:
    """Negative control: strict validation catches an unknown field in a pod template."""
    gateway = _one(_build(overlay), "Deployment", "gateway")
    broken = {**gateway, "spec": {**gateway["spec"], "replica": 3}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_every_object_lives_in_the_modelops_namespace(overlay: Path) -> None:
    for obj in _build(overlay):
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "modelops", f"{obj['kind']}/{obj['metadata']['name']}"


def test_triton_replicas_probe_health_and_share_the_repository(overlay: Path) -> None:
    objs = _build(overlay)
    triton = _one(objs, "Deployment", "triton")
    assert triton["spec"]["replicas"] >= 2
    spec = _pod_spec(triton)
    (container,) = spec["containers"]
    assert container["image"] == TRITON_IMAGE
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert "--model-control-mode=explicit" in container["args"]
    assert "--load-model=*" in container["args"], "a new replica must load the served models itself"
    volumes = {v["name"]: v for v in spec["volumes"]}
    claim = volumes["model-repository"]["persistentVolumeClaim"]
    assert claim["claimName"] == "model-repository" and claim["readOnly"] is True
    pvc = _one(objs, "PersistentVolumeClaim", "model-repository")
    if overlay.name == "gpu":
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "replicas on several nodes share it"


def test_gpu_overlay_requests_a_gpu_per_triton_replica_and_cpu_does_not(overlay: Path) -> None:
    objs = _build(overlay)
    (container,) = _pod_spec(_one(objs, "Deployment", "triton"))["containers"]
    limits = container["resources"].get("limits", {})
    sync_env = {n: v for _, n, v in container_env(_one(objs, "Deployment", "sync-controller"))}
    if overlay.name == "gpu":
        assert limits.get("nvidia.com/gpu") == 1
        assert sync_env["MODELOPS_REGISTRY_GPU"] == "yes"
    else:
        assert "nvidia.com/gpu" not in limits
        assert sync_env["MODELOPS_REGISTRY_GPU"] == "no"
    assert sync_env["MODELOPS_REGISTRY_TARGET"] == "native"


def test_sync_controller_reaches_every_triton_pod(overlay: Path) -> None:
    """The sync controller resolves a headless Service that lists every Triton pod, ready or not."""
    objs = _build(overlay)
    sync = _one(objs, "Deployment", "sync-controller")
    assert sync["spec"]["replicas"] == 1 and sync["spec"]["strategy"]["type"] == "Recreate"
    env = {n: v for _, n, v in container_env(sync)}
    host, port = env["MODELOPS_REGISTRY_TRITON_URLS"].split(":")
    service = _one(objs, "Service", host)
    assert service["spec"]["clusterIP"] == "None", "a ClusterIP name would reach one pod only"
    assert service["spec"]["publishNotReadyAddresses"] is True, "a starting pod needs its models loaded"
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    triton = _one(objs, "Deployment", "triton")
    assert _matches(service["spec"]["selector"], triton["spec"]["template"]["metadata"]["labels"])


def test_gateway_scales_and_survives_disruptions(overlay: Path) -> None:
    objs = _build(overlay)
    gateway = _one(objs, "Deployment", "gateway")
    (container,) = _pod_spec(gateway)["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz/live"
    assert container["resources"]["requests"]["cpu"], "the HPA scales on CPU requests"
    hpa = _one(objs, "HorizontalPodAutoscaler", "gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = _one(objs, "PodDisruptionBudget", "gateway")
    assert _matches(pdb["spec"]["selector"]["matchLabels"], gateway["spec"]["template"]["metadata"]["labels"])


def test_only_the_gateway_accepts_traffic_from_anywhere(overlay: Path) -> None:
    objs = _build(overlay)
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    deny = _one(policies, "NetworkPolicy", "default-deny-ingress")
    assert deny["spec"]["podSelector"] == {} and "ingress" not in deny["spec"]
    open_to_all = set()
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            if not rule.get("from"):
                open_to_all.add(policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"])
    assert open_to_all == {"gateway"}
    workloads = {o["metadata"]["name"] for o in objs if o["kind"] in WORKLOAD_KINDS}
    selected = set()
    for policy in policies:
        selector = policy["spec"]["podSelector"]
        selected |= set(selector.get("matchLabels", {}).values())
        for expr in selector.get("matchExpressions", []):
            selected |= set(expr["values"])
    assert workloads - {"minio-bucket"} <= selected, "a workload has no ingress policy of its own"


def test_pods_meet_the_restricted_pod_security_standard(overlay: Path) -> None:
    namespace = _one(_build(overlay), "Namespace", "modelops")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in _build(overlay):
        if obj["kind"] not in WORKLOAD_KINDS:
            continue
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        spec = _pod_spec(obj)
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, f"{where}: runAsNonRoot"
        assert pod_sc.get("runAsUser", 1) != 0, f"{where}: runs as root"
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccomp"
        assert spec.get("automountServiceAccountToken") is False, f"{where}: needs no API token"
        for container in spec["containers"]:
            sc = container.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, f"{where}/{container['name']}"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}/{container['name']}"
            assert container["resources"]["limits"]["memory"], f"{where}/{container['name']}: memory limit"
            assert not container["image"].endswith(":latest") and ":" in container["image"], where


def test_references_resolve(overlay: Path) -> None:
    """Services select pods, PVCs and Secrets exist (GPU overlay: the documented operator Secrets)."""
    objs = _build(overlay)
    pods = [o["spec"]["template"]["metadata"]["labels"] for o in objs if o["kind"] in WORKLOAD_KINDS]
    for svc in (o for o in objs if o["kind"] == "Service"):
        assert any(_matches(svc["spec"]["selector"], labels) for labels in pods), f"Service {svc['metadata']['name']}"
    claims = {o["metadata"]["name"] for o in objs if o["kind"] == "PersistentVolumeClaim"}
    secrets = {o["metadata"]["name"] for o in objs if o["kind"] == "Secret"}
    referenced: set[str] = set()
    for obj in (o for o in objs if o["kind"] in WORKLOAD_KINDS):
        spec = _pod_spec(obj)
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        for container in spec["containers"]:
            referenced |= {e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e}
            referenced |= {
                e["valueFrom"]["secretKeyRef"]["name"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            }
    missing = referenced - secrets
    if overlay.name == "cpu":
        assert missing == {"gateway-api-keys"}, f"the dev overlay lacks Secrets {sorted(missing)}"
    else:
        assert missing <= OPERATOR_SECRETS, f"undocumented Secrets {sorted(missing - OPERATOR_SECRETS)}"
        assert not secrets, "the GPU overlay must not ship credentials"


def test_monitors_scrape_existing_ports_under_the_compose_job_names(overlay: Path) -> None:
    objs = _build(overlay)
    jobs = set()
    for monitor in (o for o in objs if o["kind"] in {"ServiceMonitor", "PodMonitor"}):
        where = f"{monitor['kind']}/{monitor['metadata']['name']}"
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1", where
        selector = monitor["spec"]["selector"]["matchLabels"]
        key = "endpoints" if monitor["kind"] == "ServiceMonitor" else "podMetricsEndpoints"
        if monitor["kind"] == "ServiceMonitor":
            targets = [
                o for o in objs if o["kind"] == "Service" and _matches(selector, o["metadata"].get("labels", {}))
            ]
            ports = {p["name"] for t in targets for p in t["spec"]["ports"]}
        else:
            targets = [
                o
                for o in objs
                if o["kind"] in WORKLOAD_KINDS and _matches(selector, o["spec"]["template"]["metadata"]["labels"])
            ]
            ports = {p["name"] for t in targets for c in _pod_spec(t)["containers"] for p in c.get("ports", [])}
        assert targets, f"{where} selects nothing"
        for endpoint in monitor["spec"][key]:
            assert set(endpoint) <= MONITOR_ENDPOINT_KEYS, (
                f"{where}: unknown keys {set(endpoint) - MONITOR_ENDPOINT_KEYS}"
            )
            assert endpoint["port"] in ports, f"{where}: no port named {endpoint['port']}"
            for relabel in endpoint.get("relabelings", []):
                assert set(relabel) <= RELABEL_KEYS, f"{where}: relabeling keys {set(relabel)}"
                if relabel.get("targetLabel") == "job":
                    jobs.add(relabel["replacement"])
    assert jobs == {"modelops-gateway", "modelops-triton", "modelops-sync"}
    assert _one(objs, "PrometheusRule", "modelops")["spec"]["groups"]


def test_images_match_the_compose_images(overlay: Path) -> None:
    compose_images = {svc["image"] for svc in load_compose()["services"].values()}
    for obj in (o for o in _build(overlay) if o["kind"] in WORKLOAD_KINDS):
        for container in _pod_spec(obj)["containers"]:
            assert container["image"] in compose_images, f"{obj['metadata']['name']}: {container['image']}"
