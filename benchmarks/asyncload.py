"""A lean HTTP/1.1 load generator on asyncio streams: the cheap alternative to Locust (``--load-engine asyncio``).

Locust (``FastHttpUser``) spends about 0.2 ms of CPU per request on the 2-core development
machine, as much as Triton itself, so when it shares the cores with the servers it saturates
before they do and hides their differences. This engine sends the same requests from one
keep-alive connection per virtual user with pre-encoded request bytes and the minimal response
parser of :mod:`tritonio.http1`, for a fraction of that CPU (docs/benchmarks.md has the measured figures).

It is a drop-in for :mod:`benchmarks.locustfile`: :func:`benchmarks.loadrun.run_load` starts it as
its own process with the same plan file (``MODELOPS_BENCH_PLAN``: path, base64 bodies, headers per
body, version header, samples folder, pacing, steps, timeout), and every process writes the same
files (``samples-<pid>.bin``: flat float64 triples of start epoch s, latency ms, 1.0 ok / 0.0 failed;
``process-<pid>.json``: pid, role, test start, wall and CPU seconds, a CPU trace every second,
failures, versions answering, sample count), so the statistics and the saturation check downstream
do not know which engine ran. With ``--processes N`` above one the first process forks N sending
workers (role ``worker``) and keeps only time (role ``master``), like ``locust --processes``.

Load shapes, as the locustfile's: closed loop (each user sends its next request when the answer
has arrived), paced (each user starts a request every ``1 / pace_per_user`` seconds, or at once
when the last took longer: Locust's ``constant_throughput``), and steps of ``[users, seconds]``
(users added or removed at each step boundary, all at once). Outside steps users start at
``--spawn-rate`` per second. A user removed at a step boundary, or at the end, finishes the
request it is waiting for (at the end, up to the plan's timeout). Every step boundary is measured
from one start instant that all processes share and that every process file records.

Failures: an answer other than 200 is ``HTTP <status>``; a connection that fails is named by what
happened (``connection refused``, ``connection closed by the server``, ``timeout (30 s)``, ...) and
is opened again for the next request. A kept-alive connection the server closed while it was idle
is opened again and the request sent once more, as HTTP clients do, without counting a failure.

Standard library only (:mod:`tritonio.http1` is), plus uvloop when it is installed::

    MODELOPS_BENCH_PLAN=plan.json python -m benchmarks.asyncload --host http://127.0.0.1:8000 \\
        --users 16 --duration 10 --processes 2

Why one module of ~600 lines: it is the program of its own process (plan file in, sample files
out) and its parts -- plan, virtual user, step schedule, worker processes, recorder -- only make
sense together; split up, each file would import the others and the process's start would read
more files, for no reader who needs one part without the rest. The HTTP framing it shares with
every other client is :mod:`tritonio.http1`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import multiprocessing
import os
import random
import ssl
import sys
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks.samplefiles import write_process_files
from tritonio import http1
from tritonio.errors import BadResponse
from tritonio.http1 import read_response

log = logging.getLogger("benchmarks.asyncload")

MAX_ERROR_KINDS = 20
"""Distinct failure messages kept per process; the rest count as ``other``."""
TRACE_INTERVAL_S = 1.0
"""How often each process notes its CPU time (what :func:`benchmarks.stats.generator_health` reads)."""
START_DELAY_S = 0.2
"""Between the workers being ready and the shared start instant."""
READY_TIMEOUT_S = 60.0
CONNECT_BACKOFF_S = 0.05
"""Pause of a user after a connection could not be opened, so a server that is down is not spun on."""
HEAD_LIMIT = 1 << 20
"""Largest response head (status line and headers) accepted, bytes."""
USER_AGENT = "modelops-asyncload/1"


@dataclass(frozen=True)
class Plan:
    """What to send, as :func:`benchmarks.loadrun.run_load` writes it (the locustfile reads the same file)."""

    path: str
    bodies: tuple[bytes, ...]
    headers: tuple[dict[str, str], ...]
    version_header: str
    samples_dir: Path
    pace_per_user: float
    steps: tuple[tuple[int, float], ...]
    timeout_s: float

    @classmethod
    def read(cls, path: Path) -> Plan:
        """Read a plan file."""
        doc: dict[str, Any] = json.loads(path.read_text())
        bodies = tuple(base64.b64decode(b) for b in doc["bodies"])
        headers = tuple(doc.get("headers") or [{} for _ in bodies])
        if not bodies or len(headers) != len(bodies):
            raise ValueError(f"{path}: the plan needs bodies, and headers for each of them")
        return cls(
            path=doc["path"],
            bodies=bodies,
            headers=headers,
            version_header=doc.get("version_header") or "",
            samples_dir=Path(doc["samples_dir"]),
            pace_per_user=float(doc.get("pace_per_user") or 0.0),
            steps=tuple((int(u), float(s)) for u, s in (doc.get("steps") or [])),
            timeout_s=float(doc.get("timeout_s") or 30.0),
        )


@dataclass(frozen=True)
class RunSpec:
    """The load this run puts on the target (``steps`` in the plan win over ``users`` and ``duration_s``)."""

    base_url: str
    users: int = 1
    duration_s: float = 10.0
    spawn_rate: float = 100.0
    """Users started per second outside steps (0 = all at once)."""
    processes: int = 1


@dataclass(frozen=True)
class Endpoint:
    """Where a connection goes."""

    host: str
    port: int
    tls: bool


def endpoint_of(base_url: str) -> Endpoint:
    """Host, port and scheme of a base URL.

    Raises:
        ValueError: the URL is not http(s) or has no host.
    """
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s) base URL, got {base_url!r}")
    tls = parts.scheme == "https"
    return Endpoint(parts.hostname, parts.port or (443 if tls else 80), tls)


def encode_requests(plan: Plan, base_url: str) -> list[bytes]:
    """Every prepared body as the complete bytes of its HTTP/1.1 POST (request line, headers, body).

    The plan's headers go as they are (``Accept-Encoding: identity`` among them where the plan
    says so; this client never asks for compression itself); ``Host``, ``Content-Length`` and a
    ``User-Agent`` are added unless the plan sets them.
    """
    parts = urlsplit(base_url)
    default_port = 443 if parts.scheme == "https" else 80
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    authority = host if (parts.port or default_port) == default_port else f"{host}:{parts.port}"
    target = parts.path.rstrip("/") + (plan.path if plan.path.startswith("/") else "/" + plan.path)
    encoded: list[bytes] = []
    for body, headers in zip(plan.bodies, plan.headers, strict=True):
        given = {k.lower() for k in headers}
        fields: list[tuple[str, str]] = []
        if "host" not in given:
            fields.append(("Host", authority))
        if "user-agent" not in given:
            fields.append(("User-Agent", USER_AGENT))
        fields += [(k, v) for k, v in headers.items() if k.lower() not in ("content-length", "transfer-encoding")]
        encoded.append(http1.request_bytes("POST", target, fields, body))
    return encoded


def failure_name(exc: BaseException, timeout_s: float, timed_out: bool) -> str:
    """A short name of what went wrong with a request (one entry of the ``errors`` counts)."""
    if timed_out or isinstance(exc, TimeoutError):
        return f"timeout ({timeout_s:g} s)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, asyncio.IncompleteReadError | BrokenPipeError | EOFError):
        return "connection closed by the server"
    if isinstance(exc, ConnectionResetError | ConnectionAbortedError):
        return "connection reset"
    if isinstance(exc, BadResponse | asyncio.LimitOverrunError):
        return f"invalid HTTP response: {exc}"[:160]
    return f"{type(exc).__name__}: {exc}"[:160]


class Recorder:
    """Samples, failures and CPU use of one process, written once at the end (as the locustfile does)."""

    def __init__(self, out: Path, test_start_epoch: float) -> None:
        self.out = out
        self.test_start_epoch = test_start_epoch
        self.samples = array("d")
        self.errors: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self.cpu_trace: list[tuple[float, float]] = []
        self.started_wall = 0.0
        self.started_cpu = 0.0

    def start(self) -> None:
        """The test begins: wall and CPU time count from now."""
        self.started_wall = time.monotonic()
        self.started_cpu = time.process_time()
        self.trace()

    def trace(self) -> None:
        """Note this process's CPU seconds now."""
        self.cpu_trace.append((time.time(), time.process_time()))

    def fail(self, kind: str) -> None:
        """Count one failure (at most :data:`MAX_ERROR_KINDS` distinct names)."""
        if kind in self.errors or len(self.errors) < MAX_ERROR_KINDS:
            self.errors[kind] += 1
        else:
            self.errors["other"] += 1

    def write(self, role: str) -> dict[str, Any]:
        """Write ``samples-<pid>.bin`` and ``process-<pid>.json``; return the latter's content."""
        self.trace()
        wall = time.monotonic() - self.started_wall if self.started_wall else 0.0
        cpu = time.process_time() - self.started_cpu if self.started_wall else 0.0
        percent = [
            round(100.0 * (c1 - c0) / (t1 - t0), 1)
            for (t0, c0), (t1, c1) in zip(self.cpu_trace, self.cpu_trace[1:], strict=False)
            if t1 - t0 > 0.1
        ]
        facts = {
            "test_start_epoch": self.test_start_epoch,
            "wall_s": wall,
            "cpu_s": cpu,
            "cpu_monitor_percent": percent,
            "cpu_trace": self.cpu_trace,
            "errors": dict(self.errors),
            "versions": dict(self.versions),
        }
        return write_process_files(self.out, role, self.samples, facts)


