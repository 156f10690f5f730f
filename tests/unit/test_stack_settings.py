"""The stack's settings names (``MODELOPS_STACK_*``, the old ``MODELOPS_*`` deprecated), and the
bench defaults that ``benchmarks`` reads from the same variables without importing the launcher."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.cli import StackDefaults, StackDefaultsError, main
from modelops import settings as stack_settings
from modelops.cli import _bench_defaults
from modelops.settings import StackSettings, deprecated_env_name, env_name
from modelops.stack import EmbeddedStack, StepFailed


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in [n for n in os.environ if n.startswith("MODELOPS_")]:
        monkeypatch.delenv(name)
    stack_settings._warned.clear()  # each test sees its own warnings
    yield
    stack_settings._warned.clear()


def test_every_field_has_a_stack_name_and_its_old_one() -> None:
    for field in StackSettings.model_fields:
        assert env_name(field) == f"MODELOPS_STACK_{field.upper()}"
        assert deprecated_env_name(field) == f"MODELOPS_{field.upper()}"


def test_the_new_names_are_read_and_log_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MODELOPS_STACK_GATEWAY_PORT", "9080")
    monkeypatch.setenv("MODELOPS_STACK_STATE_DIR", "/tmp/state")
    with caplog.at_level(logging.WARNING):
        s = StackSettings()
    assert s.gateway_port == 9080 and s.state_dir == Path("/tmp/state")
    assert not caplog.records


def test_the_old_names_still_work_with_a_deprecation_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MODELOPS_GATEWAY_PORT", "9081")
    monkeypatch.setenv("MODELOPS_MLFLOW_PORT", "5001")
    with caplog.at_level(logging.WARNING):
        s = StackSettings()
        StackSettings()  # once per process, not per construction
    assert s.gateway_port == 9081 and s.mlflow_port == 5001 and s.tracking_uri == "http://127.0.0.1:5001"
    messages = sorted(r.getMessage() for r in caplog.records)
    assert messages == [
        "MODELOPS_GATEWAY_PORT is deprecated; rename it MODELOPS_STACK_GATEWAY_PORT",
        "MODELOPS_MLFLOW_PORT is deprecated; rename it MODELOPS_STACK_MLFLOW_PORT",
    ]


def test_the_new_name_wins_and_the_old_one_is_said_to_be_ignored(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MODELOPS_GATEWAY_PORT", "9081")
    monkeypatch.setenv("MODELOPS_STACK_GATEWAY_PORT", "9082")
    with caplog.at_level(logging.WARNING):
        assert StackSettings().gateway_port == 9082
    assert "MODELOPS_GATEWAY_PORT is deprecated and ignored" in caplog.text


def test_values_given_in_code_win_and_warn_of_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MODELOPS_GATEWAY_PORT", "9081")
    with caplog.at_level(logging.WARNING):
        assert StackSettings(gateway_port=9083).gateway_port == 9083
    assert not caplog.records


def test_an_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELOPS_STACK_TRITON_HTTP_PORT", "70000")
    with pytest.raises(ValueError, match="MODELOPS_STACK_TRITON_HTTP_PORT"):
        StackSettings()


@pytest.mark.parametrize(
    "env",
    [
        {},
        {
            "MODELOPS_STACK_HOST": "10.0.0.2",
            "MODELOPS_STACK_GATEWAY_PORT": "9080",
            "MODELOPS_STACK_TRITON_HTTP_PORT": "9000",
            "MODELOPS_STACK_MLFLOW_PORT": "5005",
            "MODELOPS_STACK_MODEL_REPOSITORY": "/srv/repo",
            "MODELOPS_STACK_STATE_DIR": "/srv/state",
        },
        {"MODELOPS_GATEWAY_PORT": "9080", "MODELOPS_MODEL_REPOSITORY": "old-repo", "MODELOPS_STACK_HOST": "h"},
        {"MODELOPS_REGISTRY_TRACKING_URI": "http://mlflow.example:5000"},
    ],
)
def test_bench_reads_the_stack_variables_as_the_launcher_does(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert StackDefaults.from_environment() == _bench_defaults()


def test_a_bad_port_stops_a_standalone_bench_with_exit_code_2(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(StackDefaultsError, match="MODELOPS_STACK_GATEWAY_PORT='http' is not a port"):
        StackDefaults.from_environment({"MODELOPS_STACK_GATEWAY_PORT": "http"})
    monkeypatch.setenv("MODELOPS_STACK_GATEWAY_PORT", "0")
    assert main(["bench", "--no-record"]) == 2
    assert "MODELOPS_STACK_GATEWAY_PORT='0' is not a port" in caplog.text


def test_a_port_in_use_is_reported_with_the_variable_that_moves_it(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        stack = EmbeddedStack(StackSettings(state_dir=tmp_path, model_repository=tmp_path / "repo", gateway_port=port))
        with pytest.raises(StepFailed, match=rf"gateway \(MODELOPS_STACK_GATEWAY_PORT\) port {port}"):
            stack._check_ports()
