"""Gateway settings, from ``MODELOPS_GATEWAY_*`` environment variables, validated at startup."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    """Everything the gateway process can be configured with."""

    model_config = SettingsConfigDict(env_prefix="MODELOPS_GATEWAY_", extra="ignore")

    triton_grpc_url: str = Field("127.0.0.1:8001", description="Triton gRPC endpoint, host:port.")
    model_repository: Path = Field(Path("model_repository"), description="Triton model repository root (read only).")
    default_model: str = Field("solar_ghi", description="Model that answers POST /predict.")
    max_records: int = Field(1024, ge=1, le=100_000, description="Most records in one request (413 beyond).")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body, bytes (413 beyond).")
    max_in_flight: int = Field(512, ge=1, description="Concurrent /predict requests before shedding load (503).")
    triton_timeout_s: float = Field(10.0, gt=0, le=600, description="Per-request Triton deadline (504 beyond).")
    routing_poll_s: float = Field(0.5, gt=0, le=60, description="How often routing.json is re-read, seconds.")
    api_keys: list[str] = Field(
        default_factory=list,
        description='Accepted bearer keys for the predict routes (JSON list, e.g. ["k1"]); empty = no auth.',
    )
    readiness_cache_s: float = Field(1.0, ge=0, le=60, description="How long a readiness answer is reused.")


@lru_cache
def get_gateway_settings() -> GatewaySettings:
    """Process-wide settings (tests build their own and pass them to ``create_app``)."""
    return GatewaySettings()
