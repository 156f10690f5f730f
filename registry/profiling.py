"""Build the training profile (drift baseline) of a version from its training rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from modelspec import CategoricalProfile, ModelSchema, NumericProfile, TrainingProfile


def build_profile(frame: pd.DataFrame, schema: ModelSchema, predictions: np.ndarray) -> TrainingProfile:
    """Profile every feature of ``frame`` and each column of ``predictions`` (``[rows, outputs]``)."""
    numeric = {
        f.name: NumericProfile.from_values(pd.to_numeric(frame[f.name], errors="coerce").to_numpy(dtype=float))
        for f in schema.numeric
    }
    categorical = {
        f.name: CategoricalProfile.from_values([v if isinstance(v, str) else None for v in frame[f.name]], f.categories)
        for f in schema.categorical
    }
    preds = np.asarray(predictions, dtype=float).reshape(len(frame), -1)
    outputs = {o.name: NumericProfile.from_values(preds[:, i]) for i, o in enumerate(schema.outputs)}
    return TrainingProfile(rows=len(frame), numeric=numeric, categorical=categorical, predictions=outputs)
