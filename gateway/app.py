"""``create_app(settings)``: the gateway's routes, lifespan and error handling.

Routes are thin: parse the body, validate it against the served version's schema
(:mod:`gateway.contract`), call Triton (:mod:`gateway.upstream`), map the result. :class:`Gateway`
holds what the routes share: routing and traffic policy, the Triton client, metrics, drift
windows, the feedback store and the audit log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import GaugeMetricFamily
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from gateway.audit import AuditEntry, AuditLog
from gateway.contract import Batch, request_body_schema, validate
from gateway.drift import DriftMonitor
from gateway.errors import (
    Forbidden,
    GatewayError,
    InvalidInput,
    ModelNotReady,
    Overloaded,
    ShuttingDown,
)
from gateway.feedback import FeedbackStore, StoredPrediction
from gateway.metrics import CallbackCollector, GatewayMetrics, finite
from gateway.policy import PolicyStore, TrafficPolicy
from gateway.serving import ServedModels, Target
from gateway.settings import GatewaySettings
from gateway.transport import check_bearer, parse_json, read_json_bytes, request_id_of, valid_request_id
from gateway.upstream import InferenceClient, make_client
from modelspec import ModelSchema

log = logging.getLogger(__name__)

ClientFactory = Callable[[GatewaySettings], InferenceClient]
"""Builds the inference client when the app starts (the real Triton client unless a test passes a fake)."""

SHADOW_SUFFIX = ":shadow"
"""Stored predictions of a mirrored call are keyed ``<request_id>:shadow`` (``:`` never occurs in
client request ids), so feedback for a request also scores the challenger that shadowed it."""


class ModelRef(BaseModel):
    """Which model version answered."""

    name: str = Field(description="Model name")
    version: int = Field(description="MLflow (= Triton) version number")
    alias: str = Field(description="champion, or challenger when the request was part of the canary share")


class FlagOut(BaseModel):
    """A value that was accepted but flagged."""

    record: int = Field(description="Index of the record in the request (0 for a single record)")
    field: str = Field(description="Feature name")
    reason: str = Field(
        description="out_of_range (outside the trained range; the feature's policy is flag) or "
        "unknown_category (mapped to the feature's declared fallback)"
    )


class PredictResponse(BaseModel):
    """Predictions in the order of the records sent, and who made them."""

    request_id: str = Field(description="Echoes a valid X-Request-ID, else a new id; use it for POST /feedback")
    model: ModelRef
    predictions: list[dict[str, float]] = Field(description="One object per record: output name -> value")
    flags: list[FlagOut] = Field(default=[], description="Accepted values worth knowing about, per record")


class ErrorDetail(BaseModel):
    """Body of every error."""

    code: str = Field(description="Stable machine-readable code, e.g. invalid_input")
    message: str = Field(description="What went wrong and what to do; never echoes the request")
    field: str | None = Field(
        default=None, description="The offending field: `wind_direction`, `[3].wind_direction`, `body`, ..."
    )


class ErrorResponse(BaseModel):
    """Every error response has this shape."""

    error: ErrorDetail


class FeedbackRequest(BaseModel):
    """The true outcome of an earlier /predict request."""

    request_id: str = Field(description="request_id of the /predict response")
    outcomes: list[dict[str, float | None] | None] = Field(
        description="One entry per record of that request, in order: the true value of each output, "
        "or null when the outcome of that record is not known"
    )


class FeedbackResponse(BaseModel):
    """What the outcome was joined to."""

    request_id: str
    model: str
    version: int
    outcomes: int = Field(description="Values joined (records x outputs given)")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Malformed JSON (field: body)",
        401: "Missing or wrong API key",
        404: "Unknown model",
        413: "Body or record count over the limit (field: body)",
        415: "Not application/json (field: content-type)",
        422: "A record does not satisfy the feature schema; `field` names it",
        502: "The model server failed the request",
        503: "Model not ready, gateway overloaded or shutting down; see Retry-After",
        504: "The model server did not answer in time",
    }.items()
}
FEEDBACK_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Malformed JSON",
        401: "Missing or wrong API key",
        404: "Unknown request_id (never answered, or older than the retention period)",
        409: "The outcome of this request_id was already received",
        413: "Body over the limit",
        415: "Not application/json",
        422: "outcomes do not match the request's records and outputs; `field` names the entry",
        503: "Feedback is switched off",
    }.items()
}


@dataclass
class _Outcome:
    """What the audit log and the request metrics need about one answered request."""

    status: int = 200
    code: str = "ok"
    target: Target | None = None
    records: int = 0
    flags: int = 0
    body: bytes = b""
    payload: Any = None


class Gateway:
    """State shared by the routes of one app: settings, Triton client, routing, metrics."""

    def __init__(self, settings: GatewaySettings, client_factory: ClientFactory | None = None) -> None:
        self.settings = settings
        self.models = ServedModels(settings.model_repository, dict(settings.range_policy_overrides))
        self.policies = PolicyStore(settings.traffic_policy_path)
        self.metrics = GatewayMetrics()
        self.drift = DriftMonitor(settings.drift_window, settings.drift_min_records)
        self.metrics.add_collector(self.drift)
        self.metrics.add_collector(CallbackCollector(self._policy_families))
        self._quality = CallbackCollector(self._quality_families, cache_s=2.0)
        self.metrics.add_collector(self._quality)
        self.client_factory = client_factory or make_client
        self.triton: InferenceClient | None = None
        self.feedback: FeedbackStore | None = None
        self.audit: AuditLog | None = None
        self.in_flight = 0
        self.draining = False
        self._ready_cache: tuple[float, bool] = (0.0, False)
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self._random = random.Random()
        self._dropped_seen: dict[str, int] = {}

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Open the Triton client and start the background writers (in the app's lifespan)."""
        s = self.settings
        self.draining = False
        self.triton = self.client_factory(s)
        self._dropped_seen = {}
        if s.feedback_enabled:
            self.feedback = FeedbackStore(
                s.feedback_db_path, retention_s=s.feedback_retention_s, window_s=s.quality_window_s
            )
            self.feedback.start()
        if s.audit_log_path is not None:
            self.audit = AuditLog(
                s.audit_log_path,
                max_bytes=s.audit_log_max_bytes,
                backups=s.audit_log_backups,
                payloads=s.audit_log_payloads,
            )
            self.audit.start()

    async def stop(self, grace_s: float = 10.0) -> None:
        """Readiness false, let in-flight and shadow requests finish, then close everything."""
        self.draining = True
        deadline = time.monotonic() + grace_s
        while self.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self._shadow_tasks:
            _done, pending = await asyncio.wait(set(self._shadow_tasks), timeout=max(0.1, deadline - time.monotonic()))
            for task in pending:
                task.cancel()
        client, self.triton = self.triton, None
        if client is not None:
            await client.close()
        for writer in (self.feedback, self.audit):
            if writer is not None:
                await asyncio.to_thread(writer.close)
        self.feedback = self.audit = None

    def client(self) -> InferenceClient:
        """The inference client (only during the app's lifespan)."""
        if self.triton is None:
            if self.draining:
                raise ShuttingDown("the gateway is shutting down; retry", headers={"Retry-After": "1"})
            raise ModelNotReady("the gateway is starting; retry shortly", headers={"Retry-After": "1"})
        return self.triton

    def refresh(self) -> None:
        """Re-read routing and traffic policy; export the served versions; forget unserved windows."""
        self.models.refresh()
        self.policies.refresh()
        served: set[tuple[str, int]] = set()
        for name, routing in self.models.models().items():
            for alias, version in (("champion", routing.champion), ("challenger", routing.challenger)):
                self.metrics.served_version.labels(name, alias).set(version if version is not None else -1)
                if version is not None:
                    served.add((name, version))
        self.drift.retain(served)
        for name, writer in (("feedback", self.feedback), ("audit", self.audit)):
            if writer is not None and writer.dropped > self._dropped_seen.get(name, 0):
                self.metrics.dropped.labels(name).inc(writer.dropped - self._dropped_seen.get(name, 0))
                self._dropped_seen[name] = writer.dropped

    async def ready(self) -> bool:
        """Triton ready and the default model's champion loaded (answer cached briefly)."""
        if self.draining:
            return False
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

    # -- predict ---------------------------------------------------------------------------------
    def _choose(self, model: str) -> tuple[Target, TrafficPolicy, bool]:
        """The target of one request, its model's policy, and whether a shadow call is due."""
        champion = self.models.target(model)
        policy = self.policies.get(model)
        routing = self.models.routing(model)
        has_challenger = routing.challenger is not None and routing.challenger != routing.champion
        if has_challenger and policy.canary_share > 0 and self._random.random() < policy.canary_share:
            try:
                return self.models.target(model, "challenger"), policy, False
            except GatewayError:
                log.warning("%s challenger v%s is not available: the champion answers", model, routing.challenger)
        return champion, policy, has_challenger and policy.shadow

    async def predict(self, request: Request, model: str) -> Response:
        """Validate, infer, answer: the body of both predict routes."""
        started = time.perf_counter()
        wall = time.time()
        route = "/predict"
        request_id = request_id_of(request)
        outcome = _Outcome()
        metrics = self.metrics
        if self.in_flight >= self.settings.max_in_flight:
            metrics.child(metrics.requests, self._model_label(model), "", route, "503", Overloaded.code).inc()
            raise Overloaded(
                "too many requests in flight; retry shortly",
                headers={"Retry-After": "1", "x-request-id": request_id},
            )
        self.in_flight += 1
        in_flight = metrics.child(metrics.in_flight, route)
        in_flight.inc()
        try:
            target, _policy, shadow = self._choose(model)
            outcome.target = target
            outcome.body = await read_json_bytes(request, self.settings.max_body_bytes)
            body = parse_json(outcome.body)
            if self.settings.audit_log_payloads:
                outcome.payload = body
            batch = validate(target.schema, body, self.settings.max_records)
            outcome.records, outcome.flags = batch.rows, len(batch.flags)
            version = str(target.version)
            metrics.child(metrics.records, model).observe(batch.rows)
            for flag in batch.flags:
                self.metrics.flags.labels(model, version, flag.field, flag.reason).inc()
            matrix = await self._infer(target, batch, request_id)
            self._observe(target, batch, matrix, request_id)
            if shadow:
                self._mirror(target, body, batch, matrix, request_id)
            names = [o.name for o in target.schema.outputs]
            if len(names) == 1:
                name = names[0]
                predictions = [{name: value} for value in matrix[:, 0].tolist()]
            else:
                predictions = [dict(zip(names, row, strict=True)) for row in matrix.tolist()]
            payload = {
                "request_id": request_id,
                "model": {"name": target.model, "version": target.version, "alias": target.alias},
                "predictions": predictions,
                "flags": [f.as_dict() for f in batch.flags],
            }
            return Response(
                orjson.dumps(payload),
                media_type="application/json",
                headers={
                    "x-request-id": request_id,
                    "x-model-version": version,
                    "x-model-alias": target.alias,
                },
            )
        except GatewayError as exc:
            outcome.status, outcome.code = exc.status_code, exc.code
            exc.headers.setdefault("x-request-id", request_id)
            raise
        except Exception:
            outcome.status, outcome.code = 500, "internal_error"
            raise
        finally:
            self.in_flight -= 1
            in_flight.dec()
            elapsed = time.perf_counter() - started
            version_label = str(outcome.target.version) if outcome.target else ""
            label = model if outcome.target else self._model_label(model)
            metrics.child(metrics.requests, label, version_label, route, str(outcome.status), outcome.code).inc()
            metrics.child(metrics.latency, label, version_label, route).observe(elapsed)
            self._audit(wall, request_id, route, model, outcome, elapsed)

    def _model_label(self, model: str) -> str:
        """``model`` when it is served, else ``_unknown``: clients choose the name in the URL, and
        every name they try must not become a metric series."""
        return model if model in self.models.models() else "_unknown"

    def _audit(self, wall: float, request_id: str, route: str, model: str, o: _Outcome, elapsed: float) -> None:
        if self.audit is None:
            return
        t = o.target
        self.audit.submit(
            AuditEntry(
                time=wall,
                request_id=request_id,
                route=route,
                model=model,
                version=t.version if t else None,
                alias=t.alias if t else None,
                run_id=t.run_id if t else None,
                status=o.status,
                code=o.code,
                latency_s=elapsed,
                records=o.records,
                flags=o.flags,
                body=o.body,
                payload=o.payload,
            )
        )

    async def _infer(self, target: Target, batch: Batch, request_id: str) -> np.ndarray:
        """Call Triton; the outputs as one ``[rows, n_outputs]`` float32 matrix in schema order."""
        started = time.perf_counter()
        try:
            return await self._infer_quiet(target, batch, request_id)
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.child(self.metrics.triton_latency, target.model, str(target.version)).observe(elapsed)

    def _observe(self, target: Target, batch: Batch, matrix: np.ndarray, request_id: str) -> None:
        """Drift window and feedback store of an answered batch (cheap: no I/O on this thread)."""
        profile = self.models.profile(target.model, target.version)
        self.drift.observe(
            target.model, target.version, target.schema, profile, batch.numeric, batch.categorical, matrix
        )
        if self.feedback is not None:
            self.feedback.submit(
                StoredPrediction(
                    request_id=request_id,
                    model=target.model,
                    version=target.version,
                    created_at=time.time(),
                    outputs=tuple(o.name for o in target.schema.outputs),
                    values=matrix,
                )
            )

    # -- shadow ----------------------------------------------------------------------------------
    def _mirror(self, champion: Target, body: Any, batch: Batch, answer: np.ndarray, request_id: str) -> None:
        """Start the shadow call to the challenger without waiting for it."""
        routing = self.models.routing(champion.model)
        version = str(routing.challenger)
        if len(self._shadow_tasks) >= self.settings.shadow_max_in_flight:
            self.metrics.shadow_requests.labels(champion.model, version, "dropped").inc()
            return
        task = asyncio.get_running_loop().create_task(self._shadow(champion, body, batch, answer, request_id))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(self, champion: Target, body: Any, batch: Batch, answer: np.ndarray, request_id: str) -> None:
        model = champion.model
        version = "unknown"
        result = "error"
        try:
            challenger = self.models.target(model, "challenger")
            version = str(challenger.version)
            mirrored = (
                batch
                if challenger.schema.features == champion.schema.features
                else validate(challenger.schema, body, self.settings.max_records)
            )
            started = time.perf_counter()
            try:
                matrix = await self._infer_quiet(challenger, mirrored, f"{request_id}{SHADOW_SUFFIX}")
            finally:
                self.metrics.shadow_latency.labels(model, version).observe(time.perf_counter() - started)
            self._observe(challenger, mirrored, matrix, f"{request_id}{SHADOW_SUFFIX}")
            champion_names = [o.name for o in champion.schema.outputs]
            challenger_names = [o.name for o in challenger.schema.outputs]
            common = [n for n in champion_names if n in challenger_names]
            if common:
                a = answer[:, [champion_names.index(n) for n in common]].astype(np.float64)
                b = matrix[:, [challenger_names.index(n) for n in common]].astype(np.float64)
                histogram = self.metrics.shadow_disagreement.labels(model, str(champion.version), version)
                for value in np.abs(a - b).max(axis=1).tolist():
                    histogram.observe(value)
            result = "ok"
        except InvalidInput:
            result = "invalid"
        except GatewayError as exc:
            log.info("shadow call to %s v%s failed: %s", model, version, exc.code)
        except asyncio.CancelledError:
            result = "cancelled"
            raise
        except Exception:
            log.exception("shadow call to %s v%s failed", model, version)
        finally:
            self.metrics.shadow_requests.labels(model, version, result).inc()

    async def _infer_quiet(self, target: Target, batch: Batch, request_id: str) -> np.ndarray:
        """The Triton call(s) of a batch: split into chunks of the model's ``max_batch_size``, run at once."""
        schema = target.schema
        client = self.client()
        names = [o.name for o in schema.outputs]
        step = self.models.max_batch_size(target.model) or batch.rows
        if batch.rows <= step:  # the usual case: one call, awaited directly (no task per request)
            outputs = await client.infer(
                target.model,
                target.version,
                {schema.numeric_tensor: batch.numeric, schema.categorical_tensor: batch.categorical},
                names,
                request_id=request_id,
            )
            return _as_matrix(outputs, names, batch.rows)
        starts = range(0, batch.rows, step)
        results = await asyncio.gather(
            *(
                client.infer(
                    target.model,
                    target.version,
                    {
                        schema.numeric_tensor: batch.numeric[i : i + step],
                        schema.categorical_tensor: batch.categorical[i : i + step],
                    },
                    names,
                    request_id=f"{request_id}.{i // step}",
                )
                for i in starts
            )
        )
        parts = [
            _as_matrix(outputs, names, min(step, batch.rows - i)) for i, outputs in zip(starts, results, strict=True)
        ]
        matrix: np.ndarray = np.concatenate(parts)
        return matrix

    # -- feedback --------------------------------------------------------------------------------
    async def feedback_route(self, request: Request) -> Response:
        """Join the true outcome of an earlier request to its prediction (``POST /feedback``)."""
        started = time.perf_counter()
        wall = time.time()
        route = "/feedback"
        outcome = _Outcome()
        model, version, request_id = "", "", ""
        try:
            store = self.feedback
            if store is None:
                raise ModelNotReady("feedback is switched off on this gateway (MODELOPS_GATEWAY_FEEDBACK_ENABLED)")
            outcome.body = await read_json_bytes(request, self.settings.max_body_bytes)
            body = parse_json(outcome.body)
            if not isinstance(body, dict):
                raise InvalidInput("the body must be an object with request_id and outcomes", field="body")
            extra = [k for k in body if k not in ("request_id", "outcomes")]
            if extra:
                raise InvalidInput("unknown field; the fields are request_id and outcomes", field="body")
            given = body.get("request_id")
            if not isinstance(given, str) or not valid_request_id(given):
                raise InvalidInput("request_id must be the request_id of a /predict response", field="request_id")
            request_id = given
            if "outcomes" not in body:
                raise InvalidInput("outcomes is required", field="outcomes")
            joined = await asyncio.to_thread(store.join, request_id, body["outcomes"])
            model, version = joined.model, str(joined.version)
            self.metrics.feedback.labels(model, version).inc(joined.outcomes)
            # The challenger that shadowed this request is scored on the same outcome.
            shadow = await asyncio.to_thread(store.join_shadow, f"{request_id}{SHADOW_SUFFIX}", body["outcomes"])
            if shadow is not None:
                self.metrics.feedback.labels(shadow.model, str(shadow.version)).inc(shadow.outcomes)
            self._quality.invalidate()
            answer = {"request_id": request_id, "model": model, "version": joined.version, "outcomes": joined.outcomes}
            return Response(orjson.dumps(answer), media_type="application/json")
        except GatewayError as exc:
            outcome.status, outcome.code = exc.status_code, exc.code
            raise
        except Exception:
            outcome.status, outcome.code = 500, "internal_error"
            raise
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(model, version, route, str(outcome.status), outcome.code).inc()
            self.metrics.latency.labels(model, version, route).observe(elapsed)
            self._audit(wall, request_id, route, model, outcome, elapsed)

    # -- scrape-time metrics ---------------------------------------------------------------------
    def _policy_families(self) -> list[GaugeMetricFamily]:
        canary = GaugeMetricFamily(
            "modelops_gateway_canary_share", "Configured share of /predict answered by the challenger", labels=["model"]
        )
        shadow = GaugeMetricFamily(
            "modelops_gateway_shadow_enabled", "1 when requests are mirrored to the challenger", labels=["model"]
        )
        names = sorted(set(self.models.models()) | set(self.policies.all()))
        for name in names:
            policy = self.policies.get(name)
            canary.add_metric([name], policy.canary_share)
            shadow.add_metric([name], 1.0 if policy.shadow else 0.0)
        return [canary, shadow]

    def _quality_families(self) -> list[GaugeMetricFamily]:
        live = GaugeMetricFamily(
            "modelops_gateway_live_quality",
            "Quality metric of each version from delayed ground truth (POST /feedback) over the window",
            labels=["model", "version", "metric"],
        )
        samples = GaugeMetricFamily(
            "modelops_gateway_live_quality_outcomes",
            "Outcomes behind modelops_gateway_live_quality",
            labels=["model", "version"],
        )
        trained = GaugeMetricFamily(
            "modelops_gateway_trained_quality",
            "The quality metric the version was trained and gated on (its manifest)",
            labels=["model", "version", "metric"],
        )
        threshold = GaugeMetricFamily(
            "modelops_gateway_live_quality_alert_threshold",
            "Live quality beyond this value should alert (trained metric x quality_alert_ratio)",
            labels=["model", "version", "metric"],
        )
        versions: set[tuple[str, int]] = set()
        for name, routing in self.models.models().items():
            versions |= {(name, v) for v in (routing.champion, routing.challenger) if v is not None}
        if self.feedback is not None:
            for q in self.feedback.quality():
                metric = self._metric_of(q.model, q.version)
                value = q.value(metric)
                if finite(value):
                    live.add_metric([q.model, str(q.version), metric], value)
                    samples.add_metric([q.model, str(q.version)], q.n)
                    versions.add((q.model, q.version))
        ratio = self.settings.quality_alert_ratio
        for model, version in sorted(versions):
            metric = self._metric_of(model, version)
            manifest = self.models.manifest(model, version)
            trained_value = manifest.metrics.get(metric) if manifest else None
            if trained_value is None or not finite(trained_value):
                continue
            trained.add_metric([model, str(version), metric], trained_value)
            better = self._greater_is_better(model, version)
            worse = trained_value / ratio if better else trained_value * ratio
            threshold.add_metric([model, str(version), metric], worse)
        return [live, samples, trained, threshold]

    def _metric_of(self, model: str, version: int) -> str:
        try:
            return self.models.schema(model, version).quality_metric.name
        except GatewayError:
            return "rmse"

    def _greater_is_better(self, model: str, version: int) -> bool:
        try:
            return self.models.schema(model, version).quality_metric.greater_is_better
        except GatewayError:
            return False


