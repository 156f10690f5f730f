"""Run the real ``tritonserver`` that ships in the ``nvidia-pytriton`` wheel, without Docker.

The wheel holds Triton 2.51 with only the Python backend. What it needs (measured, see
GROUND.md): the wheel's bundled libraries on ``LD_LIBRARY_PATH``; a backend directory with the
Python backend plus the stub built for the running Python; the virtual environment's ``bin``
first on ``PATH`` and the base interpreter's ``libpython`` folder first on ``LD_LIBRARY_PATH``, so
the stub's embedded interpreter finds the venv's packages (onnxruntime, numpy).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from modelspec.layout import EMBEDDED_BACKEND

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
BACKEND_SOURCE = REPO_ROOT / "triton_backend" / EMBEDDED_BACKEND / "model.py"


class TritonNotInstalled(RuntimeError):
    """The nvidia-pytriton wheel (which carries tritonserver) is not installed."""


@dataclass(frozen=True)
class TritonPorts:
    """The three endpoints of one Triton server."""

    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


def _pytriton_package() -> Path:
    # Located without importing it: importing pytriton pulls tritonclient, which a GPU host
    # that only runs the server may not have.
    loaded = sys.modules.get("pytriton")
    if loaded is not None:  # already imported, or stubbed by a host without its client (GPU check)
        where = getattr(loaded, "__file__", None) or next(iter(getattr(loaded, "__path__", [])), None)
        if where:
            path = Path(where).resolve()
            return path.parent if path.is_file() else path
    try:
        spec = importlib.util.find_spec("pytriton")
    except ValueError:
        spec = None
    if spec is None or not spec.origin:
        raise TritonNotInstalled(
            "tritonserver comes from the nvidia-pytriton wheel: run `make install` (or "
            "`pip install -e .[serving]`) first"
        )
    return Path(spec.origin).resolve().parent


def pytriton_root() -> Path:
    """Folder of the Triton distribution inside the pytriton wheel."""
    return _pytriton_package() / "tritonserver"


def _libs_dir() -> Path:
    return _pytriton_package().parent / "nvidia_pytriton.libs"


def prepare_backends(state_dir: Path) -> Path:
    """Build ``<state_dir>/backends`` (Python backend + stub + our ONNX backend); return it.

    Rebuilt on every start so an upgraded wheel or backend file is picked up.
    """
    root = pytriton_root()
    backends = state_dir / "backends"
    python_dir = backends / "python"
    if backends.exists():
        shutil.rmtree(backends)
    shutil.copytree(root / "backends" / "python", python_dir, ignore=shutil.ignore_patterns("__pycache__"))
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / py / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonNotInstalled(f"the pytriton wheel has no Python backend stub for Python {py}")
    shutil.copy2(stub, python_dir / "triton_python_backend_stub")
    ours = backends / EMBEDDED_BACKEND
    ours.mkdir(parents=True)
    shutil.copy2(BACKEND_SOURCE, ours / "model.py")
    return backends


def triton_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver so its Python stubs run inside this virtual environment."""
    env = dict(os.environ if base is None else base)
    venv_bin = str(Path(sys.executable).parent)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    lib_paths = [p for p in (libdir, str(_libs_dir()), env.get("LD_LIBRARY_PATH", "")) if p]
    env["LD_LIBRARY_PATH"] = ":".join(lib_paths)
    env["PATH"] = f"{venv_bin}:{env.get('PATH', '')}"
    env.pop("PYTHONHOME", None)
    return env


def triton_command(
    model_repository: Path, backends: Path, ports: TritonPorts, host: str = "127.0.0.1", verbose: int = 0
) -> list[str]:
    """The tritonserver command line: explicit model control, nothing loaded at start."""
    return [
        str(pytriton_root() / "bin" / "tritonserver"),
        f"--model-repository={model_repository.resolve()}",
        "--model-control-mode=explicit",
        f"--backend-directory={backends.resolve()}",
        f"--http-address={host}",
        f"--http-port={ports.http}",
        f"--grpc-address={host}",
        f"--grpc-port={ports.grpc}",
        f"--metrics-address={host}",
        f"--metrics-port={ports.metrics}",
        "--allow-metrics=true",
        "--strict-readiness=true",
        "--exit-timeout-secs=5",
        f"--log-verbose={verbose}",
    ]
