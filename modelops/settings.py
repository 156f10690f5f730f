"""Settings of the embedded stack (``modelops up``), from ``MODELOPS_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class StackSettings(BaseSettings):
    """Ports and folders of the one-machine stack. Everything it writes goes under ``state_dir``
    and ``model_repository``."""

    model_config = SettingsConfigDict(env_prefix="MODELOPS_", extra="ignore")

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

    @property
    def tracking_uri(self) -> str:
        """URI of the MLflow server."""
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def logs(self) -> Path:
        """Folder of the servers' log files."""
        return self.state_dir / "logs"
