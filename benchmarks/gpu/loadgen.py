"""Closed-loop HTTP load generator: worker processes, each driving keep-alive connections on asyncio.

Every connection keeps exactly one request in flight (closed loop), so "concurrency" is the
number of connections, spread over worker processes because one Python process tops out at a
few thousand requests per second. Requests are pre-encoded HTTP/1.1 bytes sent round-robin, and
responses are parsed just enough to find their end and status (the head by
:func:`tritonio.http1.parse_head`, the body by its ``Content-Length``, as Triton frames every
answer), so the client spends its CPU on the socket, not on building requests. All workers
share one wall-clock measurement window: a request counts when it completes inside the window,
and its latency is send-to-last-byte.

This module imports only the standard library, :mod:`tritonio.http1` (standard library only) and
``uvloop`` when present, so the worker processes start fast and run on any host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from array import array
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import cast

from tritonio.errors import BadResponse
from tritonio.http1 import NO_BODY, TERMINATOR, parse_head

log = logging.getLogger(__name__)

_CONNECT_LEAD_S = 0.5  # time the workers get to receive the job and open their connections
REQUEST_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class LoadJob:
    """What one worker process does: ``connections`` closed loops over ``requests``."""

    host: str
    port: int
    requests: tuple[bytes, ...]
    connections: int
    window_start: float  # wall clock (time.time) when the measurement window opens
    warmup_s: float  # sending starts this long before the window
    duration_s: float
    first_request: int = 0  # where in ``requests`` this worker's round-robin starts


@dataclass(frozen=True)
class WorkerResult:
    """What one worker saw inside the measurement window."""

    completed: int
    errors: int
    first_error: str
    latencies_ms: bytes  # array('d') of the window's request latencies
    cpu_s: float = 0.0  # CPU time the worker spent inside the window (all workers added up when merged)


class _HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request outstanding."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._buf = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._head_end = -1
        self._end = -1
        self._status = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while self._head_end < 0:
            i = self._buf.find(TERMINATOR)
            if i < 0:
                return
            try:
                head = parse_head(bytes(self._buf[: i + 4]))
            except BadResponse as exc:
                self._fail(exc)
                return
            if head.status < 200 and head.status != 101:  # an interim answer: the final one follows
                del self._buf[: i + 4]
                continue
            if head.content_length is None and head.status not in NO_BODY:
                self._fail(BadResponse("an answer without Content-Length (this load generator reads no other framing)"))
                return
            self._head_end = i + 4
            self._status = head.status
            self._end = self._head_end + (head.content_length or 0)
        if len(self._buf) < self._end:
            return
        body = bytes(self._buf[self._head_end : self._end]) if self._status != 200 else b""
        del self._buf[: self._end]
        self._head_end = self._end = -1
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, body))

    def _fail(self, exc: BadResponse) -> None:
        """An answer this client cannot read: fail the request and drop the connection."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError(f"connection closed by the server: {exc}"))

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        """Write ``request``; the future resolves to (status, body when the status is not 200)."""
        assert self.transport is not None
        self._waiter = self._loop.create_future()
        self.transport.write(request)
        return self._waiter


@dataclass
class _Tally:
    completed: int = 0
    errors: int = 0
    first_error: str = ""
    latencies: array[float] = field(default_factory=lambda: array("d"))


async def _closed_loop(job: LoadJob, offset: int, tally: _Tally) -> None:
    loop = asyncio.get_running_loop()
    transport, conn = await loop.create_connection(lambda: _HttpConnection(loop), job.host, job.port)
    clock = time.perf_counter
    to_local = clock() - time.time()
    window_start = job.window_start + to_local
    window_end = window_start + job.duration_s
    await asyncio.sleep(max(0.0, window_start - job.warmup_s - clock()))
    requests, n, i = job.requests, len(job.requests), offset
    try:
        while True:
            t0 = clock()
            if t0 >= window_end:
                break
            try:
                status, body = await asyncio.wait_for(conn.send(requests[i % n]), REQUEST_TIMEOUT_S)
            except (ConnectionError, TimeoutError, BadResponse) as exc:
                # A lost or unanswered request ends this connection's loop, never the whole step.
                tally.errors += 1
                tally.first_error = tally.first_error or f"{type(exc).__name__}: {exc}"
                break
            i += 1
            t1 = clock()
            if status != 200:
                tally.errors += 1
                tally.first_error = tally.first_error or f"HTTP {status}: {body[:300].decode(errors='replace')}"
            elif window_start <= t1 <= window_end:
                tally.completed += 1
                tally.latencies.append((t1 - t0) * 1e3)
    finally:
        transport.close()


