"""Faults with real processes: MLflow down, tritonserver killed, a sync killed mid-copy (issue 3).

Marked ``destructive``: these tests stop and restart servers of the session's shared stack, so
tests/integration/conftest.py runs them after every other test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
from mlflow import MlflowClient

from modelspec import Routing
from modelspec.repository import STAGING_DIR, is_complete, version_dir
from tests.integration.conftest import RunningStack, Trained, train_and_promote

pytestmark = [pytest.mark.integration, pytest.mark.destructive]


def predict(stack: RunningStack, timeout: float = 5.0) -> httpx.Response:
    return httpx.post(f"{stack.gateway_url}/predict", json=stack.trained.schema.example_record(), timeout=timeout)


def test_serving_survives_mlflow_down_and_sync_reports_it(running_stack: RunningStack) -> None:
    stack = running_stack.stack
    controller = stack.controller
    assert controller is not None and stack.mlflow is not None
    stack.mlflow.stop()
    try:
        for _ in range(20):
            assert predict(running_stack).status_code == 200
            time.sleep(0.05)
        outcomes = controller.run_once()
        assert outcomes[0].error and "MLflow unreachable" in outcomes[0].error
        assert controller.healthy is False
        metrics = httpx.get(f"http://127.0.0.1:{running_stack.settings.sync_metrics_port}/metrics").text
        assert "modelops_sync_up 0.0" in metrics
    finally:
        stack.supervise_once()  # restarts MLflow, as the `modelops up` supervisor does every second
        stack.mlflow.wait_healthy(120)
    controller.run_once()
    assert controller.healthy is True


def test_killed_triton_answers_503_fast_then_recovers_with_the_same_versions(running_stack: RunningStack) -> None:
    stack = running_stack.stack
    assert stack.triton is not None and stack.triton.process is not None
    routing = Routing.read(running_stack.settings.model_repository / "solar_ghi")
    assert routing is not None
    os.killpg(stack.triton.process.pid, signal.SIGKILL)
    stack.triton.process.wait(timeout=10)
    started = time.monotonic()
    resp = predict(running_stack)
    elapsed = time.monotonic() - started
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "model_not_ready" and resp.headers["retry-after"]
    assert elapsed < 2.0, f"a request to a dead Triton took {elapsed:.2f} s"
    assert httpx.get(f"{running_stack.gateway_url}/healthz/ready").status_code == 503

    stack.supervise_once()  # restart Triton and reload what was served
    from deployer.triton_control import TritonControl

    control = TritonControl(stack.triton_http)
    assert control.ready_versions("solar_ghi") == set(routing.loaded_versions())
    control.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and predict(running_stack).status_code != 200:
        time.sleep(0.2)
    resp = predict(running_stack)
    assert resp.status_code == 200 and resp.json()["model"]["version"] == routing.champion


def test_sync_killed_mid_copy_leaves_nothing_loadable_and_the_next_run_completes(
    running_stack: RunningStack,
) -> None:
    s = running_stack.settings
    rs = running_stack.stack.registry_settings()
    version = train_and_promote(rs, Trained(), epochs=2, seed=5)
    client = MlflowClient(s.tracking_uri)
    bundle_dir = s.state_dir / "bundle-for-kill-test"
    client.download_artifacts(client.get_model_version("solar_ghi", str(version)).run_id, "serving", str(bundle_dir))
    # A real process copying the version, slowed down so it can be killed in the middle.
    script = textwrap.dedent(
        f"""
        import shutil, sys, time
        from pathlib import Path
        from modelspec import repository
        real = shutil.copyfile
        def slow(src, dst, *a, **k):
            real(src, dst, *a, **k)
            print("copied", dst, flush=True)
            time.sleep(30)
        repository.shutil.copyfile = slow
        repository.materialize_version(Path({str(s.model_repository)!r}), "solar_ghi", {version},
                                       Path({str(bundle_dir / "serving")!r}))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert "copied" in proc.stdout.readline()
    proc.kill()
    proc.wait(timeout=10)
    target = version_dir(s.model_repository, "solar_ghi", version)
    assert not target.exists(), "a half-written version is visible to Triton"
    assert any((s.model_repository / STAGING_DIR).glob(f"solar_ghi.{version}.*"))

    # The next sync (a real `modelops sync` process) completes it and loads it as challenger.
    client.set_registered_model_alias("solar_ghi", "challenger", str(version))
    env = dict(
        os.environ,
        MODELOPS_STACK_MLFLOW_PORT=str(s.mlflow_port),
        MODELOPS_STACK_TRITON_HTTP_PORT=str(s.triton_http_port),
        MODELOPS_STACK_MODEL_REPOSITORY=str(s.model_repository),
    )
    done = subprocess.run(
        [sys.executable, "-m", "modelops", "sync", "solar_ghi"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert is_complete(target)
    assert not any((s.model_repository / STAGING_DIR).glob(f"solar_ghi.{version}.*"))
    routing = Routing.read(s.model_repository / "solar_ghi")
    assert routing is not None and routing.challenger == version
    client.delete_registered_model_alias("solar_ghi", "challenger")
