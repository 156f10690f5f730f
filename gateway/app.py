"""``create_app(settings)``: the gateway's routes, lifespan and error handling.

Routes are thin: parse the body, validate it against the served version's schema
(:mod:`gateway.contract`), call Triton (:mod:`gateway.triton`), map the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Path, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.contract import request_body_schema, validate
from gateway.errors import (
    GatewayError,
    MalformedRequest,
    ModelNotReady,
    Overloaded,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from gateway.metrics import GatewayMetrics
from gateway.serving import ServedModels, Target
from gateway.settings import GatewaySettings
from gateway.triton import TritonClient
from modelspec import ModelSchema

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class ModelRef(BaseModel):
    """Which model version answered."""

    name: str
    version: int = Field(description="MLflow (= Triton) version number")
    alias: str = Field(description="champion or challenger")


class FlagOut(BaseModel):
    """A value that was accepted but flagged (out of the trained range, unknown category mapped)."""

    record: int
    field: str
    reason: str


class PredictResponse(BaseModel):
    """Predictions in the order of the records sent, and who made them."""

    request_id: str
    model: ModelRef
    predictions: list[dict[str, float]]
    flags: list[FlagOut] = []


class ErrorDetail(BaseModel):
    """Body of every error."""

    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    """Every error response has this shape."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Malformed JSON",
        401: "Missing or wrong API key",
        404: "Unknown model",
        413: "Body or record count over the limit",
        415: "Not application/json",
        422: "A record does not satisfy the feature schema; `field` names it",
        502: "The model server failed the request",
        503: "Model not ready or gateway overloaded; see Retry-After",
        504: "The model server did not answer in time",
    }.items()
}


