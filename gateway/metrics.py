"""Prometheus metrics of the gateway (names are part of the SRE contract: deploy/metrics_catalog.yaml)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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


class GatewayMetrics:
    """All gateway metrics, on one registry (a fresh one per app, so tests do not collide)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "modelops_gateway_requests",
            "Requests by outcome",
            ["model", "version", "route", "status", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "modelops_gateway_request_duration_seconds",
            "Gateway latency, request in to response out",
            ["model", "route"],
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
        self.in_flight = Gauge("modelops_gateway_in_flight_requests", "Requests being served", ["route"], registry=r)
        self.records = Histogram(
            "modelops_gateway_records_per_request",
            "Records per /predict request",
            ["model"],
            buckets=RECORD_BUCKETS,
            registry=r,
        )
        self.served_version = Gauge(
            "modelops_gateway_served_version", "Version behind each alias", ["model", "alias"], registry=r
        )
        self.flags = Counter(
            "modelops_gateway_feature_flags",
            "Accepted values flagged by validation",
            ["model", "version", "feature", "reason"],
            registry=r,
        )
