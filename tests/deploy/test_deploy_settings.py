"""Every MODELOPS_* variable the deployments set is a setting the process reads, with a valid value.

pydantic-settings ignores unknown variables (extra="ignore"), so a misspelt name in a manifest
would silently fall back to the default (e.g. a sync controller that loads 127.0.0.1:8000):
this test is what catches it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from deploy_support import container_env, env_dict, kustomize_build, load_compose, overlays
from pydantic import BaseModel, ValidationError

PREFIXES = {"MODELOPS_REGISTRY_": "registry", "MODELOPS_GATEWAY_": "gateway"}


def _settings_class(kind: str) -> type[BaseModel]:
    if kind == "registry":
        from deployer.settings import RegistrySettings

        return RegistrySettings
    from gateway.settings import GatewaySettings

    return GatewaySettings


def _deployment_env() -> Iterator[tuple[str, str, str]]:
    """``(where, variable, value)`` for every literal env var of compose and every overlay."""
    for service, svc in load_compose()["services"].items():
        for name, value in env_dict(svc.get("environment", {})).items():
            yield f"compose {service}", name, value
    for overlay in overlays():
        for obj in kustomize_build(overlay):
            for container, name, value in container_env(obj):
                yield f"k8s/{overlay.name} {obj['kind']}/{obj['metadata']['name']}/{container}", name, value


def test_modelops_variables_are_settings_fields_with_valid_values() -> None:
    grouped: dict[tuple[str, str], dict[str, str]] = {}
    for where, name, value in _deployment_env():
        for prefix, kind in PREFIXES.items():
            if name.startswith(prefix):
                grouped.setdefault((where, kind), {})[name] = value
    assert grouped, "no MODELOPS_* variables found"
    problems = []
    for (where, kind), variables in sorted(grouped.items()):
        cls = _settings_class(kind)
        prefix = next(p for p, k in PREFIXES.items() if k == kind)
        unknown = sorted(n for n in variables if n.removeprefix(prefix).lower() not in cls.model_fields)
        if unknown:
            problems.append(f"{where}: {cls.__name__} has no field for {unknown}")
            continue
        # Build the settings the way the process does: from the environment (JSON for lists).
        with pytest.MonkeyPatch.context() as env:
            for name in [n for n in os.environ if n.startswith("MODELOPS_")]:
                env.delenv(name)
            for name, value in variables.items():
                env.setenv(name, value)
            try:
                cls()
            except ValidationError as exc:
                problems.append(f"{where}: {exc}")
    assert not problems, "\n".join(problems)