class Gateway:
    """State shared by the routes of one app: settings, Triton client, routing, metrics."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.models = ServedModels(settings.model_repository)
        self.metrics = GatewayMetrics()
        self.triton: TritonClient | None = None
        self.in_flight = 0
        self._ready_cache: tuple[float, bool] = (0.0, False)

    def client(self) -> TritonClient:
        """The Triton client (only during the app's lifespan)."""
        if self.triton is None:
            raise ModelNotReady("the gateway is starting or stopping; retry shortly", headers={"Retry-After": "1"})
        return self.triton

    def publish_routing(self) -> None:
        """Export the served version of each alias as a gauge."""
        for name, routing in self.models.models().items():
            for alias, version in (("champion", routing.champion), ("challenger", routing.challenger)):
                self.metrics.served_version.labels(name, alias).set(version if version is not None else -1)

    async def ready(self) -> bool:
        """Triton ready and the default model's champion loaded (answer cached briefly)."""
        checked_at, answer = self._ready_cache
        if time.monotonic() - checked_at < self.settings.readiness_cache_s:
            return answer
        answer = False
        try:
            target = self.models.target(self.settings.default_model)
            client = self.client()
            answer = await client.server_ready() and await client.model_ready(target.model, target.version)
        except GatewayError:
            answer = False
        self._ready_cache = (time.monotonic(), answer)
        return answer

    async def predict(self, request: Request, model: str) -> Response:
        """Validate, infer, answer: the body of both predict routes."""
        started = time.perf_counter()
        route = "/predict"
        request_id = request.headers.get("x-request-id", "")
        if not _REQUEST_ID.fullmatch(request_id):
            request_id = uuid.uuid4().hex
        labels = {"model": model, "version": "", "route": route}
        if self.in_flight >= self.settings.max_in_flight:
            self.metrics.requests.labels(model, "", route, "503", Overloaded.code).inc()
            raise Overloaded("too many requests in flight; retry shortly", headers={"Retry-After": "1"})
        self.in_flight += 1
        self.metrics.in_flight.labels(route).inc()
        try:
            target = self.models.target(model)
            labels["version"] = str(target.version)
            body = await self._json_body(request)
            batch = validate(target.schema, body, self.settings.max_records)
            self.metrics.records.labels(model).observe(batch.rows)
            for flag in batch.flags:
                self.metrics.flags.labels(model, str(target.version), flag.field, flag.reason).inc()
            outputs = await self._infer(target, batch.numeric, batch.categorical, request_id)
            names = list(outputs)
            columns = [outputs[n].reshape(batch.rows, -1)[:, 0].tolist() for n in names]
            predictions = [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
            payload = {
                "request_id": request_id,
                "model": {"name": target.model, "version": target.version, "alias": target.alias},
                "predictions": predictions,
                "flags": [f.as_dict() for f in batch.flags],
            }
            self.metrics.requests.labels(model, labels["version"], route, "200", "ok").inc()
            return Response(
                orjson.dumps(payload),
                media_type="application/json",
                headers={"x-request-id": request_id, "x-model-version": str(target.version)},
            )
        except GatewayError as exc:
            self.metrics.requests.labels(model, labels["version"], route, str(exc.status_code), exc.code).inc()
            exc.headers.setdefault("x-request-id", request_id)
            raise
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.labels(route).dec()
            self.metrics.latency.labels(model, route).observe(time.perf_counter() - started)

    async def _json_body(self, request: Request) -> Any:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json" and not content_type.endswith("+json"):
            raise UnsupportedMediaType("send the records as JSON with Content-Type: application/json")
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"the body is over {limit} bytes: split the request", field="body")
        raw = await request.body()
        if len(raw) > limit:
            raise PayloadTooLarge(f"the body is over {limit} bytes: split the request", field="body")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MalformedRequest(
                f"the body is not valid JSON (line {exc.lineno}, column {exc.colno}); NaN and Infinity are not JSON",
                field="body",
            ) from None

    async def _infer(self, target: Target, numeric: Any, categorical: Any, request_id: str) -> dict[str, Any]:
        schema: ModelSchema = target.schema
        started = time.perf_counter()
        try:
            return await self.client().infer(
                target.model,
                target.version,
                {schema.numeric_tensor: numeric, schema.categorical_tensor: categorical},
                [o.name for o in schema.outputs],
                request_id=request_id,
            )
        finally:
            self.metrics.triton_latency.labels(target.model, str(target.version)).observe(time.perf_counter() - started)


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    """Build the gateway app. Nothing connects until the lifespan starts."""
    settings = settings or GatewaySettings()
    gw = Gateway(settings)
    gw.models.refresh()
    # The contract shown in /docs is the schema of the default model's champion at startup.
    try:
        startup_schema: ModelSchema | None = gw.models.target(settings.default_model).schema
    except GatewayError:
        startup_schema = None
        log.warning("model %r is not served yet: /docs shows a generic record", settings.default_model)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        gw.triton = TritonClient(settings.triton_grpc_url, settings.triton_timeout_s)
        poller = asyncio.create_task(_poll_routing(gw))
        log.info("gateway up: Triton %s, repository %s", settings.triton_grpc_url, settings.model_repository)
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            client, gw.triton = gw.triton, None
            await client.close()

    app = FastAPI(
        title="modelops gateway",
        version="1",
        description="Stable prediction contract in front of Triton. Every error has the shape "
        '`{"error": {"code", "message", "field"}}`.',
        lifespan=lifespan,
    )
    app.state.gateway = gw

    @app.exception_handler(GatewayError)
    async def _gateway_error(_request: Request, exc: GatewayError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = {"error": {"code": code, "message": str(exc.detail), "field": None}}
        return JSONResponse(body, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error", exc_info=exc)
        body = {"error": {"code": "internal_error", "message": "internal error; it was logged", "field": None}}
        return JSONResponse(body, status_code=500)

    body_doc = request_body_schema(startup_schema, settings.max_records)

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses=ERROR_RESPONSES,
        openapi_extra={"requestBody": body_doc},
        summary="Predict with the default model",
        tags=["predict"],
    )
    async def predict(request: Request) -> Response:
        """Predict for one record or a list of records, with the default model's champion."""
        _authorize(request, settings)
        return await gw.predict(request, settings.default_model)

    @app.post(
        "/models/{name}/predict",
        response_model=PredictResponse,
        responses=ERROR_RESPONSES,
        openapi_extra={"requestBody": request_body_schema(None, settings.max_records)},
        summary="Predict with a named model",
        tags=["predict"],
    )
    async def predict_named(request: Request, name: Annotated[str, Path(max_length=64)]) -> Response:
        """Predict with the champion of model ``name`` (its fields: ``GET /models``)."""
        _authorize(request, settings)
        return await gw.predict(request, name)

    @app.get("/models", tags=["models"], summary="Served models, their versions and fields")
    async def models() -> dict[str, Any]:
        """Every served model with its champion/challenger and the champion's fields."""
        out: dict[str, Any] = {}
        for name, routing in gw.models.models().items():
            entry: dict[str, Any] = {"champion": routing.champion, "challenger": routing.challenger}
            if routing.champion is not None:
                with contextlib.suppress(GatewayError):
                    entry["fields"] = gw.models.schema(name, routing.champion).record_json_schema()
            out[name] = entry
        return {"models": out, "default": settings.default_model}

    @app.get("/healthz/live", tags=["health"], summary="The process is up")
    async def live() -> dict[str, str]:
        """Liveness: answers while the event loop runs."""
        return {"status": "live"}

    @app.get("/healthz/ready", tags=["health"], summary="Triton and the default model are ready")
    async def ready() -> JSONResponse:
        """Readiness: 200 when Triton and the default model's champion are ready, else 503."""
        ok = await gw.ready()
        return JSONResponse({"status": "ready" if ok else "not_ready"}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics")
    async def metrics() -> Response:
        """Prometheus text exposition of the gateway's metrics."""
        return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _authorize(request: Request, settings: GatewaySettings) -> None:
    keys = settings.api_keys
    if not keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or token not in keys:
        raise Unauthorized(
            "send a valid API key as `Authorization: Bearer <key>`", headers={"WWW-Authenticate": "Bearer"}
        )


async def _poll_routing(gw: Gateway) -> None:
    while True:
        try:
            gw.models.refresh()
            gw.publish_routing()
        except Exception:
            log.exception("routing refresh failed; keeping the last good routing")
        await asyncio.sleep(gw.settings.routing_poll_s)
