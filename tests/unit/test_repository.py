"""Model repository writer: configs validated offline, versions atomic and never overwritten."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from modelspec import (
    BUNDLE_FILES,
    MODEL_FILE,
    REFERENCE_FILE,
    Manifest,
    ModelSchema,
    NumericFeature,
    OutputSpec,
    Reference,
)
from modelspec.layout import BACKEND_FILE_PARAMETERS
from modelspec.repository import (
    ConfigError,
    RepositoryError,
    ServingOptions,
    check_model_name,
    materialize_version,
    render_config,
    validate_config,
    version_dir,
    write_config,
)

SCHEMA = ModelSchema(
    model_name="m",
    features=[NumericFeature(name="x", minimum=0, maximum=1, example=0.5)],
    outputs=[OutputSpec(name="y")],
)


def bundle(tmp_path: Path, run_id: str = "run1") -> Path:
    b = tmp_path / f"bundle-{run_id}"
    b.mkdir()
    for name in BUNDLE_FILES:
        (b / name).write_text("{}")
    (b / "schema.json").write_text(SCHEMA.model_dump_json())
    manifest = Manifest(model_name="m", run_id=run_id, data_hash="sha256:x", git_commit="c", parity_max_abs_error=0)
    (b / "manifest.json").write_text(manifest.model_dump_json())
    return b


def test_embedded_config_parses_and_has_the_serving_settings() -> None:
    text = render_config("m", [SCHEMA], [3, 1], ServingOptions(max_batch_size=64, max_queue_delay_us=250))
    validate_config(text, expected_name="m")
    assert 'backend: "onnxruntime_py"' in text
    assert "versions: [ 1, 3 ]" in text
    assert "max_queue_delay_microseconds: 250" in text
    assert "KIND_CPU" in text and "max_batch_size: 64" in text


def test_native_gpu_config_uses_the_onnxruntime_platform_and_tensorrt() -> None:
    text = render_config("m", [SCHEMA], [1], ServingOptions(target="native", gpu=True, tensorrt_fp16=True))
    validate_config(text, expected_name="m")
    assert 'platform: "onnxruntime_onnx"' in text and "KIND_GPU" in text and '"FP16"' in text


def test_batching_off_has_no_dynamic_batching() -> None:
    text = render_config("m", [SCHEMA], [1], ServingOptions(dynamic_batching=False))
    assert "dynamic_batching" not in text


def test_differing_schemas_get_a_variable_feature_axis() -> None:
    wider = SCHEMA.model_copy(
        update={"features": [*SCHEMA.features, NumericFeature(name="z", minimum=0, maximum=1, example=0)]}
    )
    text = render_config("m", [SCHEMA, wider], [1, 2], ServingOptions())
    assert 'name: "numeric" data_type: TYPE_FP32 dims: [ -1 ]' in text


def test_the_config_declares_the_outputs_of_every_served_version() -> None:
    # issue 14 item 6: a champion that adds an output beside an older version still loaded.
    more = SCHEMA.model_copy(update={"outputs": [*SCHEMA.outputs, OutputSpec(name="y_p90")]})
    for schemas in ([SCHEMA, more], [more, SCHEMA]):
        text = render_config("m", schemas, [1, 2], ServingOptions())
        assert text.count('name: "y" data_type') == 1
        assert 'name: "y_p90" data_type: TYPE_FP32 dims: [ 1 ]' in text


def test_invalid_configs_are_refused_with_position() -> None:
    with pytest.raises(ConfigError, match=r"3:1 .*bogus_field"):
        validate_config("name: 'm'\nmax_batch_size: 4\nbogus_field: 1\n")
    with pytest.raises(ConfigError, match="names 'm'"):
        validate_config('name: "m"\nmax_batch_size: 4\n', expected_name="other")
    with pytest.raises(ConfigError, match="max_batch_size"):
        validate_config('name: "m"\n', expected_name="m")


@pytest.mark.parametrize("name", ["../evil", "a/b", "", "UPPER", "x" * 80, ".staging"])
def test_unsafe_model_names_are_refused(name: str) -> None:
    with pytest.raises(RepositoryError):
        check_model_name(name)


def test_version_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError):
        version_dir(tmp_path, "m", 0)


def test_materialize_is_atomic_idempotent_and_never_overwrites(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    target = materialize_version(root, "m", 1, bundle(tmp_path))
    assert sorted(p.name for p in target.iterdir()) == sorted(BUNDLE_FILES)
    assert Manifest.model_validate_json((target / "manifest.json").read_text()).version == 1
    assert not any((root / ".staging").iterdir())
    # Same run again: kept as it is.
    assert materialize_version(root, "m", 1, tmp_path / "bundle-run1") == target
    # Another run under the same version number: refused.
    with pytest.raises(RepositoryError, match="never overwritten"):
        materialize_version(root, "m", 1, bundle(tmp_path, "run2"))


def test_interrupted_copy_is_cleaned_and_completed(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    half = root / ".staging" / "m.2.deadbeef"
    half.mkdir(parents=True)
    (half / "model.onnx").write_text("partial")
    assert not (root / "m" / "2").exists()  # Triton never sees the half copy
    materialize_version(root, "m", 2, bundle(tmp_path))
    assert not half.exists()
    assert (root / "m" / "2" / "manifest.json").exists()


def test_incomplete_bundle_is_refused(tmp_path: Path) -> None:
    b = bundle(tmp_path)
    (b / "profile.json").unlink()
    with pytest.raises(RepositoryError, match="lacks"):
        materialize_version(tmp_path / "repo", "m", 1, b)


def test_write_config_reports_changes(tmp_path: Path) -> None:
    text = render_config("m", [SCHEMA], [1], ServingOptions())
    assert write_config(tmp_path, "m", text) is True
    assert write_config(tmp_path, "m", text) is False
    shutil.rmtree(tmp_path / "m")


# ---- the embedded backend reads the bundle's file names from the rendered config -----------------

BACKEND_SOURCE = Path(__file__).resolve().parents[2] / "triton_backend" / "onnxruntime_py" / "model.py"


class _FakeBackendUtils(types.ModuleType):
    """The few names of Triton's ``triton_python_backend_utils`` that ``initialize`` uses."""

    class TritonModelException(Exception):
        pass

    class Logger:
        @staticmethod
        def log_info(_msg: str) -> None: ...

        @staticmethod
        def log_warn(_msg: str) -> None: ...

    @staticmethod
    def triton_string_to_numpy(name: str) -> type:
        return {"TYPE_FP32": np.float32, "TYPE_INT64": np.int64}[name]


