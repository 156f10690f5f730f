"""Names in the model repository and in a version bundle: standard library only.

Readable where nothing else of the project is installed (the GPU check's ``run`` on a bare host,
the Triton runtime in :mod:`servers.tritonserver`); the documents themselves are the pydantic
models of :mod:`modelspec.bundle` and :mod:`modelspec.repository`.

::

    <repository>/<model>/config.pbtxt      Triton's model configuration (rendered by modelspec.repository)
    <repository>/<model>/routing.json      which version serves which alias (modelspec.repository.Routing)
    <repository>/<model>/<N>/<bundle files> version N (= the MLflow version), never overwritten
    <repository>/.staging/                 versions being copied, renamed into place when complete
"""

from __future__ import annotations

MODEL_FILE = "model.onnx"
SCHEMA_FILE = "schema.json"
PROFILE_FILE = "profile.json"
REFERENCE_FILE = "reference.json"
MANIFEST_FILE = "manifest.json"
BUNDLE_FILES = (MODEL_FILE, SCHEMA_FILE, PROFILE_FILE, REFERENCE_FILE, MANIFEST_FILE)
"""Every version bundle holds these."""
TORCH_MODEL_FILE = "model.pt"
"""TorchScript export of the trained module, parity-checked like the ONNX file. The embedded
backend runs it on the GPU where onnxruntime has no CUDA provider (no ``onnxruntime-gpu``)."""
OPTIONAL_BUNDLE_FILES = (TORCH_MODEL_FILE,)
"""Files a version may carry besides :data:`BUNDLE_FILES`; copied with the bundle when present."""

CONFIG_FILE = "config.pbtxt"
ROUTING_FILE = "routing.json"
STAGING_DIR = ".staging"
EMBEDDED_BACKEND = "onnxruntime_py"
"""The Python-based backend (``triton_backend/onnxruntime_py``) that serves every version in the
embedded Triton, which has only the Python backend."""
BACKEND_FILE_PARAMETERS = {
    "onnx_file": MODEL_FILE,
    "torch_file": TORCH_MODEL_FILE,
    "schema_file": SCHEMA_FILE,
    "reference_file": REFERENCE_FILE,
}
"""``config.pbtxt`` parameters that name a version's files for the embedded backend, which runs inside
Triton's Python stub with nothing of this project importable: the repository renderer writes them,
the backend reads them (and refuses to load a config without them)."""
