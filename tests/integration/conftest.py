"""Session fixtures: the real MLflow server, the real Triton and the gateway, on free ports.

The stack is the same class ``modelops up`` runs (:class:`modelops.stack.EmbeddedStack`); its
bootstrap here trains the demo model briefly and keeps the torch module, so tests can compare
what the gateway answers with what torch computes. No mocks of MLflow or Triton.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

from modelops.settings import StackSettings
from modelops.stack import EmbeddedStack
from servers.processes import free_port

log = logging.getLogger(__name__)

TEST_EPOCHS = 15


@dataclass
class Trained:
    """What the bootstrap registered, kept for comparisons."""

    module: Any = None
    frame: Any = None
    target: Any = None
    schema: Any = None
    test_index: Any = None
    versions: list[int] = field(default_factory=list)


@dataclass
class RunningStack:
    """A started embedded stack and the model it serves."""

    stack: EmbeddedStack
    settings: StackSettings
    trained: Trained

    @property
    def gateway_url(self) -> str:
        """Base URL of the gateway."""
        return self.stack.gateway_url

    @property
    def triton_metrics_url(self) -> str:
        """Triton's Prometheus endpoint."""
        return f"http://{self.settings.host}:{self.settings.triton_metrics_port}/metrics"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the tests marked ``destructive`` after every other test, in their own order.

    They stop MLflow and kill tritonserver of the one stack the session shares (``running_stack``);
    a test after them would meet servers that are restarting or gone. The order is explicit here
    instead of relying on file names sorting last. The sort is stable, so everything else keeps
    pytest's order.
    """
    items.sort(key=lambda item: item.get_closest_marker("destructive") is not None)


def stack_settings(root: Path) -> StackSettings:
    """Settings of a stack under ``root`` on free ports."""
    return StackSettings(
        state_dir=root / "state",
        model_repository=root / "model_repository",
        mlflow_port=free_port(),
        triton_http_port=free_port(),
        triton_grpc_port=free_port(),
        triton_metrics_port=free_port(),
        gateway_port=free_port(),
        sync_metrics_port=free_port(),
        demo_epochs=TEST_EPOCHS,
        start_timeout_s=180,
    )


def train_and_promote(rs: Any, trained: Trained, epochs: int = TEST_EPOCHS, seed: int = 7) -> int:
    """Train the demo model, register it and return the new version (no alias moved)."""
    from registry.demo_data import demo_schema, load_demo_dataset
    from registry.register import register_trained
    from registry.tabular import train_regressor

    data = load_demo_dataset()
    schema = demo_schema(data.frame)
    result = train_regressor(data.frame, data.target, schema, epochs=epochs, seed=seed)
    version = register_trained(
        rs, schema, data.frame, data.target, result, data_hash=data.data_hash, data_source="test"
    )
    trained.module, trained.frame, trained.target = result.module, data.frame, data.target
    trained.schema, trained.test_index = schema, result.test_index
    trained.versions.append(version.version)
    return version.version


def _sigterm_as_interrupt(_signum: int, _frame: object) -> None:
    # pytest runs fixture teardown on KeyboardInterrupt but not on SIGTERM: without this, a
    # terminated test session would leave its servers running.
    raise KeyboardInterrupt


@pytest.fixture(scope="session")
def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """The whole embedded stack, started once per test session."""
    from mlflow import MlflowClient

    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    settings = stack_settings(tmp_path_factory.mktemp("stack"))
    trained = Trained()

    def bootstrap(rs: Any) -> None:
        version = train_and_promote(rs, trained)
        MlflowClient(rs.tracking_uri).set_registered_model_alias("solar_ghi", "champion", str(version))

    stack = EmbeddedStack(settings, bootstrap=bootstrap, sync_interval_s=0.5)
    stack.start()
    try:
        yield RunningStack(stack=stack, settings=settings, trained=trained)
    finally:
        stack.stop()
