"""The on-disk format shared by the registry and the gateway.

The registry writes these documents next to each served version in the model repository
(``model_repository/<model>/<N>/``); the gateway reads them to build its contract. Neither
side imports the other: this package is the only thing they share, and it depends on
pydantic and numpy alone.

- :mod:`modelspec.schema`: the feature schema (names, types, ranges, categories, nullability)
  and the tensor layout the served model expects.
- :mod:`modelspec.profile`: the training profile of every feature and of the predictions,
  used for drift checks.
- :mod:`modelspec.bundle`: the files of a version bundle and the routing document that says
  which version serves which alias.
"""

from modelspec.bundle import (
    BUNDLE_FILES,
    MANIFEST_FILE,
    MODEL_FILE,
    PROFILE_FILE,
    REFERENCE_FILE,
    ROUTING_FILE,
    SCHEMA_FILE,
    Manifest,
    Reference,
    Routing,
)
from modelspec.profile import CategoricalProfile, NumericProfile, TrainingProfile
from modelspec.schema import (
    CategoricalFeature,
    Feature,
    ModelSchema,
    NumericFeature,
    OutputSpec,
    QualityMetric,
    breaking_changes,
)

__all__ = [
    "BUNDLE_FILES",
    "MANIFEST_FILE",
    "MODEL_FILE",
    "PROFILE_FILE",
    "REFERENCE_FILE",
    "ROUTING_FILE",
    "SCHEMA_FILE",
    "CategoricalFeature",
    "CategoricalProfile",
    "Feature",
    "Manifest",
    "ModelSchema",
    "NumericFeature",
    "NumericProfile",
    "OutputSpec",
    "QualityMetric",
    "Reference",
    "Routing",
    "TrainingProfile",
    "breaking_changes",
]
