"""The native target: the config.pbtxt the sync controller writes for the NGC Triton image parses
with Triton's ModelConfig protobuf and asks for the onnxruntime backend on the GPU.

It is rendered by the same function as the embedded target (a setting, not a second code path),
for the real schema of the demo model and the options the deployments set.
"""

from __future__ import annotations

from functools import cache

import pytest
from deploy_support import env_dict, load_compose
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from modelspec import MODEL_FILE, ModelSchema


@cache
def _demo_schema() -> ModelSchema:
    from registry.demo_data import DEMO_MODEL_NAME, demo_schema, load_demo_dataset

    assert DEMO_MODEL_NAME == "solar_ghi"
    return demo_schema(load_demo_dataset().frame)


def _parse(text: str) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(text, config)  # raises ParseError with line and column
    return config


def _render(**options: object) -> model_config_pb2.ModelConfig:
    from modelspec.repository import ServingOptions, render_config

    text = render_config("solar_ghi", [_demo_schema()], [3, 4], ServingOptions(**options))  # type: ignore[arg-type]
    return _parse(text)


@pytest.mark.parametrize("fp16", [False, True], ids=["onnxruntime", "tensorrt-fp16"])
def test_native_gpu_config_parses_and_uses_the_onnxruntime_backend_on_gpu(fp16: bool) -> None:
    config = _render(target="native", gpu=True, tensorrt_fp16=fp16)
    assert config.name == "solar_ghi"
    assert config.platform == "onnxruntime_onnx" and not config.backend
    assert config.default_model_filename == MODEL_FILE
    assert config.max_batch_size >= 1 and config.HasField("dynamic_batching")
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert list(config.version_policy.specific.versions) == [3, 4]
    schema = _demo_schema()
    assert [i.name for i in config.input] == [schema.numeric_tensor, schema.categorical_tensor]
    assert [o.name for o in config.output] == [o.name for o in schema.outputs]
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    if fp16:
        (trt,) = accelerators
        assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
    else:
        assert not accelerators


def test_native_cpu_config_for_the_cpu_overlay() -> None:
    config = _render(target="native", gpu=False)
    assert config.platform == "onnxruntime_onnx"
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator


def test_embedded_and_native_differ_only_in_backend_and_device() -> None:
    """One renderer: same tensors, batching and version policy for both targets."""
    embedded = _render(target="embedded", gpu=False)
    native = _render(target="native", gpu=False)
    assert embedded.backend and not embedded.platform
    for field in ("input", "output", "max_batch_size", "dynamic_batching", "version_policy", "instance_group"):
        assert getattr(embedded, field) == getattr(native, field), field


def test_compose_settings_render_a_valid_config() -> None:
    """What docker-compose's sync controller is configured with renders a valid GPU config."""
    env = env_dict(load_compose()["services"]["sync"]["environment"])
    config = _render(
        target=env["MODELOPS_REGISTRY_TARGET"],
        gpu=env["MODELOPS_REGISTRY_GPU"] == "yes",
        tensorrt_fp16=env["MODELOPS_REGISTRY_TENSORRT_FP16"] == "true",
        max_batch_size=int(env["MODELOPS_REGISTRY_MAX_BATCH_SIZE"]),
        max_queue_delay_us=int(env["MODELOPS_REGISTRY_MAX_QUEUE_DELAY_US"]),
        instance_count=int(env["MODELOPS_REGISTRY_INSTANCE_COUNT"]),
    )
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert config.dynamic_batching.max_queue_delay_microseconds == 500


def test_the_parser_rejects_an_invalid_config() -> None:
    """Negative control: an unknown field or enum does not pass as a ModelConfig."""
    with pytest.raises(text_format.ParseError):
        _parse('name: "m"\ninstance_group [ { kind: KIND_TPU } ]\n')
    with pytest.raises(text_format.ParseError):
        _parse('name: "m"\nmax_batch_sizes: 4\n')
