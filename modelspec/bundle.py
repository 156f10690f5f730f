"""The files of one served version and the routing document of a model.

``model_repository/<model>/<N>/`` holds :data:`BUNDLE_FILES` and any of
:data:`OPTIONAL_BUNDLE_FILES` the version was exported with; ``N`` is the MLflow version.
``model_repository/<model>/routing.json`` (:class:`Routing`) says which version serves which
alias; only the sync controller writes it, after the version passed its smoke
test in Triton, and the gateway follows it.
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

MODEL_FILE = "model.onnx"
SCHEMA_FILE = "schema.json"
PROFILE_FILE = "profile.json"
REFERENCE_FILE = "reference.json"
MANIFEST_FILE = "manifest.json"
BUNDLE_FILES = (MODEL_FILE, SCHEMA_FILE, PROFILE_FILE, REFERENCE_FILE, MANIFEST_FILE)
TORCH_MODEL_FILE = "model.pt"
"""TorchScript export of the trained module, parity-checked like the ONNX file. The embedded
backend runs it on the GPU where onnxruntime has no CUDA provider (no ``onnxruntime-gpu``)."""
OPTIONAL_BUNDLE_FILES = (TORCH_MODEL_FILE,)
"""Files a version may carry besides :data:`BUNDLE_FILES`; copied with the bundle when present."""
ROUTING_FILE = "routing.json"


def utc_now() -> str:
    """Current UTC time as ISO 8601 with seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class Manifest(BaseModel):
    """Lineage of one version: where it came from and how it was checked."""

    model_config = ConfigDict(extra="allow")

    model_name: str
    version: int | None = None  # filled in when registered
    run_id: str
    data_hash: str
    git_commit: str
    created_at: str = Field(default_factory=utc_now)
    parity_max_abs_error: float
    metrics: dict[str, float] = {}
    params: dict[str, str] = {}


class Reference(BaseModel):
    """Inputs and the outputs the trained torch module gave for them.

    The smoke test after a Triton load must reproduce them within ``tolerance``.
    """

    model_config = ConfigDict(extra="forbid")

    numeric: list[list[float | None]]
    categorical: list[list[int]]
    outputs: dict[str, list[float]]
    tolerance: float


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


def write_bundle_documents(
    bundle: Path, schema: BaseModel, profile: BaseModel, reference: Reference, manifest: Manifest
) -> None:
    """Write the JSON documents of a version bundle (the model files are written by the export)."""
    for name, doc in (
        (SCHEMA_FILE, schema),
        (PROFILE_FILE, profile),
        (REFERENCE_FILE, reference),
        (MANIFEST_FILE, manifest),
    ):
        (bundle / name).write_text(doc.model_dump_json(indent=2))


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