async def _run(job: LoadJob) -> WorkerResult:
    tally = _Tally()
    loop = asyncio.get_running_loop()
    cpu: list[float] = []  # process CPU time at the window's start and end: is the client the limit?
    for edge in (job.window_start, job.window_start + job.duration_s):
        loop.call_later(max(0.0, edge - time.time()), lambda: cpu.append(time.process_time()))
    loops = [_closed_loop(job, job.first_request + c, tally) for c in range(job.connections)]
    results = await asyncio.gather(*loops, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            tally.errors += 1
            tally.first_error = tally.first_error or f"{type(r).__name__}: {r}"
    cpu_s = cpu[1] - cpu[0] if len(cpu) == 2 else 0.0
    return WorkerResult(tally.completed, tally.errors, tally.first_error, tally.latencies.tobytes(), cpu_s)


def run_job(job: LoadJob) -> WorkerResult:
    """Run one worker's share of a load step (called in a worker process)."""
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_run(job))


def _worker_pid(_task: int) -> int:
    time.sleep(0.2)  # long enough that every worker process gets a task, so all of them start
    return os.getpid()


@dataclass
class RunningStep:
    """A load step in progress; its window is in wall-clock (``time.time``) seconds."""

    window_start: float
    window_end: float
    futures: list[Future[WorkerResult]]

    def result(self) -> WorkerResult:
        """Wait for every worker and merge what they saw."""
        timeout = max(0.0, self.window_end - time.time()) + 2 * REQUEST_TIMEOUT_S
        parts = []
        for f in self.futures:
            try:
                parts.append(f.result(timeout=timeout))
            except FuturesTimeout:
                parts.append(WorkerResult(0, 1, "a load-generator worker did not finish its step", b""))
        latencies: array[float] = array("d")
        for p in parts:
            latencies.frombytes(p.latencies_ms)
        return WorkerResult(
            completed=sum(p.completed for p in parts),
            errors=sum(p.errors for p in parts),
            first_error=next((p.first_error for p in parts if p.first_error), ""),
            latencies_ms=latencies.tobytes(),
            cpu_s=sum(p.cpu_s for p in parts),
        )


class LoadGenerator:
    """A pool of worker processes that runs load steps against one HTTP endpoint."""

    def __init__(self, processes: int) -> None:
        self.processes = max(1, processes)
        self._pool = ProcessPoolExecutor(max_workers=self.processes, mp_context=get_context("spawn"))
        # Start every worker now, so that process start-up does not eat into a window.
        pids = set(self._pool.map(_worker_pid, range(self.processes)))
        log.info("load generator: %d worker processes (%d started)", self.processes, len(pids))

    def start(
        self,
        host: str,
        port: int,
        requests: list[bytes],
        concurrency: int,
        warmup_s: float,
        duration_s: float,
    ) -> RunningStep:
        """Start a step of ``concurrency`` closed loops; returns at once with its window."""
        workers = min(self.processes, concurrency)
        base, extra = divmod(concurrency, workers)
        window_start = time.time() + _CONNECT_LEAD_S + warmup_s
        futures = []
        first = 0
        for w in range(workers):
            conns = base + (1 if w < extra else 0)
            job = LoadJob(host, port, tuple(requests), conns, window_start, warmup_s, duration_s, first)
            futures.append(self._pool.submit(run_job, job))
            first += conns
        return RunningStep(window_start, window_start + duration_s, futures)

    def close(self) -> None:
        """Stop the worker processes."""
        self._pool.shutdown(wait=True, cancel_futures=True)
