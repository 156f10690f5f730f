"""Training profile: the distribution of every feature and of the predictions at training time.

Drift checks compare live traffic against it with the population stability index (PSI),
using the same bins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

# Numeric bins: interior edges at the training deciles; values below the first edge fall in
# bin 0, at or above the last in bin len(edges). Missing values get their own share.
_DECILES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
_EPS = 1e-4


class NumericProfile(BaseModel):
    """Histogram of one numeric column over quantile bins."""

    model_config = ConfigDict(extra="forbid")

    edges: list[float]
    proportions: list[float]
    missing_rate: float
    mean: float
    std: float

    @classmethod
    def from_values(cls, values: Sequence[float] | np.ndarray) -> NumericProfile:
        """Profile ``values`` (NaN means missing)."""
        arr = np.asarray(values, dtype=np.float64)
        present = arr[~np.isnan(arr)]
        missing_rate = 1.0 - present.size / arr.size if arr.size else 0.0
        if present.size == 0:
            return cls(edges=[], proportions=[1.0], missing_rate=missing_rate, mean=0.0, std=0.0)
        edges = sorted(set(np.quantile(present, _DECILES).round(6).tolist()))
        counts = np.bincount(np.searchsorted(edges, present, side="right"), minlength=len(edges) + 1)
        return cls(
            edges=edges,
            proportions=(counts / present.size).tolist(),
            missing_rate=missing_rate,
            mean=float(present.mean()),
            std=float(present.std()),
        )

    def bin_of(self, value: float) -> int:
        """Index of the bin that ``value`` (not NaN) falls in."""
        return int(np.searchsorted(self.edges, value, side="right"))


class CategoricalProfile(BaseModel):
    """Share of each category (and of missing values) in training."""

    model_config = ConfigDict(extra="forbid")

    proportions: dict[str, float]
    missing_rate: float

    @classmethod
    def from_values(cls, values: Sequence[str | None], categories: Sequence[str]) -> CategoricalProfile:
        """Profile ``values`` (None means missing) over ``categories``."""
        total = len(values)
        counts = dict.fromkeys(categories, 0)
        missing = 0
        for v in values:
            if v is None:
                missing += 1
            elif v in counts:
                counts[v] += 1
        present = max(total - missing, 1)
        return cls(
            proportions={k: c / present for k, c in counts.items()},
            missing_rate=missing / total if total else 0.0,
        )


class TrainingProfile(BaseModel):
    """Profiles of every input feature and of each output, keyed by name."""

    model_config = ConfigDict(extra="forbid")

    rows: int
    numeric: dict[str, NumericProfile]
    categorical: dict[str, CategoricalProfile]
    predictions: dict[str, NumericProfile]


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index between two discrete distributions over the same bins.

    Rules of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 significant shift.
    Empty bins are floored at a small epsilon so the index stays finite.
    """
    if len(expected) != len(actual):
        raise ValueError(f"bins differ: {len(expected)} expected vs {len(actual)} actual")
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, _EPS), max(a, _EPS)
        total += (a - e) * math.log(a / e)
    return total
