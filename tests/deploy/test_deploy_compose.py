"""docker-compose.yml: valid against the Compose specification, and production-shaped: GPU
Triton of the embedded server's release, health checks and healthy dependencies everywhere,
only the gateway published, settings that the services really read."""

from __future__ import annotations

import re

import jsonschema
import pytest
import yaml
from deploy_support import (
    COMPOSE_FILE,
    COMPOSE_TEST_ENV,
    DEPLOY,
    ROOT,
    TRITON_IMAGE,
    MissingVariable,
    env_dict,
    interpolate,
    load_compose,
    load_json,
)

SCHEMA = DEPLOY / "schemas" / "compose-spec.json"
ENV_EXAMPLE = DEPLOY / "compose.env.example"
ONE_SHOT = {"minio-init"}  # run to completion; everything else is long-running


def _validator() -> jsonschema.Draft7Validator:
    schema = load_json(SCHEMA)
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_compose_file_validates_against_the_compose_spec() -> None:
    errors = sorted(_validator().iter_errors(load_compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_the_schema_rejects_what_compose_rejects() -> None:
    """Negative control: the vendored schema catches an unknown service key and a bad condition."""
    compose = load_compose()
    compose["services"]["gateway"]["healthchek"] = {"test": ["CMD", "true"]}
    compose["services"]["sync"]["depends_on"]["mlflow"]["condition"] = "service_ready"
    messages = [e.message for e in _validator().iter_errors(compose)]
    assert any("healthchek" in m for m in messages)
    assert any("service_ready" in m for m in messages)


def test_interpolation_follows_compose_rules() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("$${X} ${SET} ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${SET:+alt} $SET", env) == "${X} v d d  alt v"
    with pytest.raises(MissingVariable):
        interpolate("${EMPTY:?needed}", env)


def test_passwords_are_required_and_documented() -> None:
    """No default password: compose refuses to start until .env sets each one."""
    text = COMPOSE_FILE.read_text()
    required = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):\?", text))
    assert {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "GRAFANA_ADMIN_PASSWORD"} <= required
    assert required <= COMPOSE_TEST_ENV.keys()
    with pytest.raises(MissingVariable):
        load_compose(env={})
    example = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")
    )
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    assert used <= example.keys(), f"document in {ENV_EXAMPLE.name}: {sorted(used - example.keys())}"


def test_every_service_has_a_health_check_and_waits_for_healthy_dependencies() -> None:
    services = load_compose()["services"]
    for name, svc in services.items():
        if name not in ONE_SHOT:
            test = svc.get("healthcheck", {}).get("test")
            assert test and test[0] in {"CMD", "CMD-SHELL"}, f"{name}: no health check"
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            wanted = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert cond["condition"] == wanted, f"{name} -> {dep}: condition {cond['condition']}"


def test_startup_order_has_no_cycle() -> None:
    services = load_compose()["services"]
    done: set[str] = set()
    while len(done) < len(services):
        ready = {n for n, s in services.items() if n not in done and set(s.get("depends_on", {})) <= done}
        assert ready, f"dependency cycle among {sorted(set(services) - done)}"
        done |= ready


def test_triton_is_the_gpu_ngc_image_in_explicit_mode() -> None:
    triton = load_compose()["services"]["triton"]
    assert triton["image"] == TRITON_IMAGE
    args = triton["command"]
    assert "--model-control-mode=explicit" in args
    assert "--model-repository=/models" in args
    assert "--allow-gpu-metrics=true" in args
    (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "model-repository:/models:ro" in triton["volumes"]
    assert triton["user"] != "root" and not str(triton["user"]).startswith("0")


def test_sync_controller_writes_native_gpu_configs_for_every_triton_replica() -> None:
    services = load_compose()["services"]
    env = env_dict(services["sync"]["environment"])
    assert env["MODELOPS_REGISTRY_TARGET"] == "native"
    assert env["MODELOPS_REGISTRY_GPU"] == "yes"
    assert env["MODELOPS_REGISTRY_TRITON_URLS"] == "triton:8000"
    assert env["MODELOPS_REGISTRY_TRACKING_URI"] == "http://mlflow:5000"
    assert "model-repository:/models" in services["sync"]["volumes"]
    # Every other mount of the model repository is read-only: one writer.
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            if volume.startswith("model-repository:") and name != "sync":
                assert volume.endswith(":ro"), f"{name} mounts the model repository writable"


def test_mlflow_uses_postgres_and_the_s3_store() -> None:
    env = env_dict(load_compose()["services"]["mlflow"]["environment"])
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://mlflow:test-password@postgres:5432/")
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "mlflow:5000" in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")


def test_only_the_gateway_is_published_beyond_the_host() -> None:
    for name, svc in load_compose()["services"].items():
        for port in svc.get("ports", []):
            public = not str(port).startswith("127.0.0.1:")
            assert not public or name == "gateway", f"{name} publishes {port} on every interface"
    assert load_compose()["services"]["gateway"]["ports"] == ["8080:8080"]


def test_images_are_pinned_and_ours_are_built_from_the_dockerfiles() -> None:
    for name, svc in load_compose()["services"].items():
        image = svc["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{name}: pin {image}"
        if "build" in svc:
            dockerfile = ROOT / svc["build"]["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"
            assert svc["build"]["context"] == "."


def test_monitoring_mounts_exist() -> None:
    for name in ("prometheus", "grafana"):
        for volume in load_compose()["services"][name]["volumes"]:
            if volume.startswith("./"):
                assert (ROOT / volume.split(":")[0]).exists(), f"{name}: {volume}"


def test_compose_file_has_no_tabs_and_parses_as_plain_yaml() -> None:
    text = COMPOSE_FILE.read_text()
    assert "\t" not in text
    assert yaml.safe_load(text)["name"] == "modelops"
