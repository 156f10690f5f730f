"""Shadow traffic: requests the champion answered are mirrored to the model's challenger.

The mirrored call runs as a task after the client has its answer, so it never adds latency;
at most ``shadow_max_in_flight`` run at once (beyond that a mirror is dropped and counted), and
at most ``shadow_max_connections`` of them call Triton at once (the rest wait): the champion
shares the Triton client's connection pool, and a slow challenger must never hold all of it. The
challenger's answer is stored like any prediction, under ``<request_id>:shadow``
(:data:`SHADOW_SUFFIX`), so feedback for the request scores the challenger too, and its
disagreement with the champion is recorded per record
(``modelops_gateway_shadow_disagreement``). A challenger answer with a NaN or infinite output is
counted (outcome ``non_finite``, ``modelops_gateway_non_finite_predictions_total``) and dropped:
never stored, binned or compared. Which requests are mirrored is decided by
:meth:`gateway.dataplane.Gateway.choose_version`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from gateway.contract import Batch, validate
from gateway.errors import GatewayError, InvalidInput, NonFinitePrediction
from gateway.inference import infer_in_chunks
from gateway.metrics import GatewayMetrics
from gateway.serving import ServedModels, ServedVersion
from gateway.settings import GatewaySettings
from gateway.upstream import InferenceClient

log = logging.getLogger(__name__)

SHADOW_SUFFIX = ":shadow"
"""Stored predictions of a mirrored call are keyed ``<request_id>:shadow`` (``:`` never occurs in
client request ids), so feedback for a request also scores the challenger that shadowed it."""

Observe = Callable[[ServedVersion, Batch, np.ndarray, str], None]
"""Records an answered batch (drift window, stored prediction)."""


class Shadow:
    """The mirrored calls of one app (their tasks, so that stopping can wait for them)."""

    def __init__(
        self,
        models: ServedModels,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        client: Callable[[], InferenceClient],
        observe: Observe,
    ) -> None:
        """Args:
        models: the served models (the challenger of each).
        settings: ``shadow_max_in_flight`` and ``max_records`` are used.
        metrics: the ``shadow_*`` metrics are updated.
        client: the inference client of the moment (raises while the gateway is not started).
        observe: the data plane's record of an answered batch.
        """
        self.models = models
        self.settings = settings
        self.metrics = metrics
        self._client = client
        self._observe = observe
        self.tasks: set[asyncio.Task[None]] = set()
        self._budget: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    @property
    def max_connections(self) -> int:
        """Triton calls the shadow path may have at once: at most half the client's connections."""
        return max(1, min(self.settings.shadow_max_connections, self.settings.triton_max_connections // 2))

    def _connections(self) -> asyncio.Semaphore:
        """The shadow path's share of the Triton connections (one per event loop: tests run several)."""
        loop = asyncio.get_running_loop()
        if self._budget is None or self._budget[0] is not loop:
            self._budget = (loop, asyncio.Semaphore(self.max_connections))
        return self._budget[1]

    def mirror(self, champion: ServedVersion, body: Any, batch: Batch, answer: np.ndarray, request_id: str) -> None:
        """Start the shadow call of a request the champion answered, without waiting for it.

        Args:
            champion: the version that answered.
            body: the parsed request body (validated again when the challenger's features differ).
            batch: the validated batch the champion was called with.
            answer: the champion's outputs, ``[rows, n_outputs]``.
            request_id: the request's id.
        """
        routing = self.models.routing(champion.model)
        version = str(routing.challenger)
        if len(self.tasks) >= self.settings.shadow_max_in_flight:
            self.metrics.shadow_requests.labels(champion.model, version, "dropped").inc()
            return
        task = asyncio.get_running_loop().create_task(self._call(champion, body, batch, answer, request_id))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def drain(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the running shadow calls, then cancel the rest."""
        if not self.tasks:
            return
        _done, pending = await asyncio.wait(set(self.tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()

    async def _call(
        self, champion: ServedVersion, body: Any, batch: Batch, answer: np.ndarray, request_id: str
    ) -> None:
        """The challenger's answer to the request: stored, timed, compared to the champion's; never raises."""
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
            async with self._connections():
                started = time.perf_counter()
                try:
                    matrix = await infer_in_chunks(
                        self._client(),
                        challenger,
                        mirrored,
                        self.models.max_batch_size(model),
                        f"{request_id}{SHADOW_SUFFIX}",
                    )
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
        except NonFinitePrediction:
            # The challenger answered NaN or infinity: counted, never stored, binned or compared.
            result = "non_finite"
            self.metrics.non_finite.labels(model, version, "shadow").inc()
            log.info("shadow call to %s v%s failed: %s", model, version, NonFinitePrediction.code)
        except GatewayError as exc:
            log.info("shadow call to %s v%s failed: %s", model, version, exc.code)
        except asyncio.CancelledError:
            result = "cancelled"
            raise
        except Exception:
            log.exception("shadow call to %s v%s failed", model, version)
        finally:
            self.metrics.shadow_requests.labels(model, version, result).inc()
