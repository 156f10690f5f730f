"""The Triton model repository's format, and the only code that writes it.

Layout (Triton's): ``<root>/<model>/config.pbtxt`` and ``<root>/<model>/<N>/`` where ``N`` is
the MLflow version; beside them ``<root>/<model>/routing.json`` (:class:`Routing`) says which
version serves which alias: only the sync controller writes it, after the version passed its
smoke test in every Triton, and the gateway follows it. A version folder is staged under
``<root>/.staging/`` and renamed into place, so Triton never sees a half-written version; once there it
is never overwritten.
Every config is parsed with Triton's own ``ModelConfig`` protobuf before it is written (imported
only then: readers of the format need neither protobuf nor tritonclient).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from modelspec.bundle import Manifest, utc_now, write_atomic
from modelspec.layout import (
    BACKEND_FILE_PARAMETERS,
    BUNDLE_FILES,
    CONFIG_FILE,
    EMBEDDED_BACKEND,
    MANIFEST_FILE,
    OPTIONAL_BUNDLE_FILES,
    ROUTING_FILE,
    SCHEMA_FILE,
    STAGING_DIR,
)
from modelspec.schema import NAME_PATTERN, ModelSchema

log = logging.getLogger(__name__)


class RepositoryError(RuntimeError):
    """The model repository cannot be written as asked; the message says why and what to do."""


class ConfigError(RepositoryError):
    """A generated ``config.pbtxt`` does not parse as Triton's ModelConfig."""


class ServingOptions(BaseModel):
    """How Triton should run a model: target backend, device, batching (one ``config.pbtxt``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: Literal["embedded", "native"] = "embedded"
    gpu: bool = False
    max_batch_size: int = 256
    max_queue_delay_us: int = 500
    dynamic_batching: bool = True
    instance_count: int = 1
    ort_threads: int = 1
    tensorrt_fp16: bool = False


class Routing(BaseModel):
    """Which version answers for which alias, as last verified by the sync controller."""

    model_config = ConfigDict(extra="forbid")

    model_name: str
    champion: int | None = None
    challenger: int | None = None
    previous_champion: int | None = None
    champion_run_id: str | None = None
    challenger_run_id: str | None = None
    updated_at: str = Field(default_factory=utc_now)
    serving_since: dict[str, str] = {}
    serving: ServingOptions | None = None
    """The options the loaded ``config.pbtxt`` was rendered with (``max_batch_size`` tells the gateway
    where to split a request); None in documents written before it was recorded."""

    def loaded_versions(self) -> list[int]:
        """The versions Triton must keep loaded, ascending."""
        return sorted({v for v in (self.champion, self.challenger, self.previous_champion) if v is not None})

    @classmethod
    def read(cls, model_dir: Path) -> Routing | None:
        """Read ``<model_dir>/routing.json``; None when the model has never been served."""
        path = model_dir / ROUTING_FILE
        if not path.exists():
            return None
        return cls.model_validate_json(path.read_bytes())

    def write(self, model_dir: Path) -> None:
        """Write atomically (temp file + rename), so a reader never sees half a document."""
        write_atomic(model_dir / ROUTING_FILE, self.model_dump_json(indent=2).encode())


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a safe model name (no path tricks), else raise RepositoryError."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise RepositoryError(
            f"invalid model name {name!r}: use lower-case letters, digits and '_', starting with a letter"
        )
    return name


def render_config(name: str, schemas: Iterable[ModelSchema], versions: Iterable[int], opts: ServingOptions) -> str:
    """Render the ``config.pbtxt`` that serves ``versions`` of model ``name``.

    ``schemas`` are those of the versions to serve: the feature axis of an input is fixed when
    they all agree and variable (-1) when they differ (the embedded backend handles both). The
    outputs are the union of the versions' outputs. For
    the embedded target the config also names the bundle's files
    (:data:`~modelspec.layout.BACKEND_FILE_PARAMETERS`), which the backend cannot import.
    """
    check_model_name(name)
    schema_list = list(schemas)
    version_list = sorted(set(versions))
    if not schema_list or not version_list:
        raise RepositoryError(f"model {name!r}: nothing to serve")

    def width(attr: str) -> int:
        widths = {len(getattr(s, attr)) for s in schema_list}
        return widths.pop() if len(widths) == 1 else -1

    first = schema_list[0]
    n_num = width("numeric")
    n_cat = width("categorical") or 1  # a model without categoricals still takes a [batch, 1] tensor
    lines = [f'name: "{name}"']
    if opts.target == "embedded":
        lines.append(f'backend: "{EMBEDDED_BACKEND}"')
    else:
        lines += ['platform: "onnxruntime_onnx"', 'default_model_filename: "model.onnx"']
    lines.append(f"max_batch_size: {opts.max_batch_size}")
    lines.append("input [")
    lines.append(f'  {{ name: "{first.numeric_tensor}" data_type: TYPE_FP32 dims: [ {n_num} ] }},')
    lines.append(f'  {{ name: "{first.categorical_tensor}" data_type: TYPE_INT64 dims: [ {n_cat} ] }}')
    lines.append("]")
    # Every output any served version returns, each once, in the order the versions name them:
    # a champion that adds an output must be answerable while an older version stays loaded.
    output_names = list(dict.fromkeys(o.name for s in schema_list for o in s.outputs))
    outputs = ",\n".join(f'  {{ name: "{n}" data_type: TYPE_FP32 dims: [ 1 ] }}' for n in output_names)
    lines += ["output [", outputs, "]"]
    lines.append(f"version_policy: {{ specific: {{ versions: [ {', '.join(map(str, version_list))} ] }} }}")
    if opts.dynamic_batching:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {opts.max_queue_delay_us} }}")
    kind = "KIND_GPU" if opts.gpu else "KIND_CPU"
    lines.append(f"instance_group [ {{ count: {opts.instance_count} kind: {kind} }} ]")
    if opts.target == "native" and opts.gpu and opts.tensorrt_fp16:
        lines.append(
            "optimization { execution_accelerators { gpu_execution_accelerator: [ "
            '{ name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } } ] } }'
        )
    if opts.target == "embedded":
        lines.append(f'parameters: {{ key: "ort_threads" value: {{ string_value: "{opts.ort_threads}" }} }}')
        lines += [
            f'parameters: {{ key: "{key}" value: {{ string_value: "{filename}" }} }}'
            for key, filename in BACKEND_FILE_PARAMETERS.items()
        ]
    elif opts.ort_threads > 0 and not opts.gpu:
        # Triton's onnxruntime backend reads the same knob under this name.
        lines.append(f'parameters: {{ key: "intra_op_thread_count" value: {{ string_value: "{opts.ort_threads}" }} }}')
    text = "\n".join(lines) + "\n"
    validate_config(text, expected_name=name)
    return text


def validate_config(text: str, expected_name: str | None = None) -> None:
    """Parse ``text`` with Triton's ModelConfig protobuf; raise ConfigError with line/column if invalid."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ConfigError(f"config.pbtxt is not a valid Triton ModelConfig: {exc}") from exc
    if expected_name is not None and config.name != expected_name:
        raise ConfigError(f"config.pbtxt names {config.name!r}, but the folder is {expected_name!r}")
    if config.max_batch_size < 1:
        raise ConfigError("config.pbtxt: max_batch_size must be >= 1 so Triton can batch")


