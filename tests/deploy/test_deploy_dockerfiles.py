"""The Dockerfiles: multi-stage, non-root at run time, build contexts kept small, and a gateway
image whose Python dependencies hold neither torch nor mlflow."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from deploy_support import DEPLOY, ROOT

DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))


def _stages(path: Path) -> list[list[str]]:
    """Instructions of each stage (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_the_three_images_have_dockerfiles() -> None:
    assert [p.name for p in DOCKERFILES] == ["gateway.Dockerfile", "mlflow.Dockerfile", "sync.Dockerfile"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_multi_stage_and_non_root(path: Path) -> None:
    stages = _stages(path)
    assert len(stages) >= 2, f"{path.name}: build and runtime stages"
    runtime = stages[-1]
    assert any(i.startswith("COPY --from=") for i in runtime), f"{path.name}: runtime copies the build"
    users = [i.split()[1] for i in runtime if i.upper().startswith("USER ")]
    assert users, f"{path.name}: the runtime stage sets no USER"
    assert users[-1].split(":")[0] not in {"root", "0"}, f"{path.name}: runs as root"
    assert any(i.upper().startswith("HEALTHCHECK ") for i in runtime), f"{path.name}: HEALTHCHECK"
    for stage in stages:
        base = stage[0].split()[1]
        assert not base.endswith(":latest"), f"{path.name}: pin {base}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_each_dockerfile_has_its_own_dockerignore(path: Path) -> None:
    """The context is the repository root; BuildKit reads <Dockerfile>.dockerignore next to it."""
    ignore = path.with_name(path.name + ".dockerignore")
    lines = [x for x in ignore.read_text().splitlines() if x and not x.startswith("#")]
    assert lines[0] == "*", f"{ignore.name}: start from an empty context"
    for copied in re.findall(r"^COPY (?!--from)(.+) \S+$", path.read_text(), flags=re.M):
        for src in copied.split():
            assert f"!{src}" in lines, f"{ignore.name} leaves out {src}, which {path.name} copies"
            assert (ROOT / src.rstrip("/")).exists(), f"{path.name} copies missing {src}"


def test_gateway_image_installs_the_gateway_extra_without_torch_or_mlflow() -> None:
    text = (DEPLOY / "docker" / "gateway.Dockerfile").read_text()
    assert 'pip install ".[gateway]"' in text
    assert "COPY registry/" not in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["gateway"]
    names = {re.split(r"[\[=<>~! ]", r, maxsplit=1)[0].lower() for r in requirements}
    assert not names & {"torch", "mlflow", "mlflow-skinny"}, f"gateway dependencies pull {names & {'torch', 'mlflow'}}"


def test_sync_image_installs_the_registry_extra() -> None:
    assert 'pip install ".[registry]"' in (DEPLOY / "docker" / "sync.Dockerfile").read_text()
