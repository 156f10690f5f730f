"""The asyncio load generator (``--load-engine asyncio``) through ``run_load``, against a small local server.

The server (raw asyncio in a thread) answers keep-alive HTTP/1.1 and can be told to misbehave:
answer 500, answer chunked, close the connection with or without saying so, cut an answer in the
middle, or never answer. Runs last about two seconds, with two sending processes, as the
comparison runs them; bounds are loose because the machine is small and shared.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from benchmarks.asyncload import (
    Plan,
    RunSpec,
    encode_requests,
    failure_name,
    user_schedule,
)
from benchmarks.loadrun import HttpTarget, Load, LoadResult, run_load
from benchmarks.payloads import PreparedRequest
from benchmarks.stats import window_stats
from tritonio.errors import BadResponse

ANSWER = b'{"predictions": [{"y": 1.0}]}'


@dataclass
class Behaviour:
    """How the local server answers the n-th request (counted from 1 over all connections)."""

    fail_every: int = 0
    """Answer 500 to every n-th request."""
    chunked: bool = False
    close_every: int = 0
    """Close the connection after every n-th answer, saying ``Connection: close``."""
    silent_close_every: int = 0
    """Close the connection after every n-th answer without saying so (a kept-alive connection gone stale)."""
    cut_every: int = 0
    """Send half a status line of every n-th answer, then close."""
    hang_every: int = 0
    """Never answer every n-th request."""
    delay_s: float = 0.0


@dataclass
class Counts:
    """What the server saw."""

    requests: int = 0
    connections: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    bodies: list[bytes] = field(default_factory=list)


class LocalServer:
    """A keep-alive HTTP/1.1 server on a free port, on its own event loop in a thread."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.counts = Counts()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self.loop
        ).result()
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def close(self) -> None:
        """Stop serving, end every handler, stop the loop."""

        async def shutdown() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        b, c = self.behaviour, self.counts
        c.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                low = head.lower()
                at = low.index(b"\r\ncontent-length:") + 17
                body = await reader.readexactly(int(low[at : low.index(b"\r\n", at)]))
                c.requests += 1
                n = c.requests
                if n <= 3:
                    c.bodies.append(head + body)
                c.in_flight += 1
                c.max_in_flight = max(c.max_in_flight, c.in_flight)
                try:
                    if b.delay_s:
                        await asyncio.sleep(b.delay_s)
                    if b.hang_every and n % b.hang_every == 0:
                        await asyncio.sleep(3600)
                    if b.cut_every and n % b.cut_every == 0:
                        writer.write(b"HTTP/1.1 20")
                        await writer.drain()
                        return
                    close = bool(b.close_every and n % b.close_every == 0)
                    silent = bool(b.silent_close_every and n % b.silent_close_every == 0)
                    writer.write(self._answer(500 if b.fail_every and n % b.fail_every == 0 else 200, close))
                    await writer.drain()
                finally:
                    c.in_flight -= 1
                if close or silent:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _answer(self, status: int, close: bool) -> bytes:
        reason = b"OK" if status == 200 else b"Internal Server Error"
        head = [b"HTTP/1.1 %d %s" % (status, reason), b"Content-Type: application/json", b"X-Model-Version: 3"]
        if close:
            head.append(b"Connection: close")
        if not self.behaviour.chunked:
            head.append(b"Content-Length: %d" % len(ANSWER))
            return b"\r\n".join(head) + b"\r\n\r\n" + ANSWER
        head.append(b"Transfer-Encoding: chunked")
        first, rest = ANSWER[:7], ANSWER[7:]
        chunks = b"%x;ext=1\r\n%s\r\n%x\r\n%s\r\n0\r\nX-Trailer: yes\r\n\r\n" % (len(first), first, len(rest), rest)
        return b"\r\n".join(head) + b"\r\n\r\n" + chunks


@pytest.fixture
def serve() -> Iterator[type[LocalServer]]:
    """Start servers with a behaviour; every one is stopped after the test."""
    started: list[LocalServer] = []

    class Started(LocalServer):
        def __init__(self, behaviour: Behaviour) -> None:
            super().__init__(behaviour)
            started.append(self)

    yield Started
    for server in started:
        server.close()


BODY = PreparedRequest(b'{"x": 0.5}', {"Content-Type": "application/json", "Accept-Encoding": "identity"}, 1)


