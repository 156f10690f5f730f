"""Measurement prototype of a faster gateway hot path; not deployed, nothing imports it.

``docs/benchmarks.md`` compares the gateway with this file to show what two changes buy on the
same machine, the same Triton and the same validation code (:func:`gateway.contract.validate`):

1. ``POST /predict`` as a bare ASGI callable (no FastAPI routing and middleware on the hot path);
2. Triton over a pool of keep-alive HTTP/1.1 connections with the binary tensor extension, instead
   of ``tritonclient.grpc.aio`` (measured: about 0.035 ms of client CPU per call against 0.15 ms).

It serves the champion of one model with the response shape of the gateway and a ``GET /models``
that ``modelops bench`` can discover; no auth, metrics, routing changes or error mapping::

    MODELOPS_PROTO_REPOSITORY=model_repository MODELOPS_PROTO_TRITON=127.0.0.1:8000 \\
        uvicorn benchmarks.prototypes.lean_gateway:app --port 8090 --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from gateway.contract import validate
from gateway.errors import GatewayError
from modelspec import ModelSchema

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class TritonHttpPool:
    """Keep-alive HTTP/1.1 connections to Triton, one request in flight on each."""

    def __init__(self, host: str, port: int, size: int) -> None:
        """Args:
        host: Triton's HTTP address.
        port: Triton's HTTP port.
        size: most connections (and so requests in flight).
        """
        self.host, self.port, self.size = host, port, size
        self._idle: asyncio.LifoQueue[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] | None = None

    async def infer(self, path: bytes, numeric: np.ndarray, categorical: np.ndarray, output: str) -> np.ndarray:
        """One binary-tensor infer request; the FP32 values of ``output``."""
        if self._idle is None:
            self._idle = asyncio.LifoQueue()
            for _ in range(self.size):
                self._idle.put_nowait(None)
        raw_n, raw_c = numeric.astype("<f4").tobytes(), categorical.astype("<i8").tobytes()
        head = orjson.dumps(
            {
                "inputs": [
                    {"name": "numeric", "shape": list(numeric.shape), "datatype": "FP32",
                     "parameters": {"binary_data_size": len(raw_n)}},
                    {"name": "categorical", "shape": list(categorical.shape), "datatype": "INT64",
                     "parameters": {"binary_data_size": len(raw_c)}},
                ],
                "outputs": [{"name": output, "parameters": {"binary_data": True}}],
            }
        )  # fmt: skip
        body = head + raw_n + raw_c
        request = b"POST %s HTTP/1.1\r\nHost: triton\r\nContent-Type: application/octet-stream\r\n" % path
        request += b"Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(head), len(body))
        conn = await self._idle.get()
        try:
            if conn is None:
                conn = await asyncio.open_connection(self.host, self.port)
            reader, writer = conn
            writer.write(request + body)
            headers = (await reader.readuntil(b"\r\n\r\n")).lower()
            length = int(headers.split(b"\r\ncontent-length:")[1].split(b"\r\n")[0])
            json_length = int(headers.split(b"\r\ninference-header-content-length:")[1].split(b"\r\n")[0])
            data = await reader.readexactly(length)
        except BaseException:
            if conn is not None:
                conn[1].close()
            self._idle.put_nowait(None)
            raise
        self._idle.put_nowait(conn)
        if not headers.startswith(b"http/1.1 200"):
            raise RuntimeError(f"Triton answered {headers.split(b' ', 2)[1].decode()}: {data[:200]!r}")
        return np.frombuffer(data, dtype="<f4", offset=json_length)


class LeanGateway:
    """The champion of one model behind ``POST /predict`` and ``GET /models``."""

    def __init__(self, repository: Path, model: str, triton: str, pool_size: int = 64) -> None:
        """Read the routing and the champion's schema; connect lazily."""
        routing = json.loads((repository / model / "routing.json").read_text())
        self.model, self.version = model, int(routing["champion"])
        self.schema = ModelSchema.model_validate_json(
            (repository / model / str(self.version) / "schema.json").read_text()
        )
        self.output = self.schema.outputs[0].name
        self.path = f"/v2/models/{model}/versions/{self.version}/infer".encode()
        host, port = triton.rsplit(":", 1)
        self.pool = TritonHttpPool(host, int(port), pool_size)
        self.models_doc = orjson.dumps(
            {
                "models": {model: {"champion": self.version, "fields": self.schema.record_json_schema()}},
                "default": model,
            }
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            return
        if scope["method"] == "GET":
            await _answer(send, 200, self.models_doc)
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = bool(message.get("more_body"))
        try:
            batch = validate(self.schema, orjson.loads(b"".join(chunks)), 1024)
        except (orjson.JSONDecodeError, GatewayError) as exc:
            await _answer(send, 422, orjson.dumps({"error": {"code": "invalid_input", "message": str(exc)}}))
            return
        values = await self.pool.infer(self.path, batch.numeric, batch.categorical, self.output)
        request_id = uuid.uuid4().hex
        body = orjson.dumps(
            {
                "request_id": request_id,
                "model": {"name": self.model, "version": self.version, "alias": "champion"},
                "predictions": [{self.output: v} for v in values.tolist()],
                "flags": [f.as_dict() for f in batch.flags],
            }
        )
        await _answer(
            send, 200, body, [(b"x-request-id", request_id.encode()), (b"x-model-version", b"%d" % self.version)]
        )


async def _answer(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _from_environment() -> LeanGateway:
    return LeanGateway(
        Path(os.environ.get("MODELOPS_PROTO_REPOSITORY", "model_repository")),
        os.environ.get("MODELOPS_PROTO_MODEL", "solar_ghi"),
        os.environ.get("MODELOPS_PROTO_TRITON", "127.0.0.1:8000"),
    )


_app: LeanGateway | None = None


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The uvicorn target; built on first use so importing the module reads nothing."""
    global _app
    if scope["type"] == "lifespan":
        message = await receive()
        while message["type"] != "lifespan.shutdown":
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            message = await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    if _app is None:
        _app = _from_environment()
    await _app(scope, receive, send)
