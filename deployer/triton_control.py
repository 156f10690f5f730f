"""Model control of one or several Triton servers: load, readiness, smoke inference.

The sync controller talks to every Triton replica through this module, over HTTP with the
blocking :class:`tritonio.blocking.BlockingTritonClient` (control traffic is rare; the request
path lives in the gateway).
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from modelspec import ModelSchema, Reference
from modelspec.tensors import feed, reference_tensors
from tritonio.blocking import BlockingTritonClient
from tritonio.errors import Refused, TritonError

log = logging.getLogger(__name__)


class TritonControlError(RuntimeError):
    """A Triton server refused or failed a control request; the message says which and why."""


class TritonControl:
    """Control client for one Triton server (HTTP endpoint ``host:port``)."""

    def __init__(self, url: str, timeout_s: float = 120.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        # One keep-alive connection per client, one request at a time on it: a client per thread.
        self._local = threading.local()

    @property
    def _client(self) -> BlockingTritonClient:
        client: BlockingTritonClient | None = getattr(self._local, "client", None)
        if client is None:
            client = BlockingTritonClient(self.url, timeout_s=self.timeout_s)
            self._local.client = client
        return client

    def close(self) -> None:
        """Close this thread's HTTP connection."""
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()
            self._local.client = None

    def server_ready(self) -> bool:
        """Whether the server answers and is ready."""
        try:
            return self._client.server_ready()
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
        started = time.monotonic()
        try:
            self._client.load_model(model)
        except TritonError as exc:
            reason = exc.message if isinstance(exc, Refused) else str(exc)  # Triton's own words
            raise TritonControlError(f"Triton at {self.url} failed to load {model}: {reason}") from exc
        log.info("Triton %s loaded %s in %.2f s", self.url, model, time.monotonic() - started)

    def ready_versions(self, model: str) -> set[int]:
        """Versions of ``model`` that are READY on this server."""
        try:
            index = self._client.repository_index()
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
        reference tolerance, an output is NaN or infinite, or the inference fails.
        """
        inputs = feed(schema, *reference_tensors(reference))
        try:
            # No outputs named: Triton returns all of them, so a missing one is named below.
            result = self._client.infer(model, version, inputs)
        except TritonError as exc:
            raise TritonControlError(f"smoke inference on {model} v{version} at {self.url} failed: {exc}") from exc
        worst = 0.0
        for name, expected in reference.outputs.items():
            got = result.get(name)
            if got is None:
                raise TritonControlError(f"smoke inference on {model} v{version}: no output {name!r}")
            # Checked first: a NaN difference compares false, so max(worst, nan) would keep worst and pass.
            if not np.isfinite(got).all():
                raise TritonControlError(
                    f"{model} v{version} on {self.url} computed a value that is not a finite number (NaN or "
                    f"infinity) for output {name!r} on the reference rows; it is not served. Check the engine "
                    "Triton runs it with: an FP16 overflow, say (MODELOPS_REGISTRY_TENSORRT_FP16=false)"
                )
            worst = max(worst, float(np.abs(got.reshape(-1) - np.asarray(expected, dtype=np.float32)).max()))
        if not worst <= reference.tolerance:
            raise TritonControlError(
                f"{model} v{version} on {self.url} differs from its reference outputs by {worst:.3g} "
                f"(tolerance {reference.tolerance:.3g})"
            )
        return worst
