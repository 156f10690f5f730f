"""Locust load test of one HTTP target: the gateway's ``/predict``, Triton's infer, or ``mlflow models serve``.

``modelops bench`` (:mod:`benchmarks.loadrun`) runs this file with Locust as its own process
(importing Locust next to torch or MLflow crashed, see GROUND.md) and describes the run in a plan
file named by ``MODELOPS_BENCH_PLAN`` (:class:`benchmarks.loadrun.Plan`): the path to POST to,
pre-encoded request bodies with their headers, the pacing, the load steps, and where to write
samples. Bodies are prepared beforehand so the load generator spends its CPU on the sockets.

Every process that sends requests keeps every sample (start time, latency, success) and writes
them at the end of the test with its own CPU use, so the driver computes exact percentiles and can
tell when the load generator itself was the bottleneck (files: :mod:`benchmarks.samplefiles`). This
file needs only the standard library, Locust and that standard-library module.
"""

from __future__ import annotations

import base64
import json
import os
import random
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, LoadTestShape, constant, constant_throughput, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from benchmarks.samplefiles import write_process_files

_PLAN: dict[str, Any] = json.loads(Path(os.environ["MODELOPS_BENCH_PLAN"]).read_text())
_BODIES: list[bytes] = [base64.b64decode(b) for b in _PLAN["bodies"]]
_HEADERS: list[dict[str, str]] = _PLAN["headers"]
_PATH: str = _PLAN["path"]
_VERSION_HEADER: str = _PLAN.get("version_header") or ""
_OUT = Path(_PLAN["samples_dir"])
_MAX_ERROR_KINDS = 20


class _Recorder:
    """Samples and CPU use of this process; written once when the test stops."""

    def __init__(self) -> None:
        self.samples = array("d")  # flat triples: start epoch s, latency ms, 1.0 ok / 0.0 failed
        self.errors: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self.cpu_peaks: list[float] = []
        self.cpu_trace: list[tuple[float, float]] = []  # (epoch s, CPU s of this process), every second
        self.started_wall = 0.0
        self.started_cpu = 0.0
        self.started_epoch = 0.0

    def start(self) -> None:
        self.started_wall = time.monotonic()
        self.started_cpu = time.process_time()
        self.started_epoch = time.time()
        gevent.spawn(self._trace_cpu)

    def _trace_cpu(self) -> None:
        while True:
            self.cpu_trace.append((time.time(), time.process_time()))
            gevent.sleep(1.0)

    def write(self, role: str) -> None:
        wall = time.monotonic() - self.started_wall if self.started_wall else 0.0
        cpu = time.process_time() - self.started_cpu if self.started_wall else 0.0
        facts = {
            "test_start_epoch": self.started_epoch,
            "wall_s": wall,
            "cpu_s": cpu,
            "cpu_monitor_percent": self.cpu_peaks,
            "cpu_trace": [*self.cpu_trace, (time.time(), time.process_time())],
            "errors": dict(self.errors),
            "versions": dict(self.versions),
        }
        write_process_files(_OUT, role, self.samples, facts)


_REC = _Recorder()


def _role(environment: Environment) -> str:
    if isinstance(environment.runner, MasterRunner):
        return "master"
    if isinstance(environment.runner, WorkerRunner):
        return "worker"
    return "local"


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def _on_test_start(environment: Environment, **_kwargs: Any) -> None:
    _REC.start()


@events.test_stop.add_listener  # type: ignore[untyped-decorator]
def _on_test_stop(environment: Environment, **_kwargs: Any) -> None:
    _REC.write(_role(environment))


@events.usage_monitor.add_listener  # type: ignore[untyped-decorator]
def _on_usage(environment: Environment, cpu_usage: float, **_kwargs: Any) -> None:
    _REC.cpu_peaks.append(float(cpu_usage))


@events.request.add_listener  # type: ignore[untyped-decorator]
def _on_request(response_time: float, exception: BaseException | None, start_time: float = 0.0, **_kwargs: Any) -> None:
    _REC.samples.extend((start_time, response_time, 0.0 if exception else 1.0))
    if exception is not None:
        kind = str(exception)[:160]
        if kind in _REC.errors or len(_REC.errors) < _MAX_ERROR_KINDS:
            _REC.errors[kind] += 1
        else:
            _REC.errors["other"] += 1


class ModelUser(FastHttpUser):
    """Sends the prepared bodies round-robin (from a random offset), closed loop or paced."""

    wait_time = constant_throughput(_PLAN["pace_per_user"]) if _PLAN.get("pace_per_user") else constant(0)
    network_timeout = float(_PLAN.get("timeout_s", 30.0))
    connection_timeout = float(_PLAN.get("timeout_s", 30.0))

    def on_start(self) -> None:
        """Pick this user's starting body so users do not send the same bodies in step."""
        self._next = random.randrange(len(_BODIES))

    @task
    def predict(self) -> None:
        """POST one prepared body; anything but 200 is a failure named by its status."""
        i = self._next
        self._next = (i + 1) % len(_BODIES)
        # geventhttpclient sends bytes as they are; Locust's annotation says str.
        body: Any = _BODIES[i]
        with self.client.post(_PATH, data=body, headers=_HEADERS[i], catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
            elif _VERSION_HEADER:
                _REC.versions[resp.headers.get(_VERSION_HEADER) or "?"] += 1


def _step_ends(steps: list[list[float]]) -> list[tuple[float, int]]:
    """``[(end second, users)]`` of ``[[users, seconds], ...]``."""
    ends: list[tuple[float, int]] = []
    elapsed = 0.0
    for users, seconds in steps:
        elapsed += float(seconds)
        ends.append((elapsed, int(users)))
    return ends


if _PLAN.get("steps"):

    class StepLoad(LoadTestShape):
        """Closed-loop load in steps of ``[users, seconds]``, each spawned at once; then stop."""

        step_ends = _step_ends(_PLAN["steps"])

        def tick(self) -> tuple[int, float] | None:
            """The step the run is in now, or None when the last one has ended."""
            now = self.get_run_time()
            for end, users in self.step_ends:
                if now < end:
                    return users, float(max(users, 100))
            return None
