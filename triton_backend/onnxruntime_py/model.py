"""Triton Python-based backend ``onnxruntime_py``: serves any version's exported model.

The embedded Triton (from the ``nvidia-pytriton`` wheel) has only the Python backend, so this
file runs the exported model inside it. It is installed once as
``<backend-dir>/onnxruntime_py/model.py``; a model selects it with ``backend: "onnxruntime_py"``
and each version folder holds only its artifacts (``model.onnx``, optionally ``model.pt``). The
config names them (parameters ``onnx_file``, ``torch_file``, ``schema_file``, ``reference_file``,
written by ``modelspec.repository.render_config``): this file imports nothing of the project, only
the standard library, numpy and the engines, and refuses a config without them.

Every ``execute`` call concatenates the valid requests Triton's dynamic batcher gathered into one
run and splits the outputs back; a malformed request gets its own error response and does not
fail its neighbours.

Engines, chosen once per instance and logged with the reason (config parameter ``engine``:
``auto`` (default), ``onnxruntime`` or ``torch``):

- ``auto`` on a ``KIND_GPU`` instance: onnxruntime's CUDA provider when ``onnxruntime-gpu`` is
  installed; else the version's TorchScript artifact ``model.pt`` on the instance's GPU when
  torch has CUDA; else onnxruntime on the CPU. ``auto`` on a ``KIND_CPU`` instance: onnxruntime
  on the CPU.
- ``torch``: ``model.pt`` on the instance's GPU (``KIND_GPU``) or the CPU.
- ``onnxruntime``: ``model.onnx``, CUDA provider on a GPU instance when available.

Tensors cross the stub boundary through DLPack in both directions, never through the stub's
numpy bridge: that bridge is built for numpy 1.x and breaks with numpy 2 (GROUND.md), and DLPack
lets inputs that already live on the GPU reach torch without a copy. A batch is gathered on its
device, runs once, and its outputs come to host memory in one copy per batch, because the HTTP
and gRPC frontends need them there and one copy per batch is cheaper than one per request.

Before an instance serves, it runs the version's ``reference.json`` rows through the chosen
engine (this also warms up CUDA kernels) and refuses to load when they disagree.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by the Triton Python stub

ENGINES = ("auto", "onnxruntime", "torch")
FILE_PARAMETERS = ("onnx_file", "torch_file", "schema_file", "reference_file")
"""The config parameters that name the version's files (``modelspec.layout.BACKEND_FILE_PARAMETERS``,
written by ``modelspec.repository.render_config``): this file runs in Triton's Python stub, where
nothing of the project can be imported, so the names come with the config instead."""


def bundle_files(params: dict[str, str], model: str) -> dict[str, str]:
    """The version's file names from the config parameters; TritonModelException when one is absent."""
    missing = [key for key in FILE_PARAMETERS if not params.get(key)]
    if missing:
        raise pb_utils.TritonModelException(
            f"config.pbtxt of {model} lacks the parameters {missing} that name the version's files; "
            "render it with modelspec.repository.render_config"
        )
    odd = [params[key] for key in FILE_PARAMETERS if os.path.basename(params[key]) != params[key]]
    if odd:
        raise pb_utils.TritonModelException(
            f"config.pbtxt of {model}: file parameters {odd} must be file names in the version folder"
        )
    return {key: params[key] for key in FILE_PARAMETERS}


class _DLPackView:
    """Presents a stub tensor to ``np.from_dlpack`` whatever keywords that numpy version passes."""

    __slots__ = ("_tensor",)

    def __init__(self, tensor: Any) -> None:
        self._tensor = tensor

    def __dlpack__(self, **_kwargs: Any) -> Any:
        return self._tensor.to_dlpack()

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU: the numpy engine only reads host tensors


