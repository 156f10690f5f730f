"""Prometheus metrics of the gateway (names are part of the SRE contract: deploy/metrics_catalog.yaml).

Counters and histograms (:class:`GatewayMetrics`) are updated on the request path. Values that
are derived from state are computed by collectors when ``/metrics`` is scraped, so they cost
nothing per request: the traffic policy (:func:`policy_families`), live and trained quality
(:func:`quality_families`), and drift PSI (:class:`gateway.drift.DriftMonitor`).

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
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from gateway.errors import GatewayError

if TYPE_CHECKING:  # only for the annotations: metrics sit below the stores they read at scrape time
    from gateway.feedback import FeedbackStore
    from gateway.policy import PolicyStore
    from gateway.serving import ServedModels

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
            "Requests mirrored to the challenger, by outcome (ok, invalid, non_finite, error, dropped)",
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
        self.non_finite = Counter(
            "modelops_gateway_non_finite_predictions",
            "Model answers with a NaN or infinite output, by call: predict (answered 502 non_finite_prediction) "
            "or shadow (the challenger's answer discarded)",
            ["model", "version", "call"],
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


def policy_families(models: ServedModels, policies: PolicyStore) -> list[GaugeMetricFamily]:
    """Canary share and shadow switch of every served model or model with a policy."""
    canary = GaugeMetricFamily(
        "modelops_gateway_canary_share", "Configured share of /predict answered by the challenger", labels=["model"]
    )
    shadow = GaugeMetricFamily(
        "modelops_gateway_shadow_enabled", "1 when requests are mirrored to the challenger", labels=["model"]
    )
    names = sorted(set(models.models()) | set(policies.all()))
    for name in names:
        policy = policies.get(name)
        canary.add_metric([name], policy.canary_share)
        shadow.add_metric([name], 1.0 if policy.shadow else 0.0)
    return [canary, shadow]


def quality_families(
    models: ServedModels, feedback: FeedbackStore | None, alert_ratio: float
) -> list[GaugeMetricFamily]:
    """Live quality from delayed outcomes, the trained quality of each served version and its alert threshold.

    Args:
        models: the served models (routing, schemas, manifests).
        feedback: the feedback store, None when feedback is switched off (no live quality then).
        alert_ratio: live quality worse than trained x this ratio should alert.
    """
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
    for name, routing in models.models().items():
        versions |= {(name, v) for v in (routing.champion, routing.challenger) if v is not None}
    if feedback is not None:
        for q in feedback.quality():
            metric = _quality_metric(models, q.model, q.version)[0]
            value = q.value(metric)
            if finite(value):
                live.add_metric([q.model, str(q.version), metric], value)
                samples.add_metric([q.model, str(q.version)], q.n)
                versions.add((q.model, q.version))
    for model, version in sorted(versions):
        metric, greater_is_better = _quality_metric(models, model, version)
        manifest = models.manifest(model, version)
        trained_value = manifest.metrics.get(metric) if manifest else None
        if trained_value is None or not finite(trained_value):
            continue
        trained.add_metric([model, str(version), metric], trained_value)
        worse = trained_value / alert_ratio if greater_is_better else trained_value * alert_ratio
        threshold.add_metric([model, str(version), metric], worse)
    return [live, samples, trained, threshold]


def _quality_metric(models: ServedModels, model: str, version: int) -> tuple[str, bool]:
    """The version's quality metric and whether greater is better; rmse (lower is better) when its schema is gone."""
    try:
        metric = models.schema(model, version).quality_metric
    except GatewayError:
        return "rmse", False
    return metric.name, metric.greater_is_better