class _User:
    """One virtual user: one keep-alive connection, its requests one after the other."""

    __slots__ = ("deadline", "sleeping", "start_at", "stopping", "task", "timed_out", "worker", "writer")

    def __init__(self, worker: Worker, start_at: float) -> None:
        self.worker = worker
        self.start_at = start_at
        """Loop time of this user's first request."""
        self.deadline = 0.0
        """perf_counter instant by which the request in flight must be answered (0: none in flight)."""
        self.timed_out = False
        self.stopping = False
        self.sleeping = False
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    def stop(self) -> None:
        """Finish the request in flight, then end (at once when waiting to send)."""
        self.stopping = True
        if self.sleeping and self.task is not None:
            self.task.cancel()

    def abort(self) -> None:
        """Drop the connection: the request in flight ran out of time (called by the watchdog)."""
        self.timed_out = True
        if self.writer is not None:
            self.writer.transport.abort()

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
            self.writer = None

    async def _sleep_until(self, when: float) -> None:
        loop = asyncio.get_running_loop()
        delay = when - loop.time()
        if delay > 0:
            self.sleeping = True
            try:
                await asyncio.sleep(delay)
            finally:
                self.sleeping = False

    async def run(self) -> None:
        """Send requests until stopped: closed loop, or paced."""
        w = self.worker
        rec = w.recorder
        requests = w.requests
        count = len(requests)
        i = w.rng.randrange(count)
        pace = w.plan.pace_per_user
        interval = 1.0 / pace if pace > 0 else 0.0
        timeout = w.plan.timeout_s
        version_header = w.version_header
        extend = rec.samples.extend
        perf = time.perf_counter
        epoch_offset = w.epoch_offset
        loop = asyncio.get_running_loop()
        try:
            await self._sleep_until(self.start_at)
            reader: asyncio.StreamReader | None = None
            while not self.stopping:
                data = requests[i]
                i = i + 1 if i + 1 < count else 0
                started_loop = loop.time()
                t0 = perf()
                self.deadline = t0 + timeout
                self.timed_out = False
                failure = ""
                status = 0
                version: bytes | None = None
                connect_failed = False
                try:
                    reused = self.writer is not None
                    if reader is None or self.writer is None:
                        try:
                            reader = await self._connect(timeout)
                        except OSError:
                            connect_failed = True
                            raise
                    assert self.writer is not None
                    self.writer.write(data)
                    try:
                        head, _body = await read_response(reader, extra=version_header)
                    except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
                        # A kept-alive connection the server had closed: open a new one, send again.
                        partial = getattr(exc, "partial", b"")
                        if not reused or self.timed_out or partial:
                            raise
                        self._close()
                        reader = await self._connect(timeout)
                        assert self.writer is not None
                        self.writer.write(data)
                        head, _body = await read_response(reader, extra=version_header)
                    status, version = head.status, head.extra
                    if not head.keep_alive:
                        self._close()
                        reader = None
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # every failure is a sample, and the user carries on
                    failure = failure_name(exc, timeout, self.timed_out)
                    self._close()
                    reader = None
                latency_ms = (perf() - t0) * 1000.0
                self.deadline = 0.0
                if status == 200 and not failure:
                    extend((t0 + epoch_offset, latency_ms, 1.0))
                    if version_header:
                        rec.versions[version.decode("latin-1") if version else "?"] += 1
                else:
                    extend((t0 + epoch_offset, latency_ms, 0.0))
                    rec.fail(failure or f"HTTP {status}")
                if interval:
                    await self._sleep_until(started_loop + interval)
                elif connect_failed:
                    await self._sleep_until(loop.time() + CONNECT_BACKOFF_S)
        finally:
            self.deadline = 0.0
            self._close()
            w.live.discard(self)

    async def _connect(self, timeout: float) -> asyncio.StreamReader:
        ep = self.worker.endpoint
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                ep.host,
                ep.port,
                ssl=self.worker.tls,
                server_hostname=ep.host if ep.tls else None,
                limit=HEAD_LIMIT,
            )
        self.writer = writer
        return reader