class GatewayApp(FastAPI):
    """The FastAPI app, with ``POST /predict`` and ``POST /models/{name}/predict`` served without
    FastAPI's per-request machinery.

    Routing, dependency resolution, middleware and response validation cost about as much CPU as
    the rest of a prediction; the two predict routes need none of it, so :meth:`__call__` hands
    them straight to :meth:`Gateway.predict` and answers errors itself, with the same bodies,
    statuses and headers the registered routes give (they stay registered, for the OpenAPI
    document and for anything this shortcut does not take, e.g. an over-long model name).
    """

    gateway: Gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point: the predict routes directly, everything else through FastAPI."""
        if scope["type"] == "http" and scope["method"] == "POST":
            model = self._predict_model(scope["path"])
            if model is not None:
                await self._predict(scope, receive, send, model)
                return
        await super().__call__(scope, receive, send)

    def _predict_model(self, path: str) -> str | None:
        if path == "/predict":
            return self.gateway.settings.default_model
        if path.startswith("/models/") and path.endswith("/predict"):
            name = path[8:-8]
            if 0 < len(name) <= 64 and "/" not in name:
                return name
        return None

    async def _predict(self, scope: Scope, receive: Receive, send: Send, model: str) -> None:
        gw = self.gateway
        request = Request(scope, receive)
        try:
            if gw.settings.api_keys:
                check_bearer(request, gw.settings.api_keys)
            response = await gw.predict(request, model)
        except GatewayError as exc:
            response = JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)
        except ClientDisconnect:
            return  # nobody is left to answer
        except Exception as exc:
            log.error("unexpected error", exc_info=exc)
            body = {"error": {"code": "internal_error", "message": "internal error; it was logged", "field": None}}
            response = JSONResponse(body, status_code=500)
        await response(scope, receive, send)


def create_app(settings: GatewaySettings | None = None, client_factory: ClientFactory | None = None) -> GatewayApp:
    """Build the gateway app. Nothing connects until the lifespan starts.

    Args:
        settings: the gateway settings (from the environment when omitted).
        client_factory: builds the inference client at startup; by default the Triton client
            ``settings.triton_protocol`` names (:func:`gateway.upstream.make_client`).
    """
    settings = settings or GatewaySettings()
    gw = Gateway(settings, client_factory)
    gw.refresh()
    # The contract shown in /docs is the schema of the default model's champion at startup.
    try:
        startup_schema: ModelSchema | None = gw.models.target(settings.default_model).schema
    except GatewayError:
        startup_schema = None
        log.warning("model %r is not served yet: /docs shows a generic record", settings.default_model)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        gw.start()
        poller = asyncio.create_task(_poll(gw))
        restore = _drain_on_sigterm(gw)
        upstream = settings.triton_http_url if settings.triton_protocol == "http" else settings.triton_grpc_url
        log.info(
            "gateway up: Triton %s (%s), repository %s", upstream, settings.triton_protocol, settings.model_repository
        )
        try:
            yield
        finally:
            restore()
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            await gw.stop()
            _mark_process_dead()
            log.info("gateway stopped")

    app = GatewayApp(
        title="modelops gateway",
        version="1",
        description="Stable prediction contract in front of Triton. Every error has the shape "
        '`{"error": {"code", "message", "field"}}`. The contract, field by field: docs/contract.md.',
        lifespan=lifespan,
    )
    app.state.gateway = gw
    app.gateway = gw

    @app.exception_handler(GatewayError)
    async def _gateway_error(_request: Request, exc: GatewayError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = {404: "no such route; see /docs", 405: "method not allowed on this route"}.get(
            exc.status_code, "request not accepted"
        )
        return JSONResponse({"error": {"code": code, "message": message, "field": None}}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default body echoes the input; name the parameter only.
        errors = exc.errors()
        where = ".".join(str(p) for p in errors[0].get("loc", ())[1:]) if errors else None
        body = {"error": {"code": InvalidInput.code, "message": "invalid request parameter", "field": where or None}}
        return JSONResponse(body, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error", exc_info=exc)
        body = {"error": {"code": "internal_error", "message": "internal error; it was logged", "field": None}}
        return JSONResponse(body, status_code=500)

    body_doc = request_body_schema(startup_schema, settings.max_records)

    def api_key(request: Request) -> None:
        if settings.api_keys:
            check_bearer(request, settings.api_keys)

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses=ERROR_RESPONSES,
        openapi_extra={"requestBody": body_doc},
        summary="Predict with the default model",
        tags=["predict"],
    )
    async def predict(request: Request) -> Response:
        """Predict for one record or a list of records with the default model (its champion, or the
        challenger for the configured canary share). Send `X-Request-ID` to choose the request id."""
        api_key(request)
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
        api_key(request)
        return await gw.predict(request, name)

    @app.post(
        "/feedback",
        response_model=FeedbackResponse,
        responses=FEEDBACK_ERRORS,
        openapi_extra={"requestBody": _feedback_body_doc()},
        summary="Report the true outcome of an earlier prediction",
        tags=["feedback"],
    )
    async def feedback(request: Request) -> Response:
        """Join the true outcome of an earlier `/predict` (by its `request_id`) to the prediction and
        its version; feeds `modelops_gateway_live_quality`. Each request id takes one report."""
        api_key(request)
        return await gw.feedback_route(request)

    @app.get("/models", tags=["models"], summary="Served models, their versions and fields")
    async def models(request: Request) -> dict[str, Any]:
        """Every served model with its champion/challenger, traffic policy and the champion's fields."""
        api_key(request)
        out: dict[str, Any] = {}
        for name, routing in gw.models.models().items():
            entry: dict[str, Any] = {
                "champion": routing.champion,
                "challenger": routing.challenger,
                "traffic": gw.policies.get(name).model_dump(),
            }
            if routing.champion is not None:
                with contextlib.suppress(GatewayError):
                    entry["fields"] = gw.models.schema(name, routing.champion).record_json_schema()
            out[name] = entry
        return {"models": out, "default": settings.default_model}

    @app.get("/healthz/live", tags=["health"], summary="The process is up")
    async def live(request: Request) -> dict[str, str]:
        """Liveness: answers while the event loop runs."""
        if not settings.public_health:
            api_key(request)
        return {"status": "live"}

    @app.get("/healthz/ready", tags=["health"], summary="Triton and the default model are ready")
    async def ready(request: Request) -> JSONResponse:
        """Readiness: 200 when Triton and the default model's champion are ready; 503 when not, and
        from the moment a shutdown begins (draining)."""
        if not settings.public_health:
            api_key(request)
        if gw.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        ok = await gw.ready()
        return JSONResponse({"status": "ready" if ok else "not_ready"}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics")
    async def metrics(request: Request) -> Response:
        """Prometheus text exposition of the gateway's metrics."""
        if not settings.public_metrics:
            api_key(request)
        return Response(gw.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    def admin_key(request: Request) -> None:
        if not settings.admin_keys:
            raise Forbidden("the admin API is off: set MODELOPS_GATEWAY_ADMIN_KEYS to enable it")
        check_bearer(request, settings.admin_keys, what="an admin key")

    @app.get("/admin/traffic", tags=["admin"], summary="Traffic policy of every model", responses=ERROR_RESPONSES)
    async def get_traffic(request: Request) -> dict[str, Any]:
        """Canary share and shadow switch of every served model (admin key)."""
        admin_key(request)
        gw.policies.refresh()
        names = sorted(set(gw.models.models()) | set(gw.policies.all()))
        return {"models": {n: gw.policies.get(n).model_dump() for n in names}}

    @app.put(
        "/admin/models/{name}/traffic",
        tags=["admin"],
        summary="Set the canary share and shadow switch of a model",
        response_model=TrafficPolicy,
        responses=ERROR_RESPONSES,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": TrafficPolicy.model_json_schema(),
                        "example": {"canary_share": 0.1, "shadow": True},
                    }
                },
            }
        },
    )
    async def put_traffic(request: Request, name: Annotated[str, Path(max_length=64)]) -> Response:
        """Replace the traffic policy of model ``name`` (admin key). Every worker follows within
        ``routing_poll_s`` when ``traffic_policy_path`` is set."""
        admin_key(request)
        gw.models.routing(name)  # 404 for a model that is not served
        body = parse_json(await read_json_bytes(request, 64 * 1024))
        try:
            policy = TrafficPolicy.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "body"
            raise InvalidInput(
                "the policy is {canary_share: 0..1, shadow: true|false}, nothing else", field=where
            ) from None
        await asyncio.to_thread(gw.policies.set, name, policy)
        return Response(orjson.dumps(policy.model_dump()), media_type="application/json")

    return app


