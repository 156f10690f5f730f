"""The gateway's only door to Triton: the client it needs, the one it makes, and what a failure means to its callers.

:func:`make_client` builds the :mod:`tritonio` client ``MODELOPS_GATEWAY_TRITON_PROTOCOL`` names:

* ``http`` (the default): :class:`tritonio.aio.TritonHttpClient`, a pool of keep-alive HTTP/1.1
  connections with binary tensors; several times less client CPU per call than gRPC, which is
  what bounds a gateway worker.
* ``grpc``: :class:`tritonio.grpc.TritonGrpcClient`, one shared ``tritonclient.grpc.aio`` channel.

and wraps it in :class:`UpstreamClient`, which turns :mod:`tritonio.errors` into the gateway's
own errors in one place (:func:`gateway_error`): Triton unreachable, the model (version) unknown
or not ready -> 503 (:class:`ModelNotReady`, with Retry-After), no answer within the deadline ->
504 (:class:`UpstreamTimeout`), anything else -> 502 (:class:`UpstreamError`). Triton's message
is logged at warning, never returned to the client. The gateway keeps no codec or framing of
its own.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from gateway.errors import GatewayError, ModelNotReady, UpstreamError, UpstreamTimeout
from gateway.settings import GatewaySettings
from tritonio.aio import TritonHttpClient
from tritonio.errors import BadResponse, DeadlineExceeded, MissingOutput, Refused, TritonError, Unavailable

log = logging.getLogger(__name__)

NOT_AVAILABLE = "the model server is not available right now; retry shortly"
TOO_SLOW = "the model did not answer in time; retry, or send fewer records"
FAILED = "the model server failed this request; if it persists, tell the operators"
RETRY_AFTER = {"Retry-After": "1"}


class InferenceClient(Protocol):
    """What the gateway needs from an inference server (:class:`UpstreamClient`; a fake in unit tests)."""

    async def close(self) -> None:
        """Release the connection."""

    async def server_ready(self) -> bool:
        """Whether the server answers and is ready."""

    async def model_ready(self, model: str, version: int) -> bool:
        """Whether ``model`` ``version`` is loaded and ready."""

    async def infer(
        self,
        model: str,
        version: int,
        tensors: dict[str, np.ndarray],
        outputs: list[str],
        request_id: str = "",
    ) -> dict[str, np.ndarray]:
        """Run one inference on an explicit version; return the named output arrays."""


class UpstreamClient:
    """A :mod:`tritonio` client whose failures are the gateway's errors (:func:`gateway_error`)."""

    def __init__(self, client: InferenceClient) -> None:
        """Args:
        client: a :mod:`tritonio` async client (HTTP or gRPC), raising :mod:`tritonio.errors`.
        """
        self.client = client

    async def close(self) -> None:
        """Close the client's connections."""
        await self.client.close()

    async def server_ready(self) -> bool:
        """Whether Triton answers and is ready."""
        return await self.client.server_ready()

    async def model_ready(self, model: str, version: int) -> bool:
        """Whether ``model`` ``version`` is loaded and ready."""
        return await self.client.model_ready(model, version)

    async def infer(
        self,
        model: str,
        version: int,
        tensors: dict[str, np.ndarray],
        outputs: list[str],
        request_id: str = "",
    ) -> dict[str, np.ndarray]:
        """Run one inference on an explicit version; return the named output arrays.

        Raises:
            ModelNotReady: Triton unreachable, or the model version unknown or not ready (503).
            UpstreamTimeout: no complete answer within the deadline (504).
            UpstreamError: Triton refused or failed the request, or answered nonsense (502).
        """
        try:
            return await self.client.infer(model, version, tensors, outputs, request_id)
        except TritonError as exc:
            raise gateway_error(exc, model, version) from exc


def gateway_error(exc: TritonError, model: str, version: int) -> GatewayError:
    """The gateway's error for a failed call to ``model`` ``version``; Triton's own words go to the log only."""
    if isinstance(exc, Refused):
        log.warning("Triton error on %s v%d: %s", model, version, exc)
        if exc.kind == "not_found":
            return ModelNotReady(f"model {model} version {version} is not loaded; retry shortly", headers=RETRY_AFTER)
        if exc.kind == "unavailable":
            return ModelNotReady(NOT_AVAILABLE, headers=RETRY_AFTER)
        return UpstreamError(FAILED)
    if isinstance(exc, Unavailable):
        log.warning("Triton unreachable for %s v%d: %s", model, version, exc)
        return ModelNotReady(NOT_AVAILABLE, headers=RETRY_AFTER)
    if isinstance(exc, DeadlineExceeded):
        log.warning("Triton did not answer %s v%d within %.3g s", model, version, exc.timeout_s)
        return UpstreamTimeout(TOO_SLOW)
    if isinstance(exc, MissingOutput):
        log.warning("Triton answered %s v%d without the output %r", model, version, exc.name)
        return UpstreamError(f"model {model} v{version} returned no output {exc.name!r}; check its export")
    if isinstance(exc, BadResponse):
        log.warning("Triton answered %s v%d with an unreadable response: %s", model, version, exc)
    else:
        log.warning("Triton call to %s v%d failed: %r", model, version, exc)
    return UpstreamError(FAILED)


def make_client(settings: GatewaySettings) -> InferenceClient:
    """The inference client ``settings.triton_protocol`` asks for (HTTP by default)."""
    if settings.triton_protocol == "grpc":
        from tritonio.grpc import TritonGrpcClient  # tritonclient's gRPC stack, only when asked for

        return UpstreamClient(TritonGrpcClient(settings.triton_grpc_url, settings.triton_timeout_s))
    return UpstreamClient(
        TritonHttpClient(settings.triton_http_url, settings.triton_timeout_s, settings.triton_max_connections)
    )