def _backend(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _FakeBackendUtils("triton_python_backend_utils"))
    spec = importlib.util.spec_from_file_location("embedded_backend_under_test", BACKEND_SOURCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _triton_args(tmp_path: Path, config_text: str) -> dict[str, str]:
    """What Triton hands ``initialize``: the config as JSON with proto field names."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(config_text, model_config_pb2.ModelConfig())
    return {
        "model_config": json_format.MessageToJson(config, preserving_proto_field_name=True),
        "model_name": "m",
        "model_version": "1",
        "model_repository": str(tmp_path / "m"),
        "model_instance_kind": "CPU",
        "model_instance_device_id": "0",
    }


def test_the_backend_opens_the_files_the_config_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = render_config("m", [SCHEMA], [1], ServingOptions())
    for key, filename in BACKEND_FILE_PARAMETERS.items():
        assert f'key: "{key}" value: {{ string_value: "{filename}" }}' in text
    backend = _backend(monkeypatch)
    opened: list[str] = []

    class FakeEngine:
        input_names = [SCHEMA.numeric_tensor, SCHEMA.categorical_tensor]
        output_names = ["y"]
        description = "fake"

        def __init__(self, model_path: str, gpu_id: int | None, threads: int) -> None:
            opened.append(model_path)

        @staticmethod
        def concat(parts: list[np.ndarray]) -> np.ndarray:
            return parts[0]

        @staticmethod
        def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            return [feed[SCHEMA.numeric_tensor][:, :1] * 2]

    monkeypatch.setattr(backend, "OnnxRuntimeEngine", FakeEngine)
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    reference = Reference(numeric=[[0.5], [2.0]], categorical=[[0], [0]], outputs={"y": [1.0, 5.0]}, tolerance=0.1)
    (version / REFERENCE_FILE).write_text(reference.model_dump_json())
    model = backend.TritonPythonModel()
    with pytest.raises(_FakeBackendUtils.TritonModelException, match="differs from the reference"):
        model.initialize(_triton_args(tmp_path, text))  # the reference file named by the config was read
    assert opened == [str(version / MODEL_FILE)]
    (version / REFERENCE_FILE).write_text(reference.model_copy(update={"outputs": {"y": [1.0, 4.0]}}).model_dump_json())
    model.initialize(_triton_args(tmp_path, text))  # reproduced: it serves
    text = text.replace(f'string_value: "{REFERENCE_FILE}"', 'string_value: "other.json"')
    model.initialize(_triton_args(tmp_path, text))  # other.json does not exist: no reference check
    assert model.inputs == [(SCHEMA.numeric_tensor, "float32"), (SCHEMA.categorical_tensor, "int64")]


def test_the_backend_refuses_an_engine_that_answers_nan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``max(worst, nan)`` kept ``worst``: an engine answering NaN on a reference row loaded and served."""
    text = render_config("m", [SCHEMA], [1], ServingOptions())
    backend = _backend(monkeypatch)

    class DoublingEngine:
        input_names = [SCHEMA.numeric_tensor, SCHEMA.categorical_tensor]
        output_names = ["y"]
        description = "fake"

        def __init__(self, model_path: str, gpu_id: int | None, threads: int) -> None: ...

        @staticmethod
        def concat(parts: list[np.ndarray]) -> np.ndarray:
            return parts[0]

        @staticmethod
        def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            return [feed[SCHEMA.numeric_tensor][:, :1] * 2]  # a missing input (NaN) answers NaN

    monkeypatch.setattr(backend, "OnnxRuntimeEngine", DoublingEngine)
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    for numeric in ([[None], [2.0]], [[0.5], [None]]):
        reference = Reference(numeric=numeric, categorical=[[0], [0]], outputs={"y": [1.0, 4.0]}, tolerance=0.1)
        (version / REFERENCE_FILE).write_text(reference.model_dump_json())
        with pytest.raises(
            _FakeBackendUtils.TritonModelException,
            match=r"m v1: fake computed a value that is not a finite number \(NaN or infinity\) for output 'y' on "
            r"the reference rows; not serving it",
        ):
            backend.TritonPythonModel().initialize(_triton_args(tmp_path, text))


def test_the_backend_refuses_a_config_without_the_file_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = _backend(monkeypatch)
    text = render_config("m", [SCHEMA], [1], ServingOptions())
    bare = "\n".join(line for line in text.splitlines() if '_file"' not in line) + "\n"
    with pytest.raises(_FakeBackendUtils.TritonModelException, match=r"lacks the parameters \['onnx_file'"):
        backend.TritonPythonModel().initialize(_triton_args(tmp_path, bare))
    sneaky = text.replace(f'string_value: "{MODEL_FILE}"', 'string_value: "../2/model.onnx"')
    with pytest.raises(_FakeBackendUtils.TritonModelException, match="file names in the version folder"):
        backend.TritonPythonModel().initialize(_triton_args(tmp_path, sneaky))
