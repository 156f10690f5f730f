"""Settings of the deployer: MLflow, the model repository, Triton control and sync.

Read from ``MODELOPS_REGISTRY_*`` environment variables; every field is documented below and
validated when the settings are built, so a bad value fails at startup, not mid-sync.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from modelspec.repository import ServingOptions


class RegistrySettings(BaseSettings):
    """Where the deployer (and registration) finds MLflow and Triton, and how model repositories are written."""

    model_config = SettingsConfigDict(env_prefix="MODELOPS_REGISTRY_", extra="ignore")

    tracking_uri: str = Field("http://127.0.0.1:5000", description="MLflow tracking server URI.")
    model_repository: Path = Field(Path("model_repository"), description="Triton model repository root.")
    triton_url: str = Field("127.0.0.1:8000", description="Triton HTTP endpoint (host:port) for model control.")
    triton_urls: str = Field(
        "",
        description="Every Triton replica the sync controller must update: comma-separated host:port, each "
        "host resolved on every pass to all its addresses (a Kubernetes headless Service or a compose "
        "service scaled to N). Empty: triton_url alone.",
    )
    target: Literal["embedded", "native"] = Field(
        "embedded",
        description="embedded: the pip-installed Triton, ONNX run by onnxruntime in a Python backend; "
        "native: the NGC Triton image with its onnxruntime backend.",
    )
    gpu: Literal["auto", "yes", "no"] = Field(
        "auto", description="Serve on GPU instances (KIND_GPU): auto = when an NVIDIA GPU is visible."
    )
    tensorrt_fp16: bool = Field(
        False, description="native target on GPU: let onnxruntime use TensorRT with FP16 (engine built at load)."
    )
    max_batch_size: int = Field(256, ge=1, le=65536, description="Triton max_batch_size of every model.")
    max_queue_delay_us: int = Field(
        500, ge=0, le=1_000_000, description="Dynamic batching: longest wait to fill a batch, microseconds."
    )
    instance_count: int = Field(1, ge=1, le=64, description="Model instances per device.")
    ort_threads: int = Field(
        1,
        ge=0,
        le=256,
        description="onnxruntime intra-op threads per CPU instance (0 = onnxruntime's default, one per core). "
        "1 suits small tabular models, where Triton batches and more threads only add hand-offs; raise it for "
        "large models on CPU hosts with spare cores.",
    )
    sync_interval_s: float = Field(2.0, gt=0, le=3600, description="Seconds between reconcile passes in watch mode.")
    load_timeout_s: float = Field(120.0, gt=0, description="Longest wait for Triton to load a model.")
    quality_margin: float = Field(
        0.05,
        ge=0,
        description="Gate: a new champion whose quality metric is worse than the current one by more "
        "than this fraction is not served.",
    )
    require_load_test: bool = Field(
        False, description="Gate: a new champion needs a passing `modelops bench` recorded on its version."
    )
    failure_backoff_s: float = Field(
        30.0,
        gt=0,
        description="A version that failed its load or smoke test is retried after this many seconds, doubling "
        "with each failure up to failure_backoff_max_s; at once when its alias moves or its bundle changes.",
    )
    failure_backoff_max_s: float = Field(3600.0, gt=0, description="Longest wait before a failed version is retried.")
    experiment_prefix: str = Field("modelops/", description="Prefix of the MLflow experiment of each model.")

    def triton_endpoints(self) -> list[str]:
        """host:port of every Triton replica, DNS names resolved now (sorted, deduplicated)."""
        import socket

        if not self.triton_urls.strip():
            return [u.strip() for u in self.triton_url.split(",") if u.strip()]
        endpoints: set[str] = set()
        for entry in (e.strip() for e in self.triton_urls.split(",")):
            if not entry:
                continue
            host, _, port = entry.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"MODELOPS_REGISTRY_TRITON_URLS entry {entry!r} is not host:port")
            try:
                infos = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)
            except socket.gaierror:
                continue  # no replica behind this name right now; the next pass looks again
            endpoints |= {f"{info[4][0]}:{port}" for info in infos}
        return sorted(endpoints)

    def serving_options(self) -> ServingOptions:
        """How generated configs ask Triton to serve (target, device, batching)."""
        from modelspec.repository import ServingOptions

        return ServingOptions(
            target=self.target,
            gpu=self.uses_gpu(),
            max_batch_size=self.max_batch_size,
            max_queue_delay_us=self.max_queue_delay_us,
            instance_count=self.instance_count,
            ort_threads=self.ort_threads,
            tensorrt_fp16=self.tensorrt_fp16,
        )

    def uses_gpu(self) -> bool:
        """Whether configs should ask for KIND_GPU instances on this host."""
        if self.gpu == "yes":
            return True
        if self.gpu == "no":
            return False
        return gpu_present()


def gpu_present() -> bool:
    """True when an NVIDIA GPU device node is visible to this process."""
    return Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia/gpus").is_dir()


@lru_cache
def get_registry_settings() -> RegistrySettings:
    """The process-wide settings, built once (tests call ``cache_clear`` to override)."""
    return RegistrySettings()
