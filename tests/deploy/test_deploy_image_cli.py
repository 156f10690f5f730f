"""The ``modelops`` command starts from the files an image copies, and nothing else.

The gateway and sync images copy only some packages (their Dockerfiles' ``COPY`` lines): no
``benchmarks/``. The launcher must still build its parser there (``bench`` is registered only
when ``benchmarks`` is installed), so this test copies exactly what each Dockerfile copies into a
temporary folder and runs ``python -m modelops ... --help`` from it.

Why ``python -S``: this virtualenv has the project installed in editable mode, and setuptools'
editable finder (installed by a ``.pth`` file in site-packages when ``site`` runs) maps
``benchmarks``, ``modelops``, ... to the checkout whatever ``sys.path`` says, so a child with
only the temporary folder on ``PYTHONPATH`` and as its working directory would still import the
real ``benchmarks``. ``-S`` skips ``site``, hence every ``.pth`` file and the editable finder;
the interpreter's site-packages folders go on ``PYTHONPATH`` after the copy so the third-party
dependencies still import (none of the ones these commands need relies on a ``.pth`` file).
(``-I`` would ignore ``PYTHONPATH`` too.) Each child first proves the isolation: ``benchmarks``
is not importable and ``modelops`` comes from the copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from deploy_support import DEPLOY, ROOT

IMAGES = ("gateway", "sync")
COMMANDS = (["--help"], ["gateway", "--help"], ["sync", "--help"])

_ISOLATION_PROBE = """
import importlib.util, json, sys
spec = importlib.util.find_spec("modelops")
print(json.dumps({"benchmarks": importlib.util.find_spec("benchmarks") is not None,
                  "modelops": spec.origin if spec else None, "path": sys.path}))
"""


def copied_sources(dockerfile: Path) -> list[str]:
    """What a Dockerfile copies from the build context (``COPY`` lines without ``--from``)."""
    sources: list[str] = []
    for line in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile.read_text(), flags=re.M):
        sources += line.split()
    return sources


def _image_tree(image: str, into: Path) -> Path:
    for src in copied_sources(DEPLOY / "docker" / f"{image}.Dockerfile"):
        path = ROOT / src.rstrip("/")
        if path.is_dir():
            shutil.copytree(path, into / path.name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, into / path.name)
    return into


def sub_commands(help_text: str) -> list[str]:
    """The sub-commands a ``--help`` lists (argparse's ``{up,gateway,...}``)."""
    found = re.search(r"\{([a-z,-]+)\}", help_text)
    assert found, help_text
    return found.group(1).split(",")


def _run(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    paths = sysconfig.get_paths()
    site_packages = list(dict.fromkeys([paths["purelib"], paths["platlib"]]))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MODELOPS_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *site_packages])
    return subprocess.run(
        [sys.executable, "-S", *args], cwd=tree, env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("image", IMAGES)
def test_modelops_starts_from_only_the_files_the_image_copies(image: str, tmp_path: Path) -> None:
    tree = _image_tree(image, tmp_path)
    assert not (tree / "benchmarks").exists(), f"the {image} image copies benchmarks/; this test is moot"

    probe = _run(tree, "-c", _ISOLATION_PROBE)
    assert probe.returncode == 0, probe.stderr
    facts = json.loads(probe.stdout)
    assert facts["benchmarks"] is False, f"benchmarks leaks into the isolated interpreter: {facts['path']}"
    assert facts["modelops"] and Path(facts["modelops"]).is_relative_to(tree), facts
    assert str(ROOT) not in facts["path"]

    for command in COMMANDS:
        done = _run(tree, "-m", "modelops", *command)
        assert done.returncode == 0, f"{image} image: modelops {' '.join(command)}\n{done.stderr}"
        assert "usage: modelops" in done.stdout
    commands = sub_commands(_run(tree, "-m", "modelops", "--help").stdout)
    assert "gateway" in commands and "bench" not in commands  # not offered where it cannot run


def test_modelops_offers_bench_where_benchmarks_is_installed() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "modelops", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "bench" in sub_commands(done.stdout)
