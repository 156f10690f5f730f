"""Run a load generator as its own process against one target and collect every sample.

The driver imports no load generator: it writes a plan (target path, pre-encoded bodies, pacing,
load steps), starts the engine the :class:`Load` names with it, and reads back the samples and CPU
use each of its processes wrote. Two engines read the same plan and write the same files:

- ``locust``: ``python -m locust -f benchmarks/locustfile.py`` (:mod:`benchmarks.locustfile`), what
  the release gate uses;
- ``asyncio``: ``python -m benchmarks.asyncload`` (:mod:`benchmarks.asyncload`), raw keep-alive
  HTTP/1.1 on asyncio streams, several times less CPU per request than Locust, for when the load
  generator shares the cores with the servers it measures.

With ``processes`` above one, the engine forks that many sending workers, for when one core of
load generation is not enough; :func:`benchmarks.stats.generator_health` says when it was not.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from benchmarks.machine import CLOCK_TICKS, process_ticks, read_cpu_times, server_pids
from benchmarks.payloads import PreparedRequest
from benchmarks.samplefiles import PROCESS_GLOB, SAMPLES_GLOB
from benchmarks.stats import GeneratorHealth, MachineTrace, Samples, generator_health

log = logging.getLogger(__name__)

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
REPO_ROOT = Path(__file__).resolve().parent.parent
"""Where ``benchmarks`` is importable from (``python -m benchmarks.asyncload``)."""

LoadEngine = Literal["locust", "asyncio"]
ENGINES: tuple[LoadEngine, ...] = ("locust", "asyncio")
"""Load generators :func:`run_load` can run (``--load-engine``)."""
_ENGINE_NAMES = {"locust": "Locust", "asyncio": "the asyncio load generator"}


class LoadRunFailed(RuntimeError):
    """The load generator did not run or produced no samples; the message names its log file."""


@dataclass(frozen=True)
class HttpTarget:
    """Where requests go and what they carry."""

    name: str
    base_url: str
    path: str
    requests: Sequence[PreparedRequest]
    version_header: str = ""
    """Response header that names the model version that answered (the gateway's)."""
    server_ports: tuple[int, ...] = ()
    """Ports of the servers on the request's path, to account their CPU use (0 = unknown)."""

    @property
    def rows_per_request(self) -> int:
        """Records in each request (every prepared request carries the same number)."""
        return self.requests[0].rows if self.requests else 1


@dataclass(frozen=True)
class Load:
    """The load of one run: closed loop (``pace_per_user`` 0), paced, or in steps; and which engine sends it."""

    users: int
    duration_s: float
    spawn_rate: float = 100.0
    processes: int = 1
    pace_per_user: float = 0.0
    """Requests per second each user sends (0 = as fast as answers come back)."""
    steps: tuple[tuple[int, float], ...] = ()
    """``(users, seconds)`` steps; when set, ``users`` and ``duration_s`` are ignored."""
    timeout_s: float = 30.0
    engine: LoadEngine = "locust"
    """The load generator: ``locust`` or ``asyncio`` (:data:`ENGINES`)."""

    @property
    def total_s(self) -> float:
        """How long the run lasts."""
        return sum(s for _, s in self.steps) if self.steps else self.duration_s


@dataclass
class LoadResult:
    """Samples of one run and what the load generator went through."""

    samples: Samples
    health: GeneratorHealth
    """The load generator over the whole run."""
    log_path: Path
    machine_trace: MachineTrace
    """CPU readings of the machine and of the servers under test, about every half second."""

    def health_in(self, t_from: float, t_to: float) -> GeneratorHealth:
        """The load generator (and who used the CPUs) between two instants, e.g. one load step."""
        return generator_health(self.samples.processes, self.machine_trace, (t_from, t_to), CLOCK_TICKS)


def run_load(target: HttpTarget, load: Load, workdir: Path) -> LoadResult:
    """Run ``load.engine`` against ``target`` with ``load``; return every sample.

    Raises:
        LoadRunFailed: the load generator failed to start, crashed, or sent nothing.
        ValueError: ``load.engine`` is not one of :data:`ENGINES`.
    """
    if load.engine not in ENGINES:
        raise ValueError(f"unknown load engine {load.engine!r}; choose from {', '.join(ENGINES)}")
    workdir.mkdir(parents=True, exist_ok=True)
    samples_dir = workdir / "samples"
    samples_dir.mkdir(exist_ok=True)
    for old in samples_dir.iterdir():
        old.unlink()
    plan = {
        "path": target.path,
        "bodies": [base64.b64encode(r.body).decode() for r in target.requests],
        "headers": [r.headers for r in target.requests],
        "version_header": target.version_header,
        "samples_dir": str(samples_dir.resolve()),
        "pace_per_user": load.pace_per_user,
        "steps": [list(s) for s in load.steps] or None,
        "timeout_s": load.timeout_s,
    }
    plan_path = workdir / "plan.json"
    plan_path.write_text(json.dumps(plan))
    env = dict(os.environ, MODELOPS_BENCH_PLAN=str(plan_path.resolve()))
    # Both engines import ``benchmarks`` modules (the locustfile: benchmarks.samplefiles).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    if load.engine == "asyncio":
        command = _asyncload_command(target, load)
        log_path = workdir / "asyncload.log"
    else:
        command = _locust_command(target, load)
        log_path = workdir / "locust.log"
    engine = _ENGINE_NAMES[load.engine]
    shape = f"steps {list(load.steps)}" if load.steps else f"{load.users} users for {load.total_s:.0f} s"
    pacing = f", {load.pace_per_user:g} req/s per user" if load.pace_per_user else ""
    log.info("load (%s): %s -> %s%s, %s%s", load.engine, target.name, target.base_url, target.path, shape, pacing)
    servers = server_pids(target.server_ports)
    trace: MachineTrace = []
    deadline = time.monotonic() + load.total_s + 120
    with log_path.open("wb") as out:
        # Its own session, so a run that hangs is stopped with the workers the engine forked.
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
        try:
            while proc.poll() is None:
                _read_usage(trace, servers)
                if time.monotonic() > deadline:
                    raise LoadRunFailed(f"{engine} did not finish in time; see {log_path}")
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    _read_usage(trace, servers)
    samples = _collect(samples_dir, target.rows_per_request)
    if samples.start.size == 0:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise LoadRunFailed(f"{engine} (exit code {proc.returncode}) sent no request; see {log_path}:\n{tail}")
    health = generator_health(samples.processes, trace, None, CLOCK_TICKS)
    if health.saturated:
        log.warning("%s: %s", target.name, health.note)
    return LoadResult(samples=samples, health=health, log_path=log_path, machine_trace=trace)


def _locust_command(target: HttpTarget, load: Load) -> list[str]:
    """``python -m locust`` headless on the locustfile; the plan comes through the environment."""
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        target.base_url,
        "--only-summary",
        "--stop-timeout",
        str(max(1, int(load.timeout_s))),
        "--loglevel",
        "WARNING",
    ]
    if not load.steps:
        command += ["-u", str(load.users), "-r", str(load.spawn_rate), "-t", f"{max(1, round(load.duration_s))}s"]
    if load.processes > 1:
        command += ["--processes", str(load.processes)]
    return command


