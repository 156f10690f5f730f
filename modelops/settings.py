"""Settings of the embedded stack (``modelops up``), from ``MODELOPS_STACK_*`` environment variables.

Each field ``<name>`` is read from ``MODELOPS_STACK_<NAME>`` (``MODELOPS_STACK_GATEWAY_PORT``,
``MODELOPS_STACK_MLFLOW_PORT``, ...). The stack's variables were ``MODELOPS_<NAME>`` before, which
read like the gateway's own settings (``MODELOPS_GATEWAY_*``, :class:`gateway.settings.GatewaySettings`)
and the registry's (``MODELOPS_REGISTRY_*``): those old names still work, through
:class:`pydantic.AliasChoices` after the new one, and log a deprecation warning once per process.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, AliasGenerator, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

ENV_PREFIX = "MODELOPS_STACK_"
"""Prefix of the stack's environment variables."""
DEPRECATED_ENV_PREFIX = "MODELOPS_"
"""Prefix the stack's variables had before; read after the new names, with a warning."""

_DEPRECATED_FIELDS = frozenset(
    {
        "state_dir",
        "model_repository",
        "host",
        "mlflow_port",
        "triton_http_port",
        "triton_grpc_port",
        "triton_metrics_port",
        "gateway_port",
        "gateway_workers",
        "sync_metrics_port",
        "demo_epochs",
        "start_timeout_s",
    }
)
"""The fields that had a ``MODELOPS_<NAME>`` variable (a field added later gets only the new name)."""

_warned: set[str] = set()


def env_name(field: str) -> str:
    """The environment variable of a field: ``MODELOPS_STACK_<FIELD>``."""
    return f"{ENV_PREFIX}{field.upper()}"


def deprecated_env_name(field: str) -> str | None:
    """The field's old variable, ``MODELOPS_<FIELD>``, when it had one."""
    return f"{DEPRECATED_ENV_PREFIX}{field.upper()}" if field in _DEPRECATED_FIELDS else None


def _env_names(field: str) -> AliasChoices:
    # The first choice that is set wins, so the new name overrides the old one.
    old = deprecated_env_name(field)
    return AliasChoices(env_name(field), old) if old else AliasChoices(env_name(field))


class StackSettings(BaseSettings):
    """Ports and folders of the one-machine stack. Everything it writes goes under ``state_dir``
    and ``model_repository``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        alias_generator=AliasGenerator(validation_alias=_env_names),
        validate_by_name=True,  # StackSettings(gateway_port=...) in code and tests
    )

    state_dir: Path = Field(Path(".modelops"), description="MLflow database and artifacts, logs, Triton backends.")
    model_repository: Path = Field(Path("model_repository"), description="The Triton model repository.")
    host: str = Field("127.0.0.1", description="Address every server binds to (loopback by default).")
    mlflow_port: int = Field(5000, ge=1, le=65535, description="MLflow tracking server and UI.")
    triton_http_port: int = Field(8000, ge=1, le=65535, description="Triton HTTP/REST.")
    triton_grpc_port: int = Field(8001, ge=1, le=65535, description="Triton gRPC.")
    triton_metrics_port: int = Field(8002, ge=1, le=65535, description="Triton Prometheus metrics.")
    gateway_port: int = Field(8080, ge=1, le=65535, description="The FastAPI gateway.")
    gateway_workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes of the gateway.")
    sync_metrics_port: int = Field(9102, ge=0, le=65535, description="Sync controller /metrics (0 = off).")
    demo_epochs: int = Field(60, ge=1, le=10_000, description="Training epochs of the demo model.")
    start_timeout_s: float = Field(120.0, gt=0, description="Longest wait for a server to become healthy.")

    @model_validator(mode="before")
    @classmethod
    def _warn_deprecated_names(cls, data: Any) -> Any:
        """Log once per variable when a value comes from an old ``MODELOPS_<NAME>`` variable."""
        if not isinstance(data, dict):
            return data
        # Names are matched case-insensitively, as pydantic-settings reads them.
        environ = {k.upper() for k in os.environ}
        for field in cls.model_fields:
            old = deprecated_env_name(field)
            # A value under the field's own name came from the code, not from the environment.
            if old is None or old not in environ or field in data or old in _warned:
                continue
            _warned.add(old)
            new = env_name(field)
            if new in environ:
                log.warning("%s is deprecated and ignored: %s is set; unset %s", old, new, old)
            else:
                log.warning("%s is deprecated; rename it %s", old, new)
        return data

    @property
    def tracking_uri(self) -> str:
        """URI of the MLflow server."""
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def logs(self) -> Path:
        """Folder of the servers' log files."""
        return self.state_dir / "logs"
