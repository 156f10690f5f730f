"""Servers a comparison starts for itself: Triton with dynamic batching off, and ``mlflow models serve``.

Neither touches the stack: the batching-off Triton gets its own temporary model repository (a
copy of the version folder and a config rendered with the served options, batching off) and its
own free ports;
``mlflow models serve`` loads the registered version from the registry, as a user would. Both
run in their own process group and are stopped with everything they started.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path
from types import TracebackType

from modelspec import ModelSchema, Routing
from modelspec.layout import CONFIG_FILE, SCHEMA_FILE
from servers.processes import Service, ServiceFailed, free_port
from tritonio.blocking import BlockingTritonClient
from tritonio.errors import Refused, TritonError

log = logging.getLogger(__name__)


class ServerFailed(RuntimeError):
    """A server the comparison needs did not start; the message names its log."""


def config_without_batching(model_repository: Path | None, model: str, schema: ModelSchema, version: int) -> str:
    """The served config of ``model`` with dynamic batching off and only ``version`` in its policy.

    Rendered by :func:`modelspec.repository.render_config` from the options the served config was
    rendered with (``routing.json``'s ``serving``), so everything else (target, device, instances,
    threads, max_batch_size) is as served and the only difference measured is the batcher. Without
    a local repository, or a routing that records no options, the renderer's defaults (embedded
    target) are used.
    """
    from modelspec.repository import ServingOptions, render_config

    serving: ServingOptions | None = None
    if model_repository is not None:
        try:
            routing = Routing.read(model_repository / model)
        except (OSError, ValueError) as exc:
            log.warning("cannot read the routing of %s (%s); rendering the default config without batching", model, exc)
            routing = None
        serving = routing.serving if routing is not None else None
    options = (serving or ServingOptions()).model_copy(update={"dynamic_batching": False})
    return render_config(model, [schema], [version], options)


def resolve_version_dir(
    model: str, version: int, model_repository: Path | None, tracking_uri: str, download_to: Path
) -> Path:
    """The served version's folder: from the local model repository (read only), else the MLflow bundle.

    Raises:
        ServerFailed: neither has the version.
    """
    if model_repository is not None:
        local = model_repository / model / str(version)
        if (local / SCHEMA_FILE).is_file():
            return local
    try:
        import mlflow
        from mlflow import MlflowClient

        run_id = MlflowClient(tracking_uri).get_model_version(model, str(version)).run_id
        mlflow.set_tracking_uri(tracking_uri)
        download_to.mkdir(parents=True, exist_ok=True)
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"runs:/{run_id}/serving", dst_path=str(download_to), tracking_uri=tracking_uri
        )
    except Exception as exc:  # MLflow raises several unrelated types; the message is what matters
        raise ServerFailed(
            f"cannot find {model} v{version}: not in the model repository ({model_repository}) and "
            f"not downloadable from {tracking_uri} ({exc})"
        ) from exc
    return Path(path)


class TemporaryTriton:
    """A Triton of the same build on free ports serving one version from a temporary repository."""

    def __init__(self, model: str, version: int, version_dir: Path, config_text: str, workdir: Path) -> None:
        """Args:
        model: model name (the folder in the repository).
        version: the version number (its folder).
        version_dir: the version's artifacts to copy (model.onnx, schema.json, ...).
        config_text: the ``config.pbtxt`` to serve it with.
        workdir: where the repository, backends and log go.
        """
        self.model = model
        self.version = version
        self.version_dir = version_dir
        self.config_text = config_text
        self.workdir = workdir
        self.service: Service | None = None
        self.http_port = 0

    @property
    def http_url(self) -> str:
        """Base URL of its HTTP endpoint."""
        return f"http://127.0.0.1:{self.http_port}"

    def __enter__(self) -> TemporaryTriton:
        """Write the repository, start Triton, load the model; stop everything on failure."""
        from servers.tritonserver import TritonPorts, prepare_backends, triton_command, triton_environment

        repo = self.workdir / "model_repository"
        if repo.exists():
            shutil.rmtree(repo)
        shutil.copytree(self.version_dir, repo / self.model / str(self.version))
        (repo / self.model / CONFIG_FILE).write_text(self.config_text)
        backends = prepare_backends(self.workdir / "triton")
        ports = TritonPorts(free_port(), free_port(), free_port())
        self.http_port = ports.http
        self.service = Service(
            name="triton (benchmark)",
            command=triton_command(repo, backends, ports),
            log_path=self.workdir / "triton.log",
            health_url=f"{self.http_url}/v2/health/live",
            env=triton_environment(),
        )
        try:
            self.service.start()
            self.service.wait_healthy(120)
            with BlockingTritonClient(f"127.0.0.1:{self.http_port}", timeout_s=180) as client:
                try:
                    client.load_model(self.model)
                except Refused as exc:
                    raise ServerFailed(
                        f"the benchmark Triton could not load {self.model}: {exc.message[:300]}"
                    ) from exc
                _wait_ready(client, self.model, self.version, 60)
        except (ServiceFailed, ServerFailed, TritonError) as exc:
            self.service.stop(grace=5)
            raise ServerFailed(f"{exc} (log: {self.workdir / 'triton.log'})") from exc
        log.info("benchmark Triton serves %s v%d at %s", self.model, self.version, self.http_url)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop Triton and its Python stubs."""
        if self.service is not None:
            self.service.stop(grace=5)


class MlflowModelServer:
    """``mlflow models serve -m models:/<model>/<version> --env-manager local`` on a free port."""

    def __init__(self, model: str, version: int, tracking_uri: str, workdir: Path, workers: int = 1) -> None:
        """Args:
        model: registered model name.
        version: registered version.
        tracking_uri: the registry to load it from.
        workdir: where its log goes.
        workers: ``--workers`` of the scoring server (MLflow's default is 1).
        """
        self.model_uri = f"models:/{model}/{version}"
        self.tracking_uri = tracking_uri
        self.workdir = workdir
        self.workers = workers
        self.port = 0
        self.service: Service | None = None

    @property
    def url(self) -> str:
        """Base URL of the scoring server."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> MlflowModelServer:
        """Start the scoring server and wait for ``/ping``."""
        self.port = free_port()
        venv_bin = str(Path(sys.executable).parent)
        env = dict(
            os.environ,
            MLFLOW_TRACKING_URI=self.tracking_uri,
            # The scoring server is started as `uvicorn ...` from PATH: the virtual environment's.
            PATH=f"{venv_bin}:{os.environ.get('PATH', '')}",
        )
        self.service = Service(
            name="mlflow models serve",
            command=[
                sys.executable,
                "-m",
                "mlflow",
                "models",
                "serve",
                "-m",
                self.model_uri,
                "--env-manager",
                "local",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
            ],
            log_path=self.workdir / "mlflow-serve.log",
            health_url=f"{self.url}/ping",
            env=env,
        )
        started = time.monotonic()
        try:
            self.service.start()
            self.service.wait_healthy(180)
        except ServiceFailed as exc:
            self.service.stop(grace=5)
            raise ServerFailed(str(exc)) from exc
        log.info("mlflow models serve %s at %s (%.0f s to start)", self.model_uri, self.url, time.monotonic() - started)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the scoring server and its workers."""
        if self.service is not None:
            self.service.stop(grace=5)


def _wait_ready(client: BlockingTritonClient, model: str, version: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.model_ready(model, version):
            return
        time.sleep(0.25)
    raise ServerFailed(f"{model} v{version} was not ready within {timeout_s:.0f} s")