def _run(url: str, tmp_path: Path, **load: Any) -> LoadResult:
    """Two seconds of 4 users from 2 processes unless told otherwise, with the asyncio engine."""
    target = HttpTarget("local", url, "/predict", [BODY], "x-model-version")
    options: dict[str, Any] = {"users": 4, "duration_s": 2.0, "processes": 2, **load}
    return run_load(target, Load(**options, engine="asyncio"), tmp_path)


# -- whole runs through run_load ---------------------------------------------------------------------


def test_closed_loop_over_two_processes_keeps_every_sample(serve: type[LocalServer], tmp_path: Path) -> None:
    server = serve(Behaviour())
    result = _run(server.url, tmp_path, users=8)
    samples = result.samples
    n = samples.start.size
    assert n > 200 and samples.ok.all()
    assert dict(samples.versions) == {"3": n}
    assert server.counts.requests == n
    assert server.counts.connections == 8  # one keep-alive connection per user
    roles = sorted(p["role"] for p in samples.processes)
    assert roles == ["master", "worker", "worker"]
    master = next(p for p in samples.processes if p["role"] == "master")
    workers = [p for p in samples.processes if p["role"] == "worker"]
    assert samples.test_start == master["test_start_epoch"]
    assert all(w["test_start_epoch"] == samples.test_start for w in workers)
    assert all(w["samples"] > 50 for w in workers) and sum(w["samples"] for w in workers) == n
    assert all(len(p["cpu_trace"]) >= 2 and p["wall_s"] >= 1.9 for p in samples.processes)
    assert samples.start.min() >= samples.test_start - 0.005
    assert samples.end.max() <= samples.test_start + 2.0 + 0.5
    assert result.health.processes == 2 and result.log_path.name == "asyncload.log"
    sent = server.counts.bodies[0]
    assert sent.startswith(b"POST /predict HTTP/1.1\r\n") and b"\r\nAccept-Encoding: identity\r\n" in sent
    assert sent.endswith(b'\r\n\r\n{"x": 0.5}')


def test_failures_are_counted_and_the_users_carry_on(serve: type[LocalServer], tmp_path: Path) -> None:
    server = serve(Behaviour(fail_every=5, cut_every=7))
    samples = _run(server.url, tmp_path).samples
    n = samples.start.size
    assert n > 100
    assert 0.25 < 1 - samples.ok.mean() < 0.45  # 1/5 + 1/7 - 1/35
    assert samples.errors["HTTP 500"] > 0.1 * n
    assert samples.errors["connection closed by the server"] > 0.08 * n
    assert set(samples.errors) == {"HTTP 500", "connection closed by the server"}
    assert server.counts.connections > n / 10  # every cut answer costs a new connection
    assert sum(samples.versions.values()) == int(samples.ok.sum())
    late = samples.ok[samples.end > samples.test_start + 1.5]
    assert late.size and late.mean() > 0.5  # still sending after hundreds of failures


def test_chunked_answers_are_read_whole(serve: type[LocalServer], tmp_path: Path) -> None:
    server = serve(Behaviour(chunked=True, fail_every=10))
    samples = _run(server.url, tmp_path).samples
    n = samples.start.size
    assert n > 100 and 0.05 < 1 - samples.ok.mean() < 0.15
    assert set(samples.errors) == {"HTTP 500"}
    assert samples.versions["3"] == int(samples.ok.sum())
    assert server.counts.connections == 4  # the chunked body (and its trailer) left the connection reusable


def test_servers_that_close_connections_are_survived(serve: type[LocalServer], tmp_path: Path) -> None:
    server = serve(Behaviour(close_every=3, silent_close_every=4))
    samples = _run(server.url, tmp_path).samples
    n = samples.start.size
    assert n > 100
    assert samples.ok.all(), samples.errors  # a stale connection is opened again and the request sent again
    assert server.counts.connections >= n / 3


def test_paced_users_keep_their_rate(serve: type[LocalServer], tmp_path: Path) -> None:
    server = serve(Behaviour())
    result = _run(server.url, tmp_path, users=4, pace_per_user=10.0, spawn_rate=100.0)
    samples = result.samples
    n = samples.start.size
    assert 55 <= n <= 90 and samples.ok.all()  # 4 users x 10 req/s x 2 s = 80
    per_second = window_stats(samples, samples.test_start + 0.5, samples.test_start + 1.5).throughput_rps
    assert 30 <= per_second <= 50
    assert server.counts.connections == 4


