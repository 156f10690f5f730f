"""Stored rows -> input arrays with numpy alone: for hosts and processes that have no pydantic.

A version's ``reference.json`` (:class:`modelspec.bundle.Reference`) stores its inputs as JSON
rows, a missing number as ``null``; ``schema.json`` names the two input tensors. The GPU check's
``run`` step (a bare GPU host: numpy, the Triton wheel, onnxruntime) and the sync controller's
smoke test both read them through here, so the rule "null -> NaN, categories as int64 indices"
has one definition. The embedded Triton backend (``triton_backend/onnxruntime_py/model.py``) is
the exception: it is copied alone into Triton's backend folder and runs in Triton's Python stub,
where no project package is importable, so it carries its own copy of these few lines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

NUMERIC_TENSOR = "numeric"
"""Default name of the FP32 input ``[batch, n_numeric]`` (NaN = missing)."""
CATEGORICAL_TENSOR = "categorical"
"""Default name of the INT64 input ``[batch, n_categorical]`` (category indices)."""


def reference_arrays(reference: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The (numeric FP32, categorical INT64) inputs of a ``reference.json`` document."""
    numeric = np.array([[math.nan if v is None else v for v in row] for row in reference["numeric"]], dtype=np.float32)
    categorical = np.array(reference["categorical"], dtype=np.int64)
    return numeric, categorical


def tensor_names(schema: Mapping[str, Any]) -> tuple[str, str]:
    """The (numeric, categorical) input names a ``schema.json`` document declares."""
    return schema.get("numeric_tensor", NUMERIC_TENSOR), schema.get("categorical_tensor", CATEGORICAL_TENSOR)