def write_config(root: Path, name: str, text: str) -> bool:
    """Atomically write ``<root>/<name>/config.pbtxt``; return False when it was already identical."""
    validate_config(text, expected_name=name)
    path = root / check_model_name(name) / CONFIG_FILE
    if path.exists() and path.read_text() == text:
        return False
    write_atomic(path, text.encode())
    return True


def version_dir(root: Path, name: str, version: int) -> Path:
    """The folder of ``version`` of model ``name``."""
    if version < 1:
        raise RepositoryError(f"version must be a positive integer, got {version}")
    return root / check_model_name(name) / str(version)


def is_complete(path: Path) -> bool:
    """Whether ``path`` holds every file of a version bundle."""
    return all((path / f).is_file() for f in BUNDLE_FILES)


def materialize_version(root: Path, name: str, version: int, bundle: Path) -> Path:
    """Copy a downloaded bundle into ``<root>/<name>/<version>/`` atomically.

    The optional files (:data:`modelspec.bundle.OPTIONAL_BUNDLE_FILES`, the torch artifact) are
    copied too when the bundle has them.

    An existing version folder from the same MLflow run is kept as it is (idempotent); one
    from another run is an error: versions are never overwritten.
    """
    target = version_dir(root, name, version)
    missing = [f for f in BUNDLE_FILES if not (bundle / f).is_file()]
    if missing:
        raise RepositoryError(f"bundle of {name} v{version} lacks {missing}; re-register the version")
    new_manifest = Manifest.model_validate_json((bundle / MANIFEST_FILE).read_bytes())
    if target.exists():
        if is_complete(target):
            old = Manifest.model_validate_json((target / MANIFEST_FILE).read_bytes())
            if old.run_id == new_manifest.run_id:
                return target
        raise RepositoryError(
            f"{target} exists and does not hold run {new_manifest.run_id}; versions are never overwritten. "
            "If the registry was reset, move the old model repository away."
        )
    ModelSchema.model_validate_json((bundle / SCHEMA_FILE).read_bytes())  # fail before Triton does
    staging_root = root / STAGING_DIR
    staging_root.mkdir(parents=True, exist_ok=True)
    clean_staging(root, name, version)
    staging = staging_root / f"{name}.{version}.{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    new_manifest.version = version
    for f in BUNDLE_FILES:
        if f == MANIFEST_FILE:
            (staging / f).write_text(new_manifest.model_dump_json(indent=2))
        else:
            shutil.copyfile(bundle / f, staging / f)
    for f in OPTIONAL_BUNDLE_FILES:
        if (bundle / f).is_file():
            shutil.copyfile(bundle / f, staging / f)
    for copied in staging.iterdir():
        with copied.open("rb") as fh:
            os.fsync(fh.fileno())
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staging, target)
    _fsync_dir(target.parent)
    log.info("materialized %s version %d at %s", name, version, target)
    return target


def clean_staging(root: Path, name: str, version: int) -> None:
    """Remove leftovers of an interrupted copy of this version."""
    staging_root = root / STAGING_DIR
    if not staging_root.is_dir():
        return
    for leftover in staging_root.glob(f"{name}.{version}.*"):
        log.warning("removing half-written copy %s left by an interrupted sync", leftover)
        shutil.rmtree(leftover, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