def test_steps_add_and_remove_users_at_each_boundary(serve: type[LocalServer], tmp_path: Path) -> None:
    server = serve(Behaviour(delay_s=0.02))
    steps = ((2, 1.0), (6, 1.0), (1, 1.0))
    samples = _run(server.url, tmp_path, users=6, duration_s=0, steps=steps).samples
    t0 = samples.test_start
    rps = [window_stats(samples, t0 + i + 0.3, t0 + i + 1.0).throughput_rps for i in range(3)]
    assert samples.ok.all()
    assert 2.0 < rps[1] / rps[0] < 4.0, rps  # 2 -> 6 users on a server that takes 20 ms
    assert 0.25 < rps[2] / rps[0] < 0.75, rps  # 6 -> 1 user
    assert server.counts.max_in_flight == 6 and server.counts.connections == 6
    assert samples.end.max() < t0 + 3.0 + 0.3


def test_requests_that_are_never_answered_time_out(serve: type[LocalServer], tmp_path: Path) -> None:
    server = serve(Behaviour(hang_every=25))
    samples = _run(server.url, tmp_path, users=2, processes=1, timeout_s=0.5).samples
    timeouts = samples.errors["timeout (0.5 s)"]
    assert timeouts >= 2 and set(samples.errors) == {"timeout (0.5 s)"}
    failed = samples.latency_ms[~samples.ok]
    assert failed.min() >= 500 and failed.max() < 800
    assert samples.ok.sum() > 50
    assert [p["role"] for p in samples.processes] == ["local"]


def test_a_server_that_is_down_is_a_run_of_failures(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    samples = _run(f"http://127.0.0.1:{port}", tmp_path, users=2, duration_s=1.0).samples
    assert samples.start.size > 5 and not samples.ok.any()
    assert set(samples.errors) == {"connection refused"}


# -- pieces ------------------------------------------------------------------------------------------


def test_requests_are_encoded_once_with_the_plans_headers(tmp_path: Path) -> None:
    plan = Plan(
        path="/v2/infer",
        bodies=(b"abc", b""),
        headers=({"Inference-Header-Content-Length": "3", "Content-Length": "99"}, {}),
        version_header="",
        samples_dir=tmp_path,
        pace_per_user=0.0,
        steps=(),
        timeout_s=30.0,
    )
    first, second = encode_requests(plan, "http://example.test:8000/prefix/")
    assert first == (
        b"POST /prefix/v2/infer HTTP/1.1\r\nHost: example.test:8000\r\nUser-Agent: modelops-asyncload/1\r\n"
        b"Inference-Header-Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc"
    )
    assert second.endswith(b"Content-Length: 0\r\n\r\n")
    assert encode_requests(plan, "http://example.test/")[1].startswith(
        b"POST /v2/infer HTTP/1.1\r\nHost: example.test\r\n"
    )


def test_users_are_dealt_over_the_processes(tmp_path: Path) -> None:
    plan = Plan("/p", (b"",), ({},), "", tmp_path, 0.0, ((5, 1.0), (2, 2.0), (8, 1.0)), 30.0)
    spec = RunSpec("http://h", processes=3)
    schedules = [user_schedule(spec, plan, i, 3) for i in range(3)]
    assert [[n for _, n in s] for s in schedules] == [[2, 1, 3], [2, 1, 3], [1, 0, 2]]
    assert [t for t, _ in schedules[0]] == [0.0, 1.0, 3.0]
    flat = Plan("/p", (b"",), ({},), "", tmp_path, 0.0, (), 30.0)
    spawned = user_schedule(RunSpec("http://h", users=5, spawn_rate=10.0, processes=2), flat, 1, 2)
    assert spawned == [(0.1, 1), (0.3, 2)]  # users 1 and 3 of 0..4, at 10 per second
    assert user_schedule(RunSpec("http://h", users=3, spawn_rate=0.0), flat, 0, 1) == [(0.0, 1), (0.0, 2), (0.0, 3)]


def test_failures_are_named_by_kind() -> None:
    assert failure_name(ConnectionRefusedError(111, "x"), 30, False) == "connection refused"
    assert failure_name(asyncio.IncompleteReadError(b"", 10), 30, False) == "connection closed by the server"
    assert failure_name(ConnectionResetError(), 30, False) == "connection reset"
    assert failure_name(ConnectionResetError(), 2.5, True) == "timeout (2.5 s)"
    assert failure_name(TimeoutError(), 30, False) == "timeout (30 s)"
    assert failure_name(BadResponse("bad status line"), 30, False).startswith("invalid HTTP response")
