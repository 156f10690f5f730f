"""The formats every part of the stack shares: feature schema, records -> tensors, bundle, repository.

The registry writes these documents next to each served version in the model repository
(``model_repository/<model>/<N>/``); the deployer copies them into place; the gateway reads them
to build its contract. The gateway imports neither of the others: this package is what they
share, and it depends on pydantic and numpy alone.

- :mod:`modelspec.schema`: the feature schema (names, types, ranges, categories, nullability)
  and the tensor layout the served model expects.
- :mod:`modelspec.tensors`: records -> tensors, once for every caller: the gateway's strict
  validation (:class:`Batch`, :class:`Flag`, :class:`InvalidRecord`), the lenient encoders of
  training frames and generated records, reference rows, and the feed dict of an inference call.
- :mod:`modelspec.profile`: the training profile of every feature and of the predictions,
  used for drift checks.
- :mod:`modelspec.bundle`: the documents of a version bundle (manifest, reference outputs).
- :mod:`modelspec.repository`: the Triton model repository: ``config.pbtxt``, ``routing.json``
  (which version serves which alias), atomic version folders.
- :mod:`modelspec.layout`: file and folder names of the repository and the bundle (standard
  library only, for hosts that have nothing else).
- :mod:`modelspec.tags`: the MLflow tag names and artifact folder registry and deployer share.

The names below are imported on first use (PEP 562), so ``import modelspec.layout`` costs no
pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelspec.bundle import Manifest, Reference
    from modelspec.layout import (
        BUNDLE_FILES,
        MANIFEST_FILE,
        MODEL_FILE,
        PROFILE_FILE,
        REFERENCE_FILE,
        ROUTING_FILE,
        SCHEMA_FILE,
    )
    from modelspec.profile import CategoricalProfile, NumericProfile, TrainingProfile
    from modelspec.repository import Routing, ServingOptions
    from modelspec.schema import (
        CategoricalFeature,
        Feature,
        ModelSchema,
        NumericFeature,
        OutputSpec,
        QualityMetric,
        breaking_changes,
    )
    from modelspec.tensors import Batch, Flag, InvalidRecord, RecordError, TooManyRecords

_WHERE = {
    **dict.fromkeys(
        (
            "BUNDLE_FILES",
            "MANIFEST_FILE",
            "MODEL_FILE",
            "PROFILE_FILE",
            "REFERENCE_FILE",
            "ROUTING_FILE",
            "SCHEMA_FILE",
        ),
        "modelspec.layout",
    ),
    **dict.fromkeys(("Manifest", "Reference"), "modelspec.bundle"),
    **dict.fromkeys(("CategoricalProfile", "NumericProfile", "TrainingProfile"), "modelspec.profile"),
    **dict.fromkeys(("Routing", "ServingOptions"), "modelspec.repository"),
    **dict.fromkeys(("Batch", "Flag", "InvalidRecord", "RecordError", "TooManyRecords"), "modelspec.tensors"),
    **dict.fromkeys(
        (
            "CategoricalFeature",
            "Feature",
            "ModelSchema",
            "NumericFeature",
            "OutputSpec",
            "QualityMetric",
            "breaking_changes",
        ),
        "modelspec.schema",
    ),
}

__all__ = [
    "BUNDLE_FILES",
    "MANIFEST_FILE",
    "MODEL_FILE",
    "PROFILE_FILE",
    "REFERENCE_FILE",
    "ROUTING_FILE",
    "SCHEMA_FILE",
    "Batch",
    "CategoricalFeature",
    "CategoricalProfile",
    "Feature",
    "Flag",
    "InvalidRecord",
    "Manifest",
    "ModelSchema",
    "NumericFeature",
    "NumericProfile",
    "OutputSpec",
    "QualityMetric",
    "RecordError",
    "Reference",
    "Routing",
    "ServingOptions",
    "TooManyRecords",
    "TrainingProfile",
    "breaking_changes",
]


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first use."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'modelspec' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