def user_schedule(spec: RunSpec, plan: Plan, index: int, processes: int) -> list[tuple[float, int]]:
    """``[(seconds after the start, users of this process from then on)]`` for process ``index`` of ``processes``.

    Users are numbered over all processes and dealt round-robin (user ``u`` runs in process
    ``u % processes``). Steps change the count at each step's start; otherwise user ``u`` starts
    at ``u / spawn_rate`` seconds.
    """

    def mine(users: int) -> int:
        return max(0, -(-(users - index) // processes))

    if plan.steps:
        events: list[tuple[float, int]] = []
        offset = 0.0
        for users, seconds in plan.steps:
            events.append((offset, mine(users)))
            offset += seconds
        return events
    local = mine(spec.users)
    rate = spec.spawn_rate
    return [((k * processes + index) / rate if rate > 0 else 0.0, k + 1) for k in range(local)]


def total_seconds(spec: RunSpec, plan: Plan) -> float:
    """How long the load lasts."""
    return sum(s for _, s in plan.steps) if plan.steps else spec.duration_s


class Worker:
    """The users of one process, the watchdog of their timeouts, and the CPU trace."""

    def __init__(self, plan: Plan, spec: RunSpec, index: int, processes: int, recorder: Recorder) -> None:
        self.plan = plan
        self.spec = spec
        self.index = index
        self.processes = processes
        self.recorder = recorder
        self.requests = encode_requests(plan, spec.base_url)
        self.endpoint = endpoint_of(spec.base_url)
        self.tls: ssl.SSLContext | None = ssl.create_default_context() if self.endpoint.tls else None
        self.version_header = plan.version_header.lower().encode("latin-1")
        self.rng = random.Random(os.getpid() ^ int(time.time_ns()))
        self.active: list[_User] = []
        """Users of the current step, in the order they were added."""
        self.live: set[_User] = set()
        """Users whose task has not ended (the active ones and those finishing their last request)."""
        self.tasks: set[asyncio.Task[None]] = set()
        self.epoch_offset = 0.0
        """time.time() - time.perf_counter(), so a sample's epoch start costs one clock read."""

    async def run(self) -> None:
        """Wait for the shared start, run the schedule, stop the users, and keep the CPU trace meanwhile."""
        loop = asyncio.get_running_loop()
        plan, spec = self.plan, self.spec
        self.epoch_offset = time.time() - time.perf_counter()
        origin = loop.time() + (self.recorder.test_start_epoch - time.time())
        await asyncio.sleep(max(0.0, origin - loop.time()))
        self.recorder.start()
        helpers = [asyncio.create_task(self._trace()), asyncio.create_task(self._watchdog())]
        try:
            for offset, users in user_schedule(spec, plan, self.index, self.processes):
                if plan.steps:
                    await asyncio.sleep(max(0.0, origin + offset - loop.time()))
                self._resize(users, origin + offset)
            await asyncio.sleep(max(0.0, origin + total_seconds(spec, plan) - loop.time()))
            for user in self.active:
                user.stop()
            self.active = []
            if self.tasks:
                _, late = await asyncio.wait(self.tasks, timeout=max(1.0, plan.timeout_s))
                for task in late:
                    task.cancel()
                await asyncio.gather(*self.tasks, return_exceptions=True)
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    def _resize(self, users: int, start_at: float) -> None:
        while len(self.active) < users:
            user = _User(self, start_at)
            user.task = asyncio.create_task(user.run())
            self.tasks.add(user.task)
            self.live.add(user)
            self.active.append(user)
        while len(self.active) > users:
            self.active.pop().stop()

    async def _trace(self) -> None:
        while True:
            await asyncio.sleep(TRACE_INTERVAL_S)
            self.recorder.trace()

    async def _watchdog(self) -> None:
        """Drop the connection of every request that has waited longer than the timeout."""
        period = min(1.0, max(0.05, self.plan.timeout_s / 10))
        while True:
            await asyncio.sleep(period)
            now = time.perf_counter()
            # Users stopped at a step boundary may still be finishing a request: all live ones count.
            for user in [u for u in self.live if u.deadline and now > u.deadline]:
                user.abort()


def _new_loop() -> asyncio.AbstractEventLoop:
    """An event loop: uvloop's when it is installed, asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run_worker(plan: Plan, spec: RunSpec, index: int, processes: int, test_start_epoch: float, role: str) -> int:
    """Run this process's share of the users from the shared start instant; write its files; return sent requests."""
    recorder = Recorder(plan.samples_dir, test_start_epoch)
    worker = Worker(plan, spec, index, processes, recorder)
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        runner.run(worker.run())
    meta = recorder.write(role)
    share = meta["cpu_s"] / meta["wall_s"] if meta["wall_s"] else 0.0
    log.info(
        "%s %d: %d requests (%d failed) in %.1f s, %.0f%% of a core",
        role,
        index,
        meta["samples"],
        sum(recorder.errors.values()),
        meta["wall_s"],
        share * 100,
    )
    return int(meta["samples"])


def _worker_entry(plan: Plan, spec: RunSpec, index: int, processes: int, conn: Connection) -> None:
    """A forked sending process: say it is ready, receive the start instant, run."""
    try:
        conn.send("ready")
        start = conn.recv()
    finally:
        conn.close()
    run_worker(plan, spec, index, processes, float(start), "worker")


def run(plan: Plan, spec: RunSpec) -> int:
    """Run the load: in this process (``processes`` 1), or from forked workers; return the exit code."""
    if spec.processes <= 1:
        run_worker(plan, spec, 0, 1, time.time() + START_DELAY_S, "local")
        return 0
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx: Any = multiprocessing.get_context(method)
    workers: list[Any] = []
    conns: list[Connection] = []
    for index in range(spec.processes):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_entry, args=(plan, spec, index, spec.processes, child), name=f"w{index}")
        proc.start()
        child.close()
        workers.append(proc)
        conns.append(parent)
    try:
        for conn in conns:
            if not conn.poll(READY_TIMEOUT_S):
                raise RuntimeError("a load worker did not start in time")
            conn.recv()
    except (RuntimeError, EOFError, OSError) as exc:
        log.error("%s", exc)
        for proc in workers:
            proc.kill()
        return 2
    start = time.time() + START_DELAY_S
    for conn in conns:
        conn.send(start)
        conn.close()
    recorder = Recorder(plan.samples_dir, start)
    time.sleep(max(0.0, start - time.time()))
    recorder.start()
    while any(p.is_alive() for p in workers):
        for proc in workers:
            proc.join(TRACE_INTERVAL_S / len(workers))
        recorder.trace()
    recorder.write("master")
    failed = [p.name for p in workers if p.exitcode != 0]
    if failed:
        log.error("load workers %s failed (exit codes %s)", failed, [p.exitcode for p in workers])
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.asyncload``: read the plan named by ``MODELOPS_BENCH_PLAN`` and run it."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.asyncload", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--plan", type=Path, help="plan file (default: $MODELOPS_BENCH_PLAN)")
    parser.add_argument("--host", required=True, help="base URL of the target, e.g. http://127.0.0.1:8000")
    parser.add_argument("--users", type=int, default=1, help="concurrent users (without steps in the plan)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load (without steps in the plan)")
    parser.add_argument("--spawn-rate", type=float, default=100.0, help="users started per second (0: all at once)")
    parser.add_argument("--processes", type=int, default=1, help="sending processes (forked)")
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    plan_path = args.plan or os.environ.get("MODELOPS_BENCH_PLAN")
    if not plan_path:
        parser.error("no plan: pass --plan or set MODELOPS_BENCH_PLAN")
    plan = Plan.read(Path(plan_path))
    spec = RunSpec(
        base_url=args.host,
        users=max(0, args.users),
        duration_s=max(0.0, args.duration),
        spawn_rate=max(0.0, args.spawn_rate),
        processes=max(1, args.processes),
    )
    endpoint_of(spec.base_url)
    return run(plan, spec)


if __name__ == "__main__":
    sys.exit(main())
