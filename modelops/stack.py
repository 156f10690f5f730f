"""The embedded stack on one machine: MLflow, Triton, the sync controller and the gateway.

``EmbeddedStack.start()`` brings everything up in order (each step logged, each failure naming
the step and its log file), bootstraps the demo model when nothing is served yet, and
``run_forever()`` supervises: a Triton that dies is restarted and gets exactly the versions it
served reloaded by the sync controller. ``stop()`` stops every process it started, Triton's
Python stubs included. The integration tests run the same class on free ports.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from modelops.settings import StackSettings, env_name
from modelspec import Routing
from servers.processes import Service, ServiceFailed, port_in_use
from servers.tritonserver import TritonPorts, prepare_backends, triton_command, triton_environment

if TYPE_CHECKING:
    from deployer.settings import RegistrySettings
    from deployer.sync import SyncController

log = logging.getLogger(__name__)

DEMO_MODEL = "solar_ghi"


class StepFailed(RuntimeError):
    """A start-up step failed; the message names the step and where to look."""


class EmbeddedStack:
    """Starts, supervises and stops the servers of the one-machine stack."""

    def __init__(
        self,
        settings: StackSettings,
        *,
        bootstrap: Callable[[RegistrySettings], None] | None = None,
        sync_interval_s: float = 1.0,
    ) -> None:
        """Args:
        settings: ports and folders.
        bootstrap: registers and promotes a first model when the registry serves none; the
            default trains the demo model. Tests pass their own to keep the torch module.
        sync_interval_s: seconds between reconcile passes of the sync controller.
        """
        self.settings = settings
        self.bootstrap = bootstrap
        self.default_model = os.environ.get("MODELOPS_GATEWAY_DEFAULT_MODEL", DEMO_MODEL)
        self.sync_interval_s = sync_interval_s
        self.mlflow: Service | None = None
        self.triton: Service | None = None
        self.gateway: Service | None = None
        self.controller: SyncController | None = None
        self._stop = threading.Event()
        self._sync_thread: threading.Thread | None = None
        self._metrics_server: object | None = None

    # -- urls ----------------------------------------------------------------------------------
    @property
    def gateway_url(self) -> str:
        """Base URL of the gateway."""
        return f"http://{self.settings.host}:{self.settings.gateway_port}"

    @property
    def triton_http(self) -> str:
        """Triton HTTP host:port."""
        return f"{self.settings.host}:{self.settings.triton_http_port}"

    @property
    def triton_grpc(self) -> str:
        """Triton gRPC host:port."""
        return f"{self.settings.host}:{self.settings.triton_grpc_port}"

    def registry_settings(self) -> RegistrySettings:
        """RegistrySettings pointing at this stack's MLflow, Triton and repository."""
        from deployer.settings import RegistrySettings

        return RegistrySettings(
            tracking_uri=self.settings.tracking_uri,
            model_repository=self.settings.model_repository,
            triton_url=self.triton_http,
            sync_interval_s=self.sync_interval_s,
        )

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start everything in order; on failure stop what was started and raise StepFailed."""
        s = self.settings
        s.state_dir.mkdir(parents=True, exist_ok=True)
        s.model_repository.mkdir(parents=True, exist_ok=True)
        self._check_ports()
        try:
            self._step("start MLflow", self._start_mlflow)
            self._step("start Triton", self._start_triton)
            self._step("bootstrap the demo model if nothing is served", self._bootstrap)
            self._step("sync served versions into Triton", self._first_sync)
            self._step("start the gateway", self._start_gateway)
        except BaseException:
            self.stop()
            raise
        self._sync_thread = threading.Thread(target=self._sync_loop, name="sync", daemon=True)
        self._sync_thread.start()

    def _step(self, name: str, fn: Callable[[], None]) -> None:
        log.info("step: %s", name)
        started = time.monotonic()
        try:
            fn()
        except (ServiceFailed, StepFailed) as exc:
            raise StepFailed(f"step '{name}' failed: {exc}") from exc
        except Exception as exc:
            raise StepFailed(f"step '{name}' failed: {exc} (logs in {self.settings.logs})") from exc
        log.info("step: %s done in %.1f s", name, time.monotonic() - started)

    def _check_ports(self) -> None:
        s = self.settings
        ports = {
            "MLflow": "mlflow_port",
            "Triton HTTP": "triton_http_port",
            "Triton gRPC": "triton_grpc_port",
            "Triton metrics": "triton_metrics_port",
            "gateway": "gateway_port",
        }
        busy = [
            f"{server} ({env_name(field)}) port {getattr(s, field)}"
            for server, field in ports.items()
            if port_in_use(getattr(s, field), s.host)
        ]
        if busy:
            raise StepFailed(
                "ports already in use: " + ", ".join(busy) + ". Is another `make up` running? "
                "Stop it, or choose other ports with the environment variables named."
            )

    def _start_mlflow(self) -> None:
        s = self.settings
        store = (s.state_dir / "mlflow").resolve()
        (store / "artifacts").mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        self.mlflow = Service(
            name="mlflow",
            command=[
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{store / 'mlflow.db'}",
                "--artifacts-destination",
                str(store / "artifacts"),
                "--host",
                s.host,
                "--port",
                str(s.mlflow_port),
                "--workers",
                "1",
            ],
            log_path=s.logs / "mlflow.log",
            health_url=f"{s.tracking_uri}/health",
            env=env,
        )
        self.mlflow.start()
        self.mlflow.wait_healthy(s.start_timeout_s, tick=_ticker("MLflow"))

    def _start_triton(self) -> None:
        s = self.settings
        backends = prepare_backends(s.state_dir / "triton")
        ports = TritonPorts(s.triton_http_port, s.triton_grpc_port, s.triton_metrics_port)
        self.triton = Service(
            name="triton",
            command=triton_command(s.model_repository, backends, ports, host=s.host),
            log_path=s.logs / "triton.log",
            health_url=f"http://{self.triton_http}/v2/health/ready",
            env=triton_environment(),
        )
        self.triton.start()
        self.triton.wait_healthy(s.start_timeout_s, tick=_ticker("Triton"))

    def _bootstrap(self) -> None:
        from mlflow import MlflowClient

        from deployer.sync import managed_models

        rs = self.registry_settings()
        client = MlflowClient(rs.tracking_uri)
        for name in managed_models(client):
            if "champion" in (client.get_registered_model(name).aliases or {}):
                log.info("the registry already serves %s@champion: not retraining", name)
                return
        if self.bootstrap is not None:
            self.bootstrap(rs)
            return
        from modelops.demo import train_and_register_demo

        version = train_and_register_demo(rs, epochs=self.settings.demo_epochs)
        client.set_registered_model_alias(DEMO_MODEL, "champion", str(version.version))
        log.info("set %s@champion -> version %d", DEMO_MODEL, version.version)

    def _first_sync(self) -> None:
        from deployer.sync import SyncController

        controller = SyncController(self.registry_settings())
        self.controller = controller
        failures = []
        for outcome in controller.run_once():
            if outcome.error:
                log.error("sync of %s: %s", outcome.model, outcome.error)
                failures.append(f"{outcome.model}: {outcome.error}")
            elif outcome.routing and outcome.routing.champion:
                log.info("serving %s v%d as champion", outcome.model, outcome.routing.champion)
        served = Routing.read(self.settings.model_repository / self.default_model)
        if failures and (served is None or served.champion is None):
            raise StepFailed("nothing is served: " + "; ".join(failures))
        if self.settings.sync_metrics_port:
            from prometheus_client import start_http_server

            self._metrics_server = start_http_server(
                self.settings.sync_metrics_port, addr=self.settings.host, registry=controller.metrics.registry
            )

    def _start_gateway(self) -> None:
        s = self.settings
        state = (s.state_dir / "gateway").resolve()
        state.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            MODELOPS_GATEWAY_TRITON_GRPC_URL=self.triton_grpc,
            MODELOPS_GATEWAY_TRITON_HTTP_URL=self.triton_http,
            MODELOPS_GATEWAY_MODEL_REPOSITORY=str(s.model_repository.resolve()),
        )
        # Defaults the operator can override: audit log, feedback join store and traffic policy
        # live under the state folder, shared by every worker.
        audit = "gateway-audit-{pid}.jsonl" if s.gateway_workers > 1 else "gateway-audit.jsonl"
        env.setdefault("MODELOPS_GATEWAY_AUDIT_LOG_PATH", str(s.logs.resolve() / audit))
        env.setdefault("MODELOPS_GATEWAY_FEEDBACK_DB_PATH", str(state / "feedback.db"))
        env.setdefault("MODELOPS_GATEWAY_TRAFFIC_POLICY_PATH", str(state / "traffic.json"))
        if s.gateway_workers > 1:
            metrics_dir = state / "prometheus-multiproc"
            shutil.rmtree(metrics_dir, ignore_errors=True)  # stale files would add old counts
            metrics_dir.mkdir()
            env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        self.gateway = Service(
            name="gateway",
            command=[
                sys.executable,
                "-m",
                "modelops",
                "gateway",
                "--host",
                s.host,
                "--port",
                str(s.gateway_port),
                "--workers",
                str(s.gateway_workers),
            ],
            log_path=s.logs / "gateway.log",
            health_url=f"{self.gateway_url}/healthz/ready",
            env=env,
        )
        self.gateway.start()
        self.gateway.wait_healthy(s.start_timeout_s, tick=_ticker("gateway"))

    def _sync_loop(self) -> None:
        if self.controller is not None:
            self.controller.watch(self._stop, self.sync_interval_s)

    def supervise_once(self) -> None:
        """Restart Triton if it died; the sync controller then reloads the served versions."""
        if self.triton is not None and not self.triton.alive() and not self._stop.is_set():
            log.error(
                "Triton exited (code %s); restarting it, see %s",
                self.triton.process and self.triton.process.returncode,
                self.triton.log_path,
            )
            self.triton.stop(grace=1)
            self.triton.start()
            try:
                self.triton.wait_healthy(self.settings.start_timeout_s)
            except ServiceFailed as exc:
                log.error("Triton did not come back: %s", exc)
                return
            if self.controller is not None:
                self.controller.run_once()
        for svc in (self.mlflow, self.gateway):
            if svc is not None and not svc.alive() and not self._stop.is_set():
                log.error("%s exited; restarting it, see %s", svc.name, svc.log_path)
                svc.start()

    def run_forever(self) -> None:
        """Supervise until SIGINT or SIGTERM, then stop everything."""

        def _signal(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s: stopping", signal.Signals(signum).name)
            self._stop.set()

        signal.signal(signal.SIGINT, _signal)
        signal.signal(signal.SIGTERM, _signal)
        try:
            while not self._stop.wait(1.0):
                self.supervise_once()
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop the gateway first (no new requests), then sync, Triton and MLflow."""
        self._stop.set()
        if self.gateway:
            self.gateway.stop()
        if self._sync_thread:
            self._sync_thread.join(timeout=10)
        server = self._metrics_server
        if server is not None:
            shutdown = getattr(server[0] if isinstance(server, tuple) else server, "shutdown", None)
            if shutdown:
                shutdown()
        if self.triton:
            self.triton.stop()
        if self.mlflow:
            self.mlflow.stop()

    def banner(self) -> str:
        """What to open and try, printed once everything is up."""
        example = _example_record(self.settings.model_repository)
        return "\n".join(
            [
                "",
                "modelops is serving:",
                f"  MLflow UI        http://{self.settings.host}:{self.settings.mlflow_port}",
                f"  gateway docs     {self.gateway_url}/docs",
                f"  gateway metrics  {self.gateway_url}/metrics",
                f"  Triton metrics   http://{self.settings.host}:{self.settings.triton_metrics_port}/metrics",
                f"  logs             {self.settings.logs}",
                "Try:",
                f"  curl -s {self.gateway_url}/predict -H 'Content-Type: application/json' -d '{example}'",
                "Ctrl-C stops everything.",
            ]
        )


def _example_record(repo: Path) -> str:
    import json

    from modelspec import Routing
    from modelspec.schema import ModelSchema

    routing = Routing.read(repo / DEMO_MODEL)
    if routing is None or routing.champion is None:
        return "{}"
    schema = ModelSchema.model_validate_json((repo / DEMO_MODEL / str(routing.champion) / "schema.json").read_bytes())
    return json.dumps(schema.example_record())


def _ticker(name: str) -> Callable[[float], None]:
    last = [0.0]

    def tick(elapsed: float) -> None:
        if elapsed - last[0] >= 5:
            last[0] = elapsed
            log.info("  waiting for %s ... %.0f s", name, elapsed)

    return tick


def reset_state(settings: StackSettings) -> None:
    """Delete the stack's state and model repository (``modelops reset``)."""
    for path in (settings.state_dir, settings.model_repository):
        if path.exists():
            shutil.rmtree(path)
            log.info("removed %s", path)