def _numpy_output_wrapper() -> Any:
    """How a numpy output becomes a Triton tensor in this environment.

    The stub's numpy bridge (``pb_utils.Tensor(name, array)``) is built for numpy 1.x and
    mis-sizes outputs under numpy 2. Handing numpy's own DLPack capsule to ``from_dlpack`` is no
    way out either: the stub renames a consumed capsule ``used_dlpack`` where numpy's deleter
    expects ``used_dltensor``, and the stub process goes unhealthy. torch's capsules survive the
    rename, so under numpy 2 the output goes through a zero-copy torch view when torch exists.
    """
    if int(np.__version__.split(".", 1)[0]) < 2:
        return pb_utils.Tensor
    try:
        import torch
        from torch.utils.dlpack import to_dlpack  # type: ignore[attr-defined]
    except ImportError:
        pb_utils.Logger.log_warn("numpy 2 without torch: outputs go through the stub's numpy 1.x bridge")
        return pb_utils.Tensor
    return lambda name, array: pb_utils.Tensor.from_dlpack(name, to_dlpack(torch.from_numpy(array)))


class OnnxRuntimeEngine:
    """``model.onnx`` in onnxruntime; arrays are numpy arrays in host memory."""

    def __init__(self, model_path: str, gpu_id: int | None, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        # Idle intra-op threads spin by default, burning the cores that Triton's front end, the
        # gateway and the other instances need between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list[Any] = ["CPUExecutionProvider"]
        if gpu_id is not None:
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": gpu_id}))
        self.session = ort.InferenceSession(model_path, sess_options=options, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.description = f"onnxruntime {ort.__version__} {self.session.get_providers()[0]}"
        self._wrap = _numpy_output_wrapper()

    @staticmethod
    def cuda_available() -> bool:
        """Whether this onnxruntime build has the CUDA execution provider (``onnxruntime-gpu``)."""
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers()

    def from_triton(self, tensor: Any) -> np.ndarray:
        """A zero-copy numpy view of a host input tensor (copied to host first if on a GPU)."""
        if not tensor.is_cpu():
            raise ValueError("onnxruntime engine reads host tensors; send inputs in host memory")
        return np.from_dlpack(_DLPackView(tensor))

    @staticmethod
    def dtype_name(array: np.ndarray) -> str:
        """The numpy name of the array's dtype (``float32``)."""
        return str(array.dtype.name)

    @staticmethod
    def concat(parts: list[np.ndarray]) -> np.ndarray:
        """Stack requests along the batch axis."""
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One session run over the whole batch; outputs in ``output_names`` order."""
        return list(self.session.run(self.output_names, feed))

    def to_triton(self, name: str, rows: np.ndarray) -> Any:
        """Wrap a slice of an output (C-contiguous along the batch axis) as a Triton tensor."""
        return self._wrap(name, np.ascontiguousarray(rows))

    def close(self) -> None:
        """Drop the session."""
        self.session = None


class TorchEngine:
    """The TorchScript artifact ``model.pt`` on one device; arrays are torch tensors."""

    def __init__(self, model_path: str, schema_path: str, device: str, threads: int) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        if threads > 0:
            torch.set_num_threads(threads)
        self.module = torch.jit.load(model_path, map_location=self.device)
        self.module.eval()
        with open(schema_path) as fh:
            schema = json.load(fh)
        self.input_names = [
            schema.get("numeric_tensor", "numeric"),
            schema.get("categorical_tensor", "categorical"),
        ]
        self.output_names = [o["name"] for o in schema["outputs"]]
        where = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        self.description = f"torch {torch.__version__} TorchScript on {self.device} ({where})"

    @staticmethod
    def cuda_available() -> bool:
        """Whether torch can be imported here and sees a CUDA device."""
        try:
            import torch
        except ImportError:
            return False
        return bool(torch.cuda.is_available())

    def from_triton(self, tensor: Any) -> Any:
        """A zero-copy torch view of an input tensor, on whatever device Triton placed it."""
        return self.torch.utils.dlpack.from_dlpack(tensor.to_dlpack())

    @staticmethod
    def dtype_name(tensor: Any) -> str:
        """The numpy-style name of the tensor's dtype (``float32``)."""
        return str(tensor.dtype).removeprefix("torch.")

    def concat(self, parts: list[Any]) -> Any:
        """Stack requests along the batch axis on the engine's device (one copy when gathered on the host)."""
        if all(p.device.type == "cpu" for p in parts):
            batch = parts[0] if len(parts) == 1 else self.torch.cat(parts)
            return batch.to(self.device, non_blocking=True)
        moved = [p.to(self.device, non_blocking=True) for p in parts]
        return moved[0] if len(moved) == 1 else self.torch.cat(moved)

    def run(self, feed: dict[str, Any]) -> list[Any]:
        """One forward pass over the whole batch; outputs copied to host memory once per batch."""
        with self.torch.inference_mode():
            result = self.module(*(feed[name] for name in self.input_names))
        outputs = list(result) if isinstance(result, (tuple, list)) else [result]
        if len(outputs) != len(self.output_names):
            raise RuntimeError(f"model.pt returned {len(outputs)} outputs, schema.json names {len(self.output_names)}")
        return [o.to("cpu").contiguous() for o in outputs]

    def to_triton(self, name: str, rows: Any) -> Any:
        """Wrap a slice of an output as a Triton tensor via DLPack."""
        capsule = self.torch.utils.dlpack.to_dlpack(rows.contiguous())  # type: ignore[attr-defined]
        return pb_utils.Tensor.from_dlpack(name, capsule)

    def close(self) -> None:
        """Drop the module and give cached GPU memory back."""
        self.module = None
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()


class TritonPythonModel:
    """One instance per (version, device) that Triton loads."""

    def initialize(self, args: dict[str, str]) -> None:
        """Choose and open the engine for this version and instance; check it on the reference rows."""
        self.logger = pb_utils.Logger
        config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        self.version = args["model_version"]
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        threads = int(params.get("ort_threads", "0") or 0)
        preference = params.get("engine", "auto") or "auto"
        if preference not in ENGINES:
            raise pb_utils.TritonModelException(f"parameter engine={preference!r}; expected one of {ENGINES}")
        self.files = {
            key: os.path.join(version_dir, name) for key, name in bundle_files(params, self.model_name).items()
        }
        gpu_id = int(args["model_instance_device_id"]) if args.get("model_instance_kind") == "GPU" else None
        self.engine, reason = self._choose(version_dir, preference, gpu_id, threads)
        by_name = {c["name"]: c for c in config["input"]}
        missing = [n for n in self.engine.input_names if n not in by_name]
        if missing:
            raise pb_utils.TritonModelException(f"config.pbtxt lacks inputs {missing} that the model takes")
        self.inputs = [
            (name, np.dtype(pb_utils.triton_string_to_numpy(by_name[name]["data_type"])).name)
            for name in self.engine.input_names
        ]
        self.outputs = list(self.engine.output_names)
        self._check_reference()
        self.logger.log_info(
            f"{self.model_name} v{self.version} ready: engine {self.engine.description} ({reason}); "
            f"inputs {[n for n, _ in self.inputs]}, outputs {self.outputs}, numpy {np.__version__}"
        )

    def _choose(self, version_dir: str, preference: str, gpu_id: int | None, threads: int) -> tuple[Any, str]:
        onnx_path, torch_path, schema_path = (self.files[k] for k in ("onnx_file", "torch_file", "schema_file"))
        torch_name = os.path.basename(torch_path)
        has_torch_file = os.path.isfile(torch_path)
        if preference == "onnxruntime":
            use_cuda = gpu_id is not None and OnnxRuntimeEngine.cuda_available()
            return OnnxRuntimeEngine(onnx_path, gpu_id if use_cuda else None, threads), "engine=onnxruntime"
        if preference == "torch":
            if not has_torch_file:
                raise pb_utils.TritonModelException(f"engine=torch but {torch_name} is not in {version_dir}")
            device = f"cuda:{gpu_id}" if gpu_id is not None and TorchEngine.cuda_available() else "cpu"
            return TorchEngine(torch_path, schema_path, device, threads), "engine=torch"
        if gpu_id is None:
            return OnnxRuntimeEngine(onnx_path, None, threads), "KIND_CPU instance"
        if OnnxRuntimeEngine.cuda_available():
            return OnnxRuntimeEngine(onnx_path, gpu_id, threads), "onnxruntime has the CUDA provider"
        if has_torch_file and TorchEngine.cuda_available():
            return (
                TorchEngine(torch_path, schema_path, f"cuda:{gpu_id}", threads),
                "onnxruntime has no CUDA provider (onnxruntime-gpu not installed); torch has CUDA",
            )
        why = "no torch with CUDA" if has_torch_file else f"the version has no {torch_name}"
        self.logger.log_warn(
            f"{self.model_name} v{self.version}: KIND_GPU instance but onnxruntime has no CUDA provider "
            f"(install onnxruntime-gpu) and {why}; running on the CPU"
        )
        return OnnxRuntimeEngine(onnx_path, None, threads), f"fallback to CPU: {why}"

    def _check_reference(self) -> None:
        """Run the stored reference rows; raise when the engine does not reproduce them or answers NaN."""
        path = self.files["reference_file"]
        if not os.path.isfile(path):
            return
        with open(path) as fh:
            ref = json.load(fh)
        # the rule of modelspec.tensors.reference_tensors (a missing number is null in the document)
        numeric = np.array([[np.nan if v is None else v for v in row] for row in ref["numeric"]], dtype=np.float32)
        categorical = np.array(ref["categorical"], dtype=np.int64)
        arrays = [numeric, categorical]
        if isinstance(self.engine, TorchEngine):
            arrays = [self.engine.torch.from_numpy(a) for a in arrays]
        feed = {name: self.engine.concat([a]) for (name, _), a in zip(self.inputs, arrays, strict=True)}
        results = self.engine.run(feed)
        worst = 0.0
        for name, out in zip(self.outputs, results, strict=True):
            got = np.asarray(out.numpy() if isinstance(self.engine, TorchEngine) else out, dtype=np.float64)
            expected = np.asarray(ref["outputs"][name], dtype=np.float64)
            # Checked first: a NaN difference compares false, so max(worst, nan) would keep worst and pass.
            if not np.isfinite(got).all():
                raise pb_utils.TritonModelException(
                    f"{self.model_name} v{self.version}: {self.engine.description} computed a value that is not a "
                    f"finite number (NaN or infinity) for output {name!r} on the reference rows; not serving it. "
                    "Check the engine (an FP16 overflow, say) or choose another one (config parameter engine)"
                )
            worst = max(worst, float(np.abs(got.reshape(len(expected), -1)[:, 0] - expected).max(initial=0.0)))
        if not worst <= float(ref["tolerance"]):
            raise pb_utils.TritonModelException(
                f"{self.model_name} v{self.version}: {self.engine.description} differs from the reference "
                f"outputs by {worst:.3g} (> {ref['tolerance']:.3g}); not serving it"
            )
        self.logger.log_info(
            f"{self.model_name} v{self.version}: reference rows reproduced (max abs error {worst:.3g})"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        """Run all valid requests as one batch; answer each request on its own."""
        engine = self.engine
        responses: list[Any] = [None] * len(requests)
        batches: dict[str, list[Any]] = {name: [] for name, _ in self.inputs}
        sizes: list[tuple[int, int]] = []  # (request index, rows)
        for i, request in enumerate(requests):
            try:
                arrays = self._read(request)
            except ValueError as exc:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
                continue
            for name, arr in arrays.items():
                batches[name].append(arr)
            sizes.append((i, int(next(iter(arrays.values())).shape[0])))
        if not sizes:
            return responses
        try:
            feed = {name: engine.concat(parts) for name, parts in batches.items()}
            results = engine.run(feed)
        except Exception as exc:  # the engines raise their own types; the message is what matters
            for i, _ in sizes:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"inference failed: {exc}"))
            return responses
        start = 0
        for i, rows in sizes:
            tensors = [
                engine.to_triton(name, out[start : start + rows])
                for name, out in zip(self.outputs, results, strict=True)
            ]
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
            start += rows
        return responses

    def _read(self, request: Any) -> dict[str, Any]:
        arrays: dict[str, Any] = {}
        rows = None
        for name, dtype in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"input {name!r} is missing")
            arr = self.engine.from_triton(tensor)
            got = self.engine.dtype_name(arr)
            if got != dtype:
                raise ValueError(f"input {name!r} has dtype {got}, expected {dtype}")
            if rows is None:
                rows = arr.shape[0]
            elif arr.shape[0] != rows:
                raise ValueError(f"inputs disagree on the number of rows ({rows} vs {arr.shape[0]})")
            arrays[name] = arr
        return arrays

    def finalize(self) -> None:
        """Release the engine so its memory goes back before the stub exits."""
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.close()
