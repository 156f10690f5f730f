"""Prometheus metrics of the gateway (names are part of the SRE contract: deploy/metrics_catalog.yaml).

Counters and histograms are updated on the request path. Values that are derived from state
(drift PSI, live quality, the traffic policy, served versions) are computed by collectors when
``/metrics`` is scraped, so they cost nothing per request.

Several uvicorn workers: with ``PROMETHEUS_MULTIPROC_DIR`` set (before the process starts)
counters, histograms and gauges of every worker are aggregated through files
(:func:`exposition`). Collector values come from the worker that answers the scrape: the
policy, routing and live quality are shared (files, SQLite), drift windows are that worker's
sample of the traffic.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
RECORD_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Absolute difference between champion and challenger outputs, in the output's unit.
DISAGREEMENT_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0)


M = TypeVar("M", bound=MetricWrapperBase)


def multiprocess_dir() -> str | None:
    """The prometheus-client multiprocess folder, when the process runs in that mode."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class GatewayMetrics:
    """All gateway metrics, on one registry (a fresh one per app, so tests do not collide)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.collectors: list[Collector] = []
        self._children: dict[tuple[int, tuple[str, ...]], MetricWrapperBase] = {}
        r = self.registry
        self.requests = Counter(
            "modelops_gateway_requests",
            "Requests by outcome: status is the HTTP status, code the error code (ok when 2xx)",
            ["model", "version", "route", "status", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "modelops_gateway_request_duration_seconds",
            "Gateway latency, request in to response out",
            ["model", "version", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.triton_latency = Histogram(
            "modelops_gateway_triton_duration_seconds",
            "Time spent in the Triton call",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "modelops_gateway_in_flight_requests",
            "Requests being served",
            ["route"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.records = Histogram(
            "modelops_gateway_records_per_request",
            "Records per /predict request",
            ["model"],
            buckets=RECORD_BUCKETS,
            registry=r,
        )
        self.served_version = Gauge(
            "modelops_gateway_served_version",
            "Version behind each alias",
            ["model", "alias"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.flags = Counter(
            "modelops_gateway_feature_flags",
            "Accepted values flagged by validation",
            ["model", "version", "feature", "reason"],
            registry=r,
        )
        self.shadow_disagreement = Histogram(
            "modelops_gateway_shadow_disagreement",
            "Absolute difference between champion and challenger outputs per mirrored record (output unit)",
            ["model", "champion_version", "challenger_version"],
            buckets=DISAGREEMENT_BUCKETS,
            registry=r,
        )
        self.shadow_requests = Counter(
            "modelops_gateway_shadow_requests",
            "Requests mirrored to the challenger, by outcome (ok, invalid, error, dropped)",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.shadow_latency = Histogram(
            "modelops_gateway_shadow_duration_seconds",
            "Time of the mirrored Triton call (off the client's path)",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.feedback = Counter(
            "modelops_gateway_feedback_outcomes",
            "Outcomes joined to predictions by POST /feedback",
            ["model", "version"],
            registry=r,
        )
        self.dropped = Counter(
            "modelops_gateway_background_dropped",
            "Audit lines or stored predictions dropped because the writer fell behind",
            ["writer"],
            registry=r,
        )

    def child(self, metric: M, *labels: str) -> M:
        """``metric.labels(*labels)``, remembered: the request path skips the label checks and the lock.

        Only for labels of bounded cardinality (served models and versions, routes, statuses, codes).
        """
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found  # type: ignore[return-value]

    def add_collector(self, collector: Collector) -> None:
        """Register a scrape-time collector."""
        self.registry.register(collector)
        self.collectors.append(collector)

    def exposition(self) -> bytes:
        """The text exposition of every metric (aggregated across workers in multiprocess mode)."""
        mp_dir = multiprocess_dir()
        if mp_dir is None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=mp_dir)
        for collector in self.collectors:
            registry.register(collector)
        return generate_latest(registry)


class CallbackCollector(Collector):
    """A collector whose gauge families come from a function, cached for ``cache_s`` seconds."""

    def __init__(self, produce: Callable[[], list[GaugeMetricFamily]], cache_s: float = 0.0) -> None:
        self._produce = produce
        self._cache_s = cache_s
        self._cached: tuple[float, list[GaugeMetricFamily]] | None = None

    def invalidate(self) -> None:
        """Recompute at the next scrape."""
        self._cached = None

    def collect(self) -> Iterator[Metric]:
        """The families, recomputed when the cache expired."""
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] >= self._cache_s:
            self._cached = (now, self._produce())
        yield from self._cached[1]


def finite(value: float) -> bool:
    """Whether ``value`` is a finite float (NaN gauges are left out of the exposition)."""
    return math.isfinite(value)
