"""The files of one served version: what registration writes and every Triton replica serves.

``model_repository/<model>/<N>/`` holds :data:`BUNDLE_FILES` and any of
:data:`OPTIONAL_BUNDLE_FILES` the version was exported with; ``N`` is the MLflow version. The
layout around the bundles (``config.pbtxt``, ``routing.json``) is :mod:`modelspec.repository`.
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from modelspec.layout import (
    BUNDLE_FILES,
    MANIFEST_FILE,
    MODEL_FILE,
    OPTIONAL_BUNDLE_FILES,
    PROFILE_FILE,
    REFERENCE_FILE,
    SCHEMA_FILE,
    TORCH_MODEL_FILE,
)

__all__ = [
    "BUNDLE_FILES",
    "MANIFEST_FILE",
    "MODEL_FILE",
    "OPTIONAL_BUNDLE_FILES",
    "PROFILE_FILE",
    "REFERENCE_FILE",
    "SCHEMA_FILE",
    "TORCH_MODEL_FILE",
    "Manifest",
    "Reference",
    "utc_now",
    "write_atomic",
    "write_bundle_documents",
]


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
