"""The deployer imports no torch and nothing of the training side (registry/).

A sync controller image ships without either; an import that runs upward (deployer -> registry)
or pulls torch in would break it only there. Checked in a fresh interpreter, so what other tests
imported does not hide it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = ("torch", "registry")


def imported_after(code: str) -> list[str]:
    """Top-level packages in sys.modules after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_importing_the_deployer_imports_no_torch_and_no_registry() -> None:
    found = imported_after(
        "import deployer, deployer.sync, deployer.plan, deployer.outcome, deployer.triton_control, deployer.settings"
    )
    assert [m for m in FORBIDDEN if m in found] == []


def test_a_controller_and_modelops_status_import_no_torch_and_no_registry() -> None:
    # Building a controller imports mlflow (its client); mlflow must not bring torch in either.
    found = imported_after(
        "from deployer.settings import RegistrySettings\n"
        "from deployer.sync import SyncController\n"
        "SyncController(RegistrySettings(tracking_uri='http://127.0.0.1:9', model_repository='unused'))\n"
        "import modelops.status"
    )
    assert "mlflow" in found
    assert [m for m in FORBIDDEN if m in found] == []
