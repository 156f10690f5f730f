"""The gateway's only door to Triton: async gRPC inference and readiness.

Translates ``InferenceServerException`` into the gateway's own errors: unavailable -> 503
(:class:`ModelNotReady`), deadline exceeded -> 504 (:class:`UpstreamTimeout`), anything
else -> 502 (:class:`UpstreamError`).
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from gateway.errors import ModelNotReady, UpstreamError, UpstreamTimeout

log = logging.getLogger(__name__)


class InferenceClient(Protocol):
    """What the gateway needs from an inference server (:class:`TritonClient`; a fake in unit tests)."""

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


class TritonClient:
    """One shared async gRPC channel to Triton."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._client = grpcaio.InferenceServerClient(url)

    async def close(self) -> None:
        """Close the channel."""
        await self._client.close()

    async def server_ready(self) -> bool:
        """Whether Triton answers and is ready."""
        try:
            return bool(await self._client.is_server_ready(client_timeout=2.0))
        except InferenceServerException:
            return False

    async def model_ready(self, model: str, version: int) -> bool:
        """Whether ``model`` ``version`` is loaded and ready."""
        try:
            return bool(await self._client.is_model_ready(model, str(version), client_timeout=2.0))
        except InferenceServerException:
            return False

    async def infer(
        self,
        model: str,
        version: int,
        tensors: dict[str, np.ndarray],
        outputs: list[str],
        request_id: str = "",
    ) -> dict[str, np.ndarray]:
        """Run one inference on an explicit version; return the named output arrays."""
        inputs = []
        for name, array in tensors.items():
            dtype = "FP32" if array.dtype == np.float32 else "INT64"
            tensor = grpcclient.InferInput(name, list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        requested = [grpcclient.InferRequestedOutput(o) for o in outputs]
        try:
            result = await self._client.infer(
                model,
                inputs,
                model_version=str(version),
                outputs=requested,
                request_id=request_id,
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as exc:
            raise _translate(exc, model, version) from exc
        arrays: dict[str, np.ndarray] = {}
        for o in outputs:
            arr = result.as_numpy(o)
            if arr is None:
                raise UpstreamError(f"model {model} v{version} returned no output {o!r}; check its export")
            arrays[o] = arr
        return arrays


def _translate(exc: InferenceServerException, model: str, version: int) -> Exception:
    status = str(exc.status() or "")
    message = exc.message() or ""
    log.warning("Triton error on %s v%d: %s %s", model, version, status, message)
    if "DEADLINE_EXCEEDED" in status or "Deadline Exceeded" in message:
        return UpstreamTimeout("the model did not answer in time; retry, or send fewer records")
    if "UNAVAILABLE" in status or "unavailable" in message.lower() or "not ready" in message.lower():
        return ModelNotReady("the model server is not available right now; retry shortly", headers={"Retry-After": "1"})
    if "NOT_FOUND" in status or "unknown model" in message.lower():
        return ModelNotReady(
            f"model {model} version {version} is not loaded; retry shortly", headers={"Retry-After": "1"}
        )
    return UpstreamError("the model server failed this request; if it persists, tell the operators")
