"""The bundled ``tritonserver`` under test: start it on a model repository, load models, read its APIs.

It runs through :mod:`servers.tritonserver` and :mod:`servers.processes`, exactly as the
embedded stack runs it, with a few server flags a load test needs on top (metrics every 500 ms).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys
import types
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonio.blocking import BlockingTritonClient
from tritonio.errors import Refused

log = logging.getLogger(__name__)

_ENGINE_LINE = re.compile(r"(?P<model>[a-z][a-z0-9_]*) v(?P<version>\d+) ready: engine (?P<engine>.*?); inputs")


class ModelLoadFailed(RuntimeError):
    """Triton refused to load a model; the message carries Triton's reason."""


def ensure_pytriton_importable() -> None:
    """Make ``import pytriton`` work where only the server half of the wheel can run.

    The wheel's package ``__init__`` imports its Python client, which needs ``tritonclient``;
    a bare GPU host has the wheel but not tritonclient, while the server binary needs neither.
    :mod:`servers.tritonserver` only reads ``pytriton.__file__`` to find the binary, so when
    the real import fails, register a bare module object that points at the installed package.
    """
    try:
        import pytriton  # noqa: F401
    except ImportError as exc:
        spec = importlib.util.find_spec("pytriton")
        if spec is None or spec.origin is None:
            raise
        module = types.ModuleType("pytriton")
        module.__file__ = spec.origin
        module.__path__ = list(spec.submodule_search_locations or [])
        sys.modules["pytriton"] = module
        log.warning("pytriton's client cannot be imported here (%s); using only its tritonserver", exc)


@dataclass(frozen=True)
class ModelStats:
    """Cumulative counters of one model version from Triton's statistics API."""

    inference_count: int  # rows (batch elements) inferred
    execution_count: int  # model executions (batches)
    success_count: int  # successful requests
    queue_ns: int
    compute_infer_ns: int

    def since(self, before: ModelStats) -> ModelStats:
        """The counters accumulated after ``before``."""
        return ModelStats(
            self.inference_count - before.inference_count,
            self.execution_count - before.execution_count,
            self.success_count - before.success_count,
            self.queue_ns - before.queue_ns,
            self.compute_infer_ns - before.compute_infer_ns,
        )

    @property
    def mean_batch(self) -> float | None:
        """Mean rows per model execution, or None when nothing ran."""
        return self.inference_count / self.execution_count if self.execution_count else None

    @property
    def mean_queue_ms(self) -> float | None:
        """Mean time a request waited in Triton's queue."""
        return self.queue_ns / self.success_count / 1e6 if self.success_count else None

    @property
    def mean_compute_ms(self) -> float | None:
        """Mean duration of the execution a request was part of (the backend's execute)."""
        return self.compute_infer_ns / self.success_count / 1e6 if self.success_count else None


@dataclass
class TritonServer:
    """One ``tritonserver`` process on ``repository``, its state (backends, log) in ``work_dir``."""

    repository: Path
    work_dir: Path
    extra_args: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    _service: Any = field(default=None, repr=False)
    _ports: Any = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        """Triton's log file (the backend's engine choice is logged there)."""
        return self.work_dir / "tritonserver.log"

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the HTTP endpoint."""
        return f"http://{self.host}:{self._ports.http}"

    @property
    def http_port(self) -> int:
        """Port of the HTTP endpoint."""
        return int(self._ports.http)

    @property
    def metrics_url(self) -> str:
        """Prometheus endpoint."""
        return f"http://{self.host}:{self._ports.metrics}/metrics"

    def start(self, timeout_s: float = 120.0) -> None:
        """Build the backend directory, start Triton, wait until it is live."""
        ensure_pytriton_importable()
        from servers.processes import Service, free_port
        from servers.tritonserver import TritonPorts, prepare_backends, triton_command, triton_environment

        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._ports = TritonPorts(http=free_port(), grpc=free_port(), metrics=free_port())
        backends = prepare_backends(self.work_dir)
        command = triton_command(self.repository, backends, self._ports, host=self.host) + list(self.extra_args)
        self._service = Service(
            name="tritonserver",
            command=command,
            log_path=self.log_path,
            health_url=f"{self.base_url}/v2/health/live",
            env=triton_environment(),
        )
        self._service.start()
        self._service.wait_healthy(timeout_s)

    def stop(self) -> None:
        """Stop Triton and its Python stubs."""
        if self._service is not None:
            self._service.stop()
            self._service = None

    def client(self, timeout_s: float = 10.0) -> BlockingTritonClient:
        """A blocking client of this server's HTTP endpoint (one per thread)."""
        return BlockingTritonClient(f"{self.host}:{self.http_port}", timeout_s=timeout_s)

    def load(self, model: str, timeout_s: float = 300.0) -> None:
        """Load ``model`` (explicit model control); raise ModelLoadFailed with Triton's reason."""
        with self.client(timeout_s) as client:
            try:
                client.load_model(model)
            except Refused as exc:
                raise ModelLoadFailed(f"Triton did not load {model}: {exc.message}; see {self.log_path}") from exc

    def server_version(self) -> str:
        """Triton's version string (``2.51.0``)."""
        with self.client() as client:
            return str(client.server_metadata().get("version", "unknown"))

    def stats(self, model: str, version: int) -> ModelStats:
        """The statistics API's counters for one version."""
        with self.client() as client:
            doc = client.model_statistics(model, version)
        s = doc["model_stats"][0]
        inf = s["inference_stats"]
        return ModelStats(
            inference_count=int(s["inference_count"]),
            execution_count=int(s["execution_count"]),
            success_count=int(inf["success"]["count"]),
            queue_ns=int(inf["queue"]["ns"]),
            compute_infer_ns=int(inf["compute_infer"]["ns"]),
        )

    def metrics(self) -> str:
        """The Prometheus text of the metrics endpoint ("" when it does not answer)."""
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
                return str(resp.read().decode())
        except (urllib.error.URLError, OSError):
            return ""

    def engines(self) -> dict[str, list[str]]:
        """The engine each loaded model's instances chose, as the backend logged it."""
        found: dict[str, list[str]] = {}
        if not self.log_path.exists():
            return found
        for line in self.log_path.read_text(errors="replace").splitlines():
            m = _ENGINE_LINE.search(line)
            if m and m["engine"] not in found.setdefault(m["model"], []):
                found[m["model"]].append(m["engine"])
        return found

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by ``tritonserver`` and by its Python backend stubs (Linux /proc)."""
        totals = {"tritonserver": 0.0, "stubs": 0.0}
        if self._service is None or self._service.process is None:
            return totals
        group = self._service.process.pid  # Service starts Triton in its own session: pgid == pid
        tick = os.sysconf("SC_CLK_TCK")
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            comm_end = text.rfind(")")
            fields = text[comm_end + 2 :].split()
            if int(fields[2]) != group:  # fields[0] is the state; [2] the process group
                continue
            seconds = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
            totals["stubs" if "(triton_python" in text[:comm_end] else "tritonserver"] += seconds
        return totals

    def log_tail(self, lines: int = 40) -> str:
        """The end of Triton's log, for error messages."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def metric_values(text: str, name: str) -> list[float]:
    """Every sample of metric ``name`` in Prometheus text (one per GPU for the ``nv_gpu_*`` family)."""
    values = []
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            try:
                values.append(float(line.rsplit(" ", 1)[1]))
            except ValueError:
                continue
    return values