def _feedback_body_doc() -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": FeedbackRequest.model_json_schema(),
                "examples": {
                    "two records": {
                        "value": {
                            "request_id": "3f9c2a7e4b1d4e0f9a8b7c6d5e4f3a2b",
                            "outcomes": [{"ghi_wm2": 512.0}, None],
                        }
                    }
                },
            }
        },
    }


def _as_matrix(outputs: dict[str, np.ndarray], names: list[str], rows: int) -> np.ndarray:
    """The named ``[rows, 1]`` outputs of one call as one float32 ``[rows, len(names)]`` matrix."""
    if len(names) == 1:
        return np.asarray(outputs[names[0]], dtype=np.float32).reshape(rows, -1)[:, :1]
    return np.column_stack([np.asarray(outputs[n], dtype=np.float32).reshape(rows, -1)[:, 0] for n in names])


async def _poll(gw: Gateway) -> None:
    while True:
        try:
            gw.refresh()
        except Exception:
            log.exception("routing refresh failed; keeping the last good routing")
        await asyncio.sleep(gw.settings.routing_poll_s)


def _drain_on_sigterm(gw: Gateway) -> Callable[[], None]:
    """On SIGTERM turn readiness false, then hand the signal to the server after ``shutdown_drain_s``.

    uvicorn stops accepting connections as soon as it sees SIGTERM; delaying it lets load
    balancers see the failing readiness first. A second SIGTERM stops at once.
    """
    drain = gw.settings.shutdown_drain_s
    if drain <= 0 or threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return lambda: None
    server_handler: Callable[[int, Any], Any] = previous
    loop = asyncio.get_running_loop()

    def on_sigterm(signum: int, frame: Any) -> None:
        if gw.draining:
            server_handler(signum, frame)
            return
        gw.draining = True
        log.info("SIGTERM: readiness is false; stopping in %.1f s", drain)
        loop.call_soon_threadsafe(loop.call_later, drain, server_handler, signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:
            signal.signal(signal.SIGTERM, previous)

    return restore


def _mark_process_dead() -> None:
    from gateway.metrics import multiprocess_dir

    if multiprocess_dir():
        import os

        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())
