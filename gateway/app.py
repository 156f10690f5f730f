"""The transport: ``create_app(settings)`` builds the HTTP app over the data plane.

Where a request goes:

- ``POST /predict`` and ``POST /models/{name}/predict`` are served by :meth:`GatewayApp.__call__`,
  the ASGI entry point, before FastAPI sees them: routing, dependency resolution, middleware
  and response validation cost about as much CPU as the rest of a prediction, and these two
  routes need none of it. The fast path checks the API key, takes the request id from the
  headers and hands the body to :meth:`gateway.dataplane.Gateway.predict`. The two routes are
  also registered in :func:`create_app`, for the OpenAPI document and for what the fast path
  does not take (e.g. a model name over 64 characters, answered 422 by FastAPI's validation).
- every other route (feedback, models, health, metrics, admin traffic policy) is an ordinary
  FastAPI route in :func:`create_app`; ``POST /feedback`` goes to
  :meth:`gateway.dataplane.Gateway.join_outcome`.
- errors: a :class:`~gateway.errors.GatewayError` is answered with its status, headers and
  :meth:`~gateway.errors.GatewayError.body`; anything else with the internal-error body
  (:mod:`gateway.errors` builds every error body; none echoes the request).

The lifespan starts the data plane, polls routing, and on SIGTERM turns readiness false before
handing the signal to uvicorn (:func:`_drain_on_sigterm`). The wire models are in
:mod:`gateway.wire`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from gateway.contract import request_body_schema
from gateway.dataplane import ClientFactory, Gateway
from gateway.errors import (
    ClientDisconnected,
    Forbidden,
    GatewayError,
    InvalidInput,
    error_body,
    http_error_body,
    internal_error_body,
)
from gateway.policy import TrafficPolicy
from gateway.settings import GatewaySettings
from gateway.transport import check_bearer, parse_json, read_json_bytes, request_id_of
from gateway.wire import (
    ERROR_RESPONSES,
    FEEDBACK_ERRORS,
    FeedbackResponse,
    PredictResponse,
    feedback_request_body,
    traffic_request_body,
)
from modelspec import ModelSchema

log = logging.getLogger(__name__)

__all__ = ["ClientFactory", "GatewayApp", "create_app"]

JSON = "application/json"


class GatewayApp(FastAPI):
    """The FastAPI app, with ``POST /predict`` and ``POST /models/{name}/predict`` served by
    :meth:`__call__` without FastAPI's per-request machinery (this module's docstring says why).

    The fast path answers with the same bodies, statuses and headers the registered routes give.
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
        """The model a predict path names, None for any other path."""
        if path == "/predict":
            return self.gateway.settings.default_model
        if path.startswith("/models/") and path.endswith("/predict"):
            name = path[8:-8]
            if 0 < len(name) <= 64 and "/" not in name:
                return name
        return None

    async def _predict(self, scope: Scope, receive: Receive, send: Send, model: str) -> None:
        """The fast path of one prediction; the same steps as the registered ``predict`` routes, inlined
        (no helper between here and the data plane: this is the hot path)."""
        gw = self.gateway
        request = Request(scope, receive)
        try:
            if gw.settings.api_keys:
                check_bearer(request, gw.settings.api_keys)
            body, headers = await gw.predict(
                model, request_id_of(request), partial(read_json_bytes, request, deadlines=gw.body_deadlines)
            )
            response: Response = Response(body, media_type=JSON, headers=headers)
        except ClientDisconnected:
            return  # nobody is left to answer (counted and audited as 499 client_disconnected)
        except GatewayError as exc:
            response = _error_response(exc)
        except ClientDisconnect:
            return  # nobody is left to answer
        except Exception as exc:
            response = _internal_error_response(exc)
        await response(scope, receive, send)


def _error_response(exc: GatewayError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


def _internal_error_response(exc: Exception) -> JSONResponse:
    log.error("unexpected error", exc_info=exc)
    return JSONResponse(internal_error_body(), status_code=500)


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
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(http_error_body(exc.status_code), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default body echoes the input; name the parameter only.
        errors = exc.errors()
        where = ".".join(str(p) for p in errors[0].get("loc", ())[1:]) if errors else None
        return JSONResponse(error_body(InvalidInput.code, "invalid request parameter", where or None), status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        return _internal_error_response(exc)

    body_doc = request_body_schema(startup_schema, settings.max_records)

    def api_key(request: Request) -> None:
        if settings.api_keys:
            check_bearer(request, settings.api_keys)

    async def predict_response(request: Request, model: str) -> Response:
        body, headers = await gw.predict(
            model, request_id_of(request), partial(read_json_bytes, request, deadlines=gw.body_deadlines)
        )
        return Response(body, media_type=JSON, headers=headers)

    # Registered for the OpenAPI document: GatewayApp.__call__ serves POST /predict before FastAPI
    # routes it, so this handler only runs when a request gets past the fast path.
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
        return await predict_response(request, settings.default_model)

    # Registered for the OpenAPI document and for names the fast path does not take (over 64
    # characters: 422 here); GatewayApp.__call__ serves every other POST /models/{name}/predict.
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
        return await predict_response(request, name)

    @app.post(
        "/feedback",
        response_model=FeedbackResponse,
        responses=FEEDBACK_ERRORS,
        openapi_extra={"requestBody": feedback_request_body()},
        summary="Report the true outcome of an earlier prediction",
        tags=["feedback"],
    )
    async def feedback(request: Request) -> Response:
        """Join the true outcome of an earlier `/predict` (by its `request_id`) to the prediction and
        its version; feeds `modelops_gateway_live_quality`. Each request id takes one report."""
        api_key(request)
        return Response(
            await gw.join_outcome(partial(read_json_bytes, request, deadlines=gw.body_deadlines)), media_type=JSON
        )

    @app.get("/models", tags=["models"], summary="Served models, their versions and fields")
    async def models(request: Request) -> dict[str, Any]:
        """Every served model with its champion/challenger, traffic policy and the champion's fields."""
        api_key(request)
        return gw.served_models()

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
        openapi_extra={"requestBody": traffic_request_body()},
    )
    async def put_traffic(request: Request, name: Annotated[str, Path(max_length=64)]) -> Response:
        """Replace the traffic policy of model ``name`` (admin key). Every worker follows within
        ``routing_poll_s`` when ``traffic_policy_path`` is set."""
        admin_key(request)
        gw.models.routing(name)  # 404 for a model that is not served
        body = parse_json(await read_json_bytes(request, 64 * 1024, gw.body_deadlines))
        try:
            policy = TrafficPolicy.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "body"
            raise InvalidInput(
                "the policy is {canary_share: 0..1, shadow: true|false}, nothing else", field=where
            ) from None
        await asyncio.to_thread(gw.policies.set, name, policy)
        return Response(orjson.dumps(policy.model_dump()), media_type=JSON)

    return app


async def _poll(gw: Gateway) -> None:
    """Re-read routing and traffic policy every ``routing_poll_s`` (the lifespan's task)."""
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
    """Tell prometheus-client's multiprocess mode that this worker's live gauges are gone."""
    from gateway.metrics import multiprocess_dir

    if multiprocess_dir():
        import os

        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())
