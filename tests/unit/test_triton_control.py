"""deployer.triton_control.TritonControl over tritonio's blocking client, against the fake Triton in a thread.

The real Triton runs these calls in tests/integration/test_promotion.py; here each answer Triton
can give is checked with the error message the sync controller records.
"""

from __future__ import annotations

import json
import threading

import pytest

from deployer.triton_control import TritonControl, TritonControlError
from gateway.testing import demo_schema
from modelspec import Reference
from servers.processes import free_port
from tests.unit.fake_triton_http import FakeTritonHttp, Request, error, response
from tests.unit.fake_triton_http import serving_in_a_thread as serving

SCHEMA = demo_schema().model_copy(update={"numeric_tensor": "x", "categorical_tensor": "c"})
"""The fake model reads ``x`` and ``c`` and answers ``y = 2 * x`` and ``idx``."""


def repository(server: FakeTritonHttp):
    async def handler(request: Request) -> bytes | None:
        if request.path == "/v2/repository/index":
            index = [
                {"name": "m", "version": "1", "state": "READY"},
                {"name": "m", "version": "2", "state": "LOADING"},
                {"name": "m", "version": "3", "state": "READY"},
                {"name": "other", "version": "4", "state": "READY"},
                {"name": "m", "state": "READY"},  # an entry without a version: not counted
            ]
            return response(200, json.dumps(index).encode())
        if request.path == "/v2/repository/models/m/load":
            return response(200)
        if request.path.endswith("/load"):
            return error(400, "load failed: onnx file missing")
        return await server.answer(request)

    return handler


def reference(y: list[float], tolerance: float = 1e-6) -> Reference:
    return Reference(numeric=[[1.0, 2.0], [3.0, 4.0]], categorical=[[0], [1]], outputs={"y": y}, tolerance=tolerance)


def test_readiness_load_and_ready_versions() -> None:
    with serving() as server:
        server.handler = repository(server)
        control = TritonControl(server.url, timeout_s=5)
        assert control.server_ready()
        control.wait_server_ready(1)
        control.load("m")
        with pytest.raises(TritonControlError, match=r"failed to load broken: load failed: onnx file missing$"):
            control.load("broken")
        assert control.ready_versions("m") == {1, 3}
        control.close()
        control.close()  # twice is fine


def test_smoke_test_compares_with_the_reference() -> None:
    with serving() as server:
        control = TritonControl(server.url, timeout_s=5)
        assert control.smoke_test("m", 1, SCHEMA, reference([2.0, 4.0, 6.0, 8.0])) == 0.0
        with pytest.raises(TritonControlError, match=r"differs from its reference outputs by 0\.5"):
            control.smoke_test("m", 1, SCHEMA, reference([2.0, 4.0, 6.0, 8.5]))
        with pytest.raises(TritonControlError, match="no output 'z'"):
            control.smoke_test(
                "m", 1, SCHEMA, Reference(numeric=[[1.0, 2.0]], categorical=[[0]], outputs={"z": [1]}, tolerance=1)
            )

        async def refuse(_request: Request) -> bytes:
            return error(400, "unexpected shape for input 'x'")

        server.handler = refuse
        with pytest.raises(
            TritonControlError, match=r"smoke inference on m v1 at .* failed: HTTP 400 unexpected shape"
        ):
            control.smoke_test("m", 1, SCHEMA, reference([2.0, 4.0, 6.0, 8.0]))
        control.close()


@pytest.mark.parametrize("missing", [0, 1])
def test_a_smoke_test_that_answers_nan_fails(missing: int) -> None:
    """A NaN input row doubles to a NaN output: ``max(worst, nan)`` kept ``worst`` and the smoke test passed."""
    numeric: list[list[float | None]] = [[1.0, 2.0], [3.0, 4.0]]
    numeric[missing][1] = None  # a missing number is NaN in the tensor: the fake answers 2 * NaN
    nan_reference = Reference(
        numeric=numeric, categorical=[[0], [1]], outputs={"y": [2.0, 4.0, 6.0, 8.0]}, tolerance=1e-6
    )
    with serving() as server:
        control = TritonControl(server.url, timeout_s=5)
        with pytest.raises(
            TritonControlError,
            match=r"m v1 on .* computed a value that is not a finite number \(NaN or infinity\) for output 'y' on the "
            r"reference rows; it is not served\. Check the engine",
        ):
            control.smoke_test("m", 1, SCHEMA, nan_reference)
        control.close()


def test_each_thread_has_its_own_connection() -> None:
    with serving() as server:
        control = TritonControl(server.url, timeout_s=5)
        results: list[bool] = []
        threads = [threading.Thread(target=lambda: results.append(control.server_ready())) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert results == [True, True, True] and server.accepted == 3


def test_an_unreachable_triton() -> None:
    control = TritonControl(f"127.0.0.1:{free_port()}", timeout_s=2)
    assert control.server_ready() is False
    with pytest.raises(TritonControlError, match="not ready after 0 s"):
        control.wait_server_ready(0.3)
    with pytest.raises(TritonControlError, match="did not list its repository"):
        control.ready_versions("m")
    with pytest.raises(TritonControlError, match="failed to load m: cannot reach Triton"):
        control.load("m")
