"""The gateway under hostile or heavy load (issue 14, items 8, 9, 10, 14, 15): slow senders, huge or
pathological bodies, a slow challenger, clients that go away, a challenger that changes under a canary."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn

from gateway.app import create_app
from gateway.audit import AuditEntry, AuditLog
from gateway.dataplane import Gateway
from gateway.errors import ClientDisconnected, MalformedRequest, ModelNotReady, PayloadTooLarge, UpstreamTimeout
from gateway.policy import TrafficPolicy
from gateway.settings import GatewaySettings
from gateway.testing import MODEL, FakeTriton, factory, given_body, metric_value, training_records, write_repository
from gateway.transport import parse_json

RECORD = orjson.dumps(training_records(1, seed=3)[0])


def _settings(tmp_path: Path, **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "model_repository": tmp_path / "repo",
        "default_model": MODEL,
        "feedback_db_path": tmp_path / "state" / "feedback.db",
        "shutdown_drain_s": 0,
    }
    return GatewaySettings(**{**values, **overrides})


def _request(body: bytes, declared: int | None = None) -> bytes:
    length = len(body) if declared is None else declared
    head = f"POST /predict HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    return head.encode() + body


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 answer."""
    status_line = await reader.readline()
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), body


async def _predict(port: int) -> tuple[int, float]:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request(RECORD))
    status, _ = await _answer(reader)
    writer.close()
    return status, time.perf_counter() - started


TRICKLERS = 700


def test_trickling_bodies_hold_no_slot_and_are_cut_at_the_deadline(tmp_path: Path) -> None:
    """700 connections that declare a 100 kB body and send a byte a second, over an in-flight limit of
    512: ordinary /predict calls are all answered (200) within the p99 budget while they trickle, and
    every trickling connection is answered 408 request_timeout and closed at the body deadline."""
    write_repository(tmp_path / "repo", champion=1)
    timeout_s = 3.0
    app = create_app(_settings(tmp_path, body_read_timeout_s=timeout_s), factory(FakeTriton()))

    async def main() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", backlog=2048, lifespan="on", http="h11")
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)

        async def trickle() -> tuple[int, float, bool]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            opened = time.monotonic()
            writer.write(_request(b"[", declared=100_000))
            answer = asyncio.create_task(_answer(reader))
            while not answer.done() and time.monotonic() - opened < timeout_s + 5:
                await asyncio.sleep(1.0)
                if not answer.done():
                    writer.write(b" ")
            status, _ = await answer
            closed = await reader.read() == b""
            writer.close()
            return status, time.monotonic() - opened, closed

        trickling: list[asyncio.Task[Any]] = []
        try:
            trickling += [asyncio.create_task(trickle()) for _ in range(TRICKLERS)]
            await asyncio.sleep(1.0)  # all of them connected and sending
            assert app.gateway.body_deadlines.reading == TRICKLERS
            ordinary = [await _predict(port) for _ in range(40)]
            statuses = [s for s, _ in ordinary]
            assert statuses == [200] * 40, statuses
            latencies = sorted(t for _, t in ordinary)
            assert latencies[-1] < 0.5, latencies  # p99 of 40 is the slowest
            cut = await asyncio.wait_for(asyncio.gather(*trickling), timeout_s + 10)
            assert {status for status, _, _ in cut} == {408}
            assert all(closed for _, _, closed in cut)
            assert max(at for _, at, _ in cut) < timeout_s + 2.5
            assert min(at for _, at, _ in cut) >= timeout_s - 0.1
            exposition = app.gateway.metrics.exposition().decode()
            assert metric_value(exposition, "modelops_gateway_requests_total", code="request_timeout") == TRICKLERS
        finally:
            for task in trickling:
                task.cancel()
            server.should_exit = server.force_exit = True
            await serving

    asyncio.run(main())