def _asyncload_command(target: HttpTarget, load: Load) -> list[str]:
    """``python -m benchmarks.asyncload``; the plan comes through the environment."""
    return [
        sys.executable,
        "-m",
        "benchmarks.asyncload",
        "--host",
        target.base_url,
        "--users",
        str(load.users),
        "--duration",
        repr(float(load.duration_s)),
        "--spawn-rate",
        repr(float(load.spawn_rate)),
        "--processes",
        str(max(1, load.processes)),
    ]


def _read_usage(trace: MachineTrace, servers: list[int]) -> None:
    reading = read_cpu_times()
    if reading is not None:
        trace.append((time.time(), reading[0], reading[1], process_ticks(servers)))


def _collect(samples_dir: Path, rows_per_request: int) -> Samples:
    """Merge what every process of the load generator wrote."""
    metas = [json.loads(p.read_text()) for p in sorted(samples_dir.glob(PROCESS_GLOB))]
    arrays = [np.fromfile(p, dtype=np.float64) for p in sorted(samples_dir.glob(SAMPLES_GLOB))]
    triples = np.concatenate(arrays) if arrays else np.empty(0)
    starts = [m["test_start_epoch"] for m in metas if m.get("role") in ("master", "local") and m["test_start_epoch"]]
    if not starts:
        starts = [m["test_start_epoch"] for m in metas if m["test_start_epoch"]]
    test_start = min(starts) if starts else float(triples[0::3].min(initial=0.0))
    samples = Samples.from_arrays(triples, test_start, rows_per_request)
    samples.processes = metas
    for m in metas:
        samples.errors.update(m.get("errors", {}))
        samples.versions.update(m.get("versions", {}))
    return samples


def merged_errors(samples: Samples, limit: int = 5) -> list[tuple[str, int]]:
    """The most frequent failure messages."""
    return Counter(samples.errors).most_common(limit)
