"""The data plane: what happens to a prediction or an outcome between the transport and Triton.

Nothing here speaks HTTP. The transport (:mod:`gateway.app`) hands :meth:`Gateway.predict` the
model name, the request id and a :data:`BodyReader`, and turns what comes back, the answer's
bytes and headers or a :class:`~gateway.errors.GatewayError`, into a response. A prediction, in
the order :meth:`Gateway.predict` takes it:

1. admission: more than ``max_in_flight`` requests at once answer ``overloaded`` (503) before
   the body is read; a request takes its in-flight slot only once its body is read (a client that
   trickles its body holds no slot, and is cut after ``body_read_timeout_s``, 408);
2. :meth:`Gateway.choose_version`: the champion, or the challenger for the model's canary share,
   and whether the request is mirrored to the challenger (shadow);
3. the body is read and parsed, and validated against that version's schema
   (:func:`gateway.contract.validate`) into the model's input tensors;
4. :func:`gateway.inference.infer_in_chunks`: the Triton call(s), in chunks of the model's
   ``max_batch_size``; an answer with a NaN or infinite output is a 502 ``non_finite_prediction``
   (counted in ``modelops_gateway_non_finite_predictions_total``), never a ``null`` in a 200;
5. :meth:`Gateway._observe`: the drift window and the stored prediction that ``POST /feedback``
   joins to later;
6. :meth:`gateway.shadow.Shadow.mirror`: the shadow call to the challenger, not awaited;
7. the answer document, written with orjson in the shape of :class:`gateway.wire.PredictResponse`.

The request metrics and the audit line of every request, answered or not, are written as it
ends. :class:`Gateway` also holds what the routes share over the app's lifetime: routing and
traffic policy, the Triton client (:mod:`gateway.upstream`), metrics, drift windows, the feedback
store and the audit log, with their start, drain and stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from gateway.audit import AuditEntry, AuditLog
from gateway.contract import Batch, validate
from gateway.drift import DriftMonitor
from gateway.errors import GatewayError, InvalidInput, ModelNotReady, NonFinitePrediction, Overloaded, ShuttingDown
from gateway.feedback import FeedbackStore, StoredPrediction
from gateway.inference import infer_in_chunks
from gateway.metrics import CallbackCollector, GatewayMetrics, policy_families, quality_families
from gateway.policy import PolicyStore
from gateway.serving import ServedModels, ServedVersion
from gateway.settings import GatewaySettings
from gateway.shadow import SHADOW_SUFFIX, Shadow
from gateway.transport import BodyDeadlines, parse_json, valid_request_id
from gateway.upstream import InferenceClient, make_client

log = logging.getLogger(__name__)

ClientFactory = Callable[[GatewaySettings], InferenceClient]
"""Builds the inference client when the app starts (the real Triton client unless a test passes a fake)."""

BodyReader = Callable[[int], Awaitable[bytes]]
"""Reads the request body, at most the given number of bytes; raises the transport's errors
(unsupported media type 415, payload too large 413). Called once per request, after admission,
so an overloaded gateway or an unknown model never reads a body."""

Answer = tuple[bytes, dict[str, str]]
"""A prediction's answer: the JSON document and the headers that go with it (a plain tuple, the
cheapest thing to return on the hot path)."""


@dataclass
class _Outcome:
    """What the audit log and the request metrics need about one answered request."""

    status: int = 200
    code: str = "ok"
    served: ServedVersion | None = None
    records: int = 0
    flags: int = 0
    body: bytes = b""
    payload: Any = None


class Gateway:
    """State shared by the routes of one app, and the predict and feedback logic over it."""

    def __init__(self, settings: GatewaySettings, client_factory: ClientFactory | None = None) -> None:
        """Args:
        settings: the gateway settings.
        client_factory: builds the inference client in :meth:`start`; by default the Triton client
            ``settings.triton_protocol`` names (:func:`gateway.upstream.make_client`).
        """
        self.settings = settings
        self.models = ServedModels(settings.model_repository, dict(settings.range_policy_overrides))
        self.policies = PolicyStore(settings.traffic_policy_path)
        self.metrics = GatewayMetrics()
        self.drift = DriftMonitor(settings.drift_window, settings.drift_min_records)
        self.metrics.add_collector(self.drift)
        self.metrics.add_collector(CallbackCollector(lambda: policy_families(self.models, self.policies)))
        self._quality = CallbackCollector(
            lambda: quality_families(self.models, self.feedback, settings.quality_alert_ratio), cache_s=2.0
        )
        self.metrics.add_collector(self._quality)
        self.client_factory = client_factory or make_client
        self.triton: InferenceClient | None = None
        self.feedback: FeedbackStore | None = None
        self.audit: AuditLog | None = None
        self.in_flight = 0
        self.feedback_in_flight = 0
        self.body_deadlines = BodyDeadlines(settings.body_read_timeout_s)
        self.draining = False
        self._ready_cache: tuple[float, bool] = (0.0, False)
        self.shadow = Shadow(self.models, settings, self.metrics, self.client, self._observe)
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
                queue_max_bytes=s.audit_queue_max_bytes,
            )
            self.audit.start()

    async def stop(self, grace_s: float = 10.0) -> None:
        """Readiness false, let in-flight and shadow requests finish, then close everything."""
        self.draining = True
        deadline = time.monotonic() + grace_s
        while self.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await self.shadow.drain(max(0.1, deadline - time.monotonic()))
        await self.body_deadlines.stop()
        client, self.triton = self.triton, None
        if client is not None:
            await client.close()
        for writer in (self.feedback, self.audit):
            if writer is not None:
                await asyncio.to_thread(writer.close)
        self.feedback = self.audit = None

    def client(self) -> InferenceClient:
        """The inference client (only between :meth:`start` and :meth:`stop`)."""
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
        """The default model's champion loaded and ready in Triton (answer cached briefly).

        Triton's own readiness (``/v2/health/ready``) is not asked: Triton runs with strict
        readiness, which stays false while any version of any model failed to load, e.g. a
        candidate that the sync controller refused and reverted; the gateway can serve all the
        same, and must not drop out of its load balancer for it.
        """
        if self.draining:
            return False
        checked_at, answer = self._ready_cache
        if time.monotonic() - checked_at < self.settings.readiness_cache_s:
            return answer
        answer = False
        try:
            champion = self.models.target(self.settings.default_model)
            client = self.client()
            answer = await client.model_ready(champion.model, champion.version)
        except GatewayError:
            answer = False
        self._ready_cache = (time.monotonic(), answer)
        return answer

    # -- predict ---------------------------------------------------------------------------------
    def choose_version(self, model: str) -> tuple[ServedVersion, bool]:
        """The version that answers one request to ``model``, and whether a shadow call is due.

        The challenger answers the model's canary share of requests (the champion when the
        challenger cannot be read); requests the champion answers are mirrored to the
        challenger when the model's shadow switch is on.
        """
        champion = self.models.target(model)
        policy = self.policies.get(model)
        routing = self.models.routing(model)
        has_challenger = routing.challenger is not None and routing.challenger != routing.champion
        if has_challenger and policy.canary_share > 0 and self._random.random() < policy.canary_share:
            try:
                return self.models.target(model, "challenger"), False
            except GatewayError:
                log.warning("%s challenger v%s is not available: the champion answers", model, routing.challenger)
        return champion, has_challenger and policy.shadow

    async def predict(self, model: str, request_id: str, read_body: BodyReader) -> Answer:
        """Answer one prediction request (both predict routes): the steps in this module's docstring.

        Args:
            model: the model named by the route (the default model for ``/predict``).
            request_id: the request's id (the client's ``X-Request-ID`` when valid, else a new one).
            read_body: reads the request body, called once after admission.

        Returns:
            The JSON answer and its headers (``x-request-id``, ``x-model-version``, ``x-model-alias``).

        Raises:
            GatewayError: the error to answer with; its headers carry ``x-request-id``.
        """
        started = time.perf_counter()
        wall = time.time()
        route = "/predict"
        outcome = _Outcome()
        metrics = self.metrics
        if self.in_flight >= self.settings.max_in_flight:
            metrics.child(metrics.requests, self._model_label(model), "", route, "503", Overloaded.code).inc()
            raise Overloaded(
                "too many requests in flight; retry shortly",
                headers={"Retry-After": "1", "x-request-id": request_id},
            )
        in_flight = metrics.child(metrics.in_flight, route)
        counted = False
        try:
            served, shadow = self.choose_version(model)
            outcome.served = served
            outcome.body = await read_body(self.settings.max_body_bytes)
            # The slot is for work: taken once the body is here, so slow senders never hold one.
            if self.in_flight >= self.settings.max_in_flight:
                raise Overloaded("too many requests in flight; retry shortly", headers={"Retry-After": "1"})
            self.in_flight += 1
            in_flight.inc()
            counted = True
            body = parse_json(outcome.body, self.settings.max_records + 2)
            if self.settings.audit_log_payloads:
                outcome.payload = body
            batch = validate(served.schema, body, self.settings.max_records)
            outcome.records, outcome.flags = batch.rows, len(batch.flags)
            version = str(served.version)
            metrics.child(metrics.records, model).observe(batch.rows)
            for flag in batch.flags:
                metrics.flags.labels(model, version, flag.field, flag.reason).inc()
            called = time.perf_counter()
            try:
                matrix = await infer_in_chunks(
                    self.client(), served, batch, self.models.max_batch_size(model), request_id
                )
            except ModelNotReady:
                if served.alias != "challenger":
                    raise
                # The challenger is changing (unloaded before routing says so): the champion answers.
                served, batch = self._champion_instead(model, served, body)
                outcome.served, outcome.records, outcome.flags = served, batch.rows, len(batch.flags)
                version = str(served.version)
                matrix = await infer_in_chunks(
                    self.client(), served, batch, self.models.max_batch_size(model), request_id
                )
            finally:
                metrics.child(metrics.triton_latency, model, version).observe(time.perf_counter() - called)
            self._observe(served, batch, matrix, request_id)
            if shadow:
                self.shadow.mirror(served, body, batch, matrix, request_id)
            names = [o.name for o in served.schema.outputs]
            if len(names) == 1:
                name = names[0]
                predictions = [{name: value} for value in matrix[:, 0].tolist()]
            else:
                predictions = [dict(zip(names, row, strict=True)) for row in matrix.tolist()]
            answer = {
                "request_id": request_id,
                "model": {"name": served.model, "version": served.version, "alias": served.alias},
                "predictions": predictions,
                "flags": [f.as_dict() for f in batch.flags],
            }
            headers = {"x-request-id": request_id, "x-model-version": version, "x-model-alias": served.alias}
            return orjson.dumps(answer), headers
        except GatewayError as exc:
            outcome.status, outcome.code = exc.status_code, exc.code
            exc.headers.setdefault("x-request-id", request_id)
            served_by = outcome.served
            if isinstance(exc, NonFinitePrediction) and served_by is not None:
                metrics.child(metrics.non_finite, served_by.model, str(served_by.version), "predict").inc()
            raise
        except Exception:
            outcome.status, outcome.code = 500, "internal_error"
            raise
        finally:
            if counted:
                self.in_flight -= 1
                in_flight.dec()
            elapsed = time.perf_counter() - started
            version_label = str(outcome.served.version) if outcome.served else ""
            label = model if outcome.served else self._model_label(model)
            metrics.child(metrics.requests, label, version_label, route, str(outcome.status), outcome.code).inc()
            metrics.child(metrics.latency, label, version_label, route).observe(elapsed)
            self._audit(wall, request_id, route, model, outcome, elapsed)

    def _champion_instead(self, model: str, challenger: ServedVersion, body: Any) -> tuple[ServedVersion, Batch]:
        """The champion and the request validated for it, for a canary request the challenger could not take."""
        champion = self.models.target(model)
        log.warning("%s challenger v%s is not ready in Triton: the champion answers", model, challenger.version)
        return champion, validate(champion.schema, body, self.settings.max_records)

    def _model_label(self, model: str) -> str:
        """``model`` when it is served, else ``_unknown``: clients choose the name in the URL, and
        every name they try must not become a metric series."""
        return model if model in self.models.models() else "_unknown"

    def _audit(self, wall: float, request_id: str, route: str, model: str, o: _Outcome, elapsed: float) -> None:
        if self.audit is None:
            return
        v = o.served
        self.audit.submit(
            AuditEntry(
                time=wall,
                request_id=request_id,
                route=route,
                model=model,
                version=v.version if v else None,
                alias=v.alias if v else None,
                run_id=v.run_id if v else None,
                status=o.status,
                code=o.code,
                latency_s=elapsed,
                records=o.records,
                flags=o.flags,
                body=o.body,
                payload=o.payload,
            )
        )

    def _observe(self, served: ServedVersion, batch: Batch, matrix: np.ndarray, request_id: str) -> None:
        """Drift window and feedback store of an answered batch (cheap: no I/O on this thread)."""
        profile = self.models.profile(served.model, served.version)
        self.drift.observe(
            served.model, served.version, served.schema, profile, batch.numeric, batch.categorical, matrix
        )
        if self.feedback is not None:
            self.feedback.submit(
                StoredPrediction(
                    request_id=request_id,
                    model=served.model,
                    version=served.version,
                    created_at=time.time(),
                    outputs=tuple(o.name for o in served.schema.outputs),
                    values=matrix,
                )
            )

    # -- feedback --------------------------------------------------------------------------------
    async def join_outcome(self, read_body: BodyReader) -> bytes:
        """Join the true outcome of an earlier request to its prediction (``POST /feedback``).

        The challenger that shadowed the request is scored on the same outcome.

        Args:
            read_body: reads the request body (a :class:`gateway.wire.FeedbackRequest`).

        Returns:
            The JSON answer (a :class:`gateway.wire.FeedbackResponse`).

        Raises:
            GatewayError: feedback switched off, a malformed body, an unknown or already reported request id.
        """
        started = time.perf_counter()
        wall = time.time()
        route = "/feedback"
        outcome = _Outcome()
        model, version, request_id = "", "", ""
        counted = False
        try:
            store = self.feedback
            if store is None:
                raise ModelNotReady("feedback is switched off on this gateway (MODELOPS_GATEWAY_FEEDBACK_ENABLED)")
            outcome.body = await read_body(self.settings.max_body_bytes)
            if self.feedback_in_flight >= self.settings.feedback_max_in_flight:
                raise Overloaded("too many feedback requests in flight; retry shortly", headers={"Retry-After": "1"})
            self.feedback_in_flight += 1
            counted = True
            body = parse_json(outcome.body, self.settings.max_records + 2)
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
            shadow = await asyncio.to_thread(store.join_shadow, f"{request_id}{SHADOW_SUFFIX}", body["outcomes"])
            if shadow is not None:
                self.metrics.feedback.labels(shadow.model, str(shadow.version)).inc(shadow.outcomes)
            self._quality.invalidate()
            answer = {"request_id": request_id, "model": model, "version": joined.version, "outcomes": joined.outcomes}
            return orjson.dumps(answer)
        except GatewayError as exc:
            outcome.status, outcome.code = exc.status_code, exc.code
            raise
        except Exception:
            outcome.status, outcome.code = 500, "internal_error"
            raise
        finally:
            if counted:
                self.feedback_in_flight -= 1
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(model, version, route, str(outcome.status), outcome.code).inc()
            self.metrics.latency.labels(model, version, route).observe(elapsed)
            self._audit(wall, request_id, route, model, outcome, elapsed)

    # -- what is served --------------------------------------------------------------------------
    def served_models(self) -> dict[str, Any]:
        """Every served model with its champion/challenger, traffic policy and the champion's fields."""
        out: dict[str, Any] = {}
        for name, routing in self.models.models().items():
            entry: dict[str, Any] = {
                "champion": routing.champion,
                "challenger": routing.challenger,
                "traffic": self.policies.get(name).model_dump(),
            }
            if routing.champion is not None:
                with contextlib.suppress(GatewayError):  # not readable yet: listed without its fields
                    entry["fields"] = self.models.schema(name, routing.champion).record_json_schema()
            out[name] = entry
        return {"models": out, "default": self.settings.default_model}
