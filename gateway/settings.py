"""Gateway settings, from ``MODELOPS_GATEWAY_*`` environment variables, validated at startup.

Lists and maps are JSON (``MODELOPS_GATEWAY_API_KEYS='["k1","k2"]'``). Keys are
:class:`~pydantic.SecretStr`, so printing or logging the settings never shows them.

What is per worker process when uvicorn runs several: the in-flight limit, the drift
windows and the shadow queue. What is shared through files: routing (``routing.json``), the
traffic policy (``traffic_policy_path``), the feedback store (``feedback_db_path``) and, with
``PROMETHEUS_MULTIPROC_DIR`` set, the counters and histograms of ``/metrics``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelspec.schema import NAME_PATTERN


class GatewaySettings(BaseSettings):
    """Everything the gateway process can be configured with."""

    model_config = SettingsConfigDict(env_prefix="MODELOPS_GATEWAY_", extra="ignore")

    # --- upstream and routing -------------------------------------------------------------------
    triton_http_url: str = Field(
        "127.0.0.1:8000", description="Triton HTTP endpoint, host:port (binary tensors over keep-alive HTTP/1.1)."
    )
    triton_grpc_url: str = Field("127.0.0.1:8001", description="Triton gRPC endpoint, host:port.")
    triton_protocol: Literal["http", "grpc"] = Field(
        "http", description="How the gateway calls Triton: http (cheapest per call) or grpc."
    )
    triton_max_connections: int = Field(
        64, ge=1, le=4096, description="HTTP connections to Triton per worker (= Triton calls in flight; more wait)."
    )
    model_repository: Path = Field(Path("model_repository"), description="Triton model repository root (read only).")
    default_model: str = Field("solar_ghi", pattern=NAME_PATTERN, description="Model that answers POST /predict.")
    triton_timeout_s: float = Field(10.0, gt=0, le=600, description="Per-request Triton deadline (504 beyond).")
    routing_poll_s: float = Field(0.5, gt=0, le=60, description="How often routing.json and the policy are re-read.")
    readiness_cache_s: float = Field(1.0, ge=0, le=60, description="How long a readiness answer is reused.")

    # --- request limits -------------------------------------------------------------------------
    max_records: int = Field(1024, ge=1, le=100_000, description="Most records in one request (413 beyond).")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body, bytes (413 beyond).")
    max_in_flight: int = Field(
        512, ge=1, description="Concurrent predict requests per worker before shedding load (503 + Retry-After)."
    )
    body_read_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Most seconds a request body may take to arrive (408 request_timeout beyond, and the "
        "connection is closed): a client trickling its body is cut instead of holding its connection.",
    )
    feedback_max_in_flight: int = Field(
        64, ge=1, description="Concurrent POST /feedback requests per worker before shedding load (503 + Retry-After)."
    )
    range_policy_overrides: dict[str, Literal["reject", "flag"]] = Field(
        default_factory=dict,
        description='Override the schema\'s out-of-range policy: {"<model>.<feature>": "reject"|"flag"}; '
        '"<model>.*" applies to every numeric feature of the model.',
    )

    # --- security -------------------------------------------------------------------------------
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description='Accepted bearer keys for predict, feedback and /models (JSON list, e.g. ["k1"]); '
        "empty = no authentication.",
    )
    admin_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Bearer keys for /admin (traffic policy); empty = the admin API answers 403.",
    )
    public_health: bool = Field(True, description="/healthz/* answer without an API key (probes).")
    public_metrics: bool = Field(True, description="/metrics answers without an API key (scrapers).")

    # --- traffic policy (canary, shadow) --------------------------------------------------------
    traffic_policy_path: Path | None = Field(
        None,
        description="JSON file holding canary share and shadow switch per model, re-read when it changes and "
        "written by PUT /admin/models/{name}/traffic; shared by every worker. None = kept in memory per process.",
    )
    shadow_max_in_flight: int = Field(
        64, ge=1, description="Shadow calls running at once per worker; beyond it mirrors are dropped (counted)."
    )
    shadow_max_connections: int = Field(
        4,
        ge=1,
        description="Triton calls of the shadow path at once per worker (the others wait), at most half of "
        "triton_max_connections: a slow challenger never holds the connections the champion answers with.",
    )

    # --- monitoring -----------------------------------------------------------------------------
    drift_window: int = Field(1000, ge=10, le=1_000_000, description="Records per version in the drift window.")
    drift_min_records: int = Field(
        200, ge=1, description="Records a window needs before its PSI is exported (small samples inflate PSI)."
    )

    # --- feedback and live quality --------------------------------------------------------------
    feedback_enabled: bool = Field(True, description="Keep predictions so POST /feedback can join outcomes.")
    feedback_db_path: Path | None = Field(
        None,
        description="SQLite file joining feedback to predictions, shared by every worker. "
        "None = a temporary database per process (one worker only).",
    )
    feedback_retention_s: float = Field(
        7 * 86400.0, gt=0, description="How long a prediction waits for its outcome before it is forgotten."
    )
    quality_window_s: float = Field(
        86400.0, gt=0, description="Outcomes received within this many seconds make the live quality metric."
    )
    quality_alert_ratio: float = Field(
        1.5, gt=1, description="Alert when live quality is this many times worse than the version's trained metric."
    )

    # --- audit log ------------------------------------------------------------------------------
    audit_log_path: Path | None = Field(
        None,
        description="Rotating JSONL audit log, one line per request; '{pid}' in the name gives each worker its "
        "own file. None = no audit log.",
    )
    audit_log_payloads: bool = Field(False, description="Also write request bodies into the audit log.")
    audit_log_max_bytes: int = Field(50 * 1024 * 1024, ge=4096, description="Size at which the audit log rotates.")
    audit_queue_max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Most bytes of request bodies waiting for the audit writer; beyond it lines are dropped "
        "(counted in modelops_gateway_dropped_total).",
    )
    audit_log_backups: int = Field(5, ge=1, le=1000, description="Rotated audit files kept.")

    # --- shutdown -------------------------------------------------------------------------------
    shutdown_drain_s: float = Field(
        1.0,
        ge=0,
        le=120,
        description="On SIGTERM readiness turns false this long before the server stops accepting requests.",
    )

    @field_validator("api_keys", "admin_keys")
    @classmethod
    def _no_blank_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        if any(len(k.get_secret_value()) < 8 for k in keys):
            raise ValueError("API keys must be at least 8 characters")
        return keys

    @field_validator("range_policy_overrides")
    @classmethod
    def _override_keys(cls, overrides: dict[str, str]) -> dict[str, str]:
        for key in overrides:
            model, _, feature = key.partition(".")
            if not model or not feature:
                raise ValueError(f"range policy override {key!r}: use '<model>.<feature>' or '<model>.*'")
        return overrides


@lru_cache
def get_gateway_settings() -> GatewaySettings:
    """Process-wide settings (tests build their own and pass them to ``create_app``)."""
    return GatewaySettings()
