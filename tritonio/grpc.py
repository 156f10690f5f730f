"""Triton over gRPC on asyncio (``tritonclient.grpc.aio``): the same calls and errors as :mod:`tritonio.aio`.

Selectable in the gateway (``MODELOPS_GATEWAY_TRITON_PROTOCOL=grpc``) where HTTP/1.1 cannot be
used; it costs several times more client CPU per call (docs/benchmarks.md). The only module of
this package that needs ``tritonclient``; failures become :mod:`tritonio.errors` by their gRPC
status code (:func:`tritonio.errors.from_grpc_status`).
"""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from tritonio.codec import datatype_of
from tritonio.errors import MissingOutput, from_grpc_status

READY_TIMEOUT_S = 2.0
"""Deadline of ``server_ready`` and ``model_ready`` (as the HTTP client)."""


class TritonGrpcClient:
    """One shared async gRPC channel to Triton; bound to the event loop that first uses it."""

    def __init__(self, url: str, timeout_s: float) -> None:
        """Args:
        url: Triton's gRPC endpoint (``host:port``, or any target gRPC accepts).
        timeout_s: deadline of one inference call.
        """
        self.url = url
        self.timeout_s = timeout_s
        self._client = grpcaio.InferenceServerClient(url)

    async def close(self) -> None:
        """Close the channel."""
        await self._client.close()

    async def server_ready(self) -> bool:
        """Whether Triton answers and is ready (within 2 s)."""
        try:
            return bool(await self._client.is_server_ready(client_timeout=READY_TIMEOUT_S))
        except InferenceServerException:
            return False

    async def model_ready(self, model: str, version: int) -> bool:
        """Whether ``model`` ``version`` is loaded and ready (within 2 s)."""
        try:
            return bool(await self._client.is_model_ready(model, str(version), client_timeout=READY_TIMEOUT_S))
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
        """Run one inference on an explicit version; return the named output arrays.

        Raises:
            Unavailable: Triton unreachable (gRPC ``UNAVAILABLE``).
            DeadlineExceeded: no answer within ``timeout_s``.
            Refused: Triton refused or failed the request (its status mapped to HTTP, its message).
            MissingOutput: a requested output is not in the answer.
        """
        inputs = []
        for name, array in tensors.items():
            tensor = grpcclient.InferInput(name, list(array.shape), datatype_of(array.dtype))
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
            raise from_grpc_status(exc.status(), exc.message() or "", self.timeout_s) from exc
        arrays: dict[str, np.ndarray] = {}
        for o in outputs:
            arr = result.as_numpy(o)
            if arr is None:
                raise MissingOutput(o)
            arrays[o] = arr
        return arrays
