"""Model control of one or several Triton servers: load, readiness, smoke inference.

The sync controller talks to every Triton replica through this module, over HTTP with the
synchronous ``tritonclient`` (control traffic is rare; the request path lives in the gateway).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from modelspec import ModelSchema, Reference

log = logging.getLogger(__name__)


class TritonControlError(RuntimeError):
    """A Triton server refused or failed a control request; the message says which and why."""


class TritonControl:
    """Control client for one Triton server (HTTP endpoint ``host:port``)."""

    def __init__(self, url: str, timeout_s: float = 120.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        # tritonclient.http runs on gevent: a client must stay on the thread that made it.
        self._local = threading.local()

    @property
    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            import tritonclient.http as httpclient

            client = httpclient.InferenceServerClient(
                self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
            )
            self._local.client = client
        return client

    def close(self) -> None:
        """Close this thread's HTTP connections."""
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()
            self._local.client = None

    def server_ready(self) -> bool:
        """Whether the server answers and is ready."""
        try:
            return bool(self._client.is_server_ready())
        except Exception:  # connection refused, timeout: not ready either way
            return False

    def wait_server_ready(self, timeout_s: float) -> None:
        """Block until the server is ready; raise TritonControlError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.server_ready():
                return
            time.sleep(0.25)
        raise TritonControlError(f"Triton at {self.url} not ready after {timeout_s:.0f} s")

    def load(self, model: str) -> None:
        """(Re)load ``model`` from the repository; Triton applies its config's version policy.

        Versions that stay in the policy keep serving while the new ones load.
        """
        from tritonclient.utils import InferenceServerException

        started = time.monotonic()
        try:
            self._client.load_model(model)
        except InferenceServerException as exc:
            raise TritonControlError(f"Triton at {self.url} failed to load {model}: {exc.message()}") from exc
        log.info("Triton %s loaded %s in %.2f s", self.url, model, time.monotonic() - started)

    def ready_versions(self, model: str) -> set[int]:
        """Versions of ``model`` that are READY on this server."""
        try:
            index = self._client.get_model_repository_index()
        except Exception as exc:
            raise TritonControlError(f"Triton at {self.url} did not list its repository: {exc}") from exc
        return {
            int(entry["version"])
            for entry in index
            if entry.get("name") == model and entry.get("state") == "READY" and entry.get("version")
        }

    def smoke_test(self, model: str, version: int, schema: ModelSchema, reference: Reference) -> float:
        """Infer the reference rows on ``version`` and compare with the stored outputs.

        Returns the largest absolute difference; raises TritonControlError when it exceeds the
        reference tolerance or the inference fails.
        """
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        numeric = np.array([[np.nan if v is None else v for v in row] for row in reference.numeric], dtype=np.float32)
        categorical = np.array(reference.categorical, dtype=np.int64)
        inputs = [
            httpclient.InferInput(schema.numeric_tensor, list(numeric.shape), "FP32"),
            httpclient.InferInput(schema.categorical_tensor, list(categorical.shape), "INT64"),
        ]
        inputs[0].set_data_from_numpy(numeric, binary_data=True)
        inputs[1].set_data_from_numpy(categorical, binary_data=True)
        try:
            result = self._client.infer(model, inputs, model_version=str(version))
        except InferenceServerException as exc:
            raise TritonControlError(f"smoke inference on {model} v{version} at {self.url} failed: {exc}") from exc
        worst = 0.0
        for name, expected in reference.outputs.items():
            got = result.as_numpy(name)
            if got is None:
                raise TritonControlError(f"smoke inference on {model} v{version}: no output {name!r}")
            worst = max(worst, float(np.abs(got.reshape(-1) - np.asarray(expected, dtype=np.float32)).max()))
        if not worst <= reference.tolerance:
            raise TritonControlError(
                f"{model} v{version} on {self.url} differs from its reference outputs by {worst:.3g} "
                f"(tolerance {reference.tolerance:.3g})"
            )
        return worst
