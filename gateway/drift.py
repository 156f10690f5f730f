"""Drift: live inputs and predictions against the training profile stored with each version.

Each served version gets a rolling window of its last ``drift_window`` records. On the request
path a batch is only copied into ring buffers (the model's own tensors and its predictions);
binning against the profile's quantile edges and the population stability index
(:func:`modelspec.profile.psi`) of every feature and output are computed when ``/metrics`` is
scraped, over the same bins the training profile used, missing values as a bin of their own. A window with fewer than
``drift_min_records`` records exports nothing: PSI of a small sample is biased upwards
(about ``bins / n``).

Windows are per worker process: with several uvicorn workers each one exports the drift of the
traffic it served, a sample of the same stream.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelspec import ModelSchema, NumericProfile, TrainingProfile
from modelspec.profile import psi

log = logging.getLogger(__name__)


@dataclass
class _Binner:
    """Bins the columns of a float matrix by per-column edges (searchsorted 'right' semantics)."""

    names: list[str]
    columns: list[int]  # which column of the input matrix each name is
    edges: np.ndarray  # [k, max_edges] float32, padded with +inf
    missing_bin: np.ndarray  # [k] index of the missing-value bin of each column
    expected: list[np.ndarray]  # per column: training share of each bin, missing last

    @classmethod
    def build(cls, wanted: list[tuple[str, int]], profiles: dict[str, NumericProfile]) -> _Binner:
        present = [(n, c) for n, c in wanted if n in profiles]
        widest = max((len(profiles[n].edges) for n, _ in present), default=0)
        edges = np.full((len(present), max(widest, 1)), np.inf, dtype=np.float32)
        expected = []
        for j, (name, _col) in enumerate(present):
            p = profiles[name]
            edges[j, : len(p.edges)] = np.asarray(p.edges, dtype=np.float32)
            shares = np.asarray(p.proportions, dtype=np.float64) * (1.0 - p.missing_rate)
            expected.append(np.append(shares, p.missing_rate))
        missing = np.array([len(profiles[n].edges) + 1 for n, _ in present], dtype=np.int16)
        return cls([n for n, _ in present], [c for _, c in present], edges, missing, expected)

    def bins(self, x: np.ndarray) -> np.ndarray:
        """``[rows, k]`` bin indices of a matrix whose columns are already ``columns``, in order."""
        x = np.asarray(x, dtype=np.float32)
        # Compare in float32, the dtype of the tensor: a value sent as 18.9 then falls in the same
        # bin as the training value 18.9 did against the edge 18.9.
        counts: np.ndarray = (x[:, :, None] >= self.edges).sum(axis=2, dtype=np.int16)
        missing = np.isnan(x)
        if missing.any():
            counts[missing] = np.broadcast_to(self.missing_bin, counts.shape)[missing]
        return counts


class _Ring:
    """The last ``size`` rows of a ``[rows, width]`` stream."""

    def __init__(self, size: int, width: int, dtype: type[np.generic]) -> None:
        self.buffer = np.zeros((size, width), dtype=dtype)
        self.size = size
        self.pos = 0
        self.filled = 0

    def add(self, rows: np.ndarray) -> None:
        n = rows.shape[0]
        if n >= self.size:
            self.buffer[:] = rows[-self.size :]
            self.pos, self.filled = 0, self.size
            return
        end = self.pos + n
        if end <= self.size:
            self.buffer[self.pos : end] = rows
        else:
            split = self.size - self.pos
            self.buffer[self.pos :] = rows[:split]
            self.buffer[: n - split] = rows[split:]
        self.pos = end % self.size
        self.filled = min(self.size, self.filled + n)

    def rows(self) -> np.ndarray:
        """The rows held (in ring order, which PSI does not care about)."""
        return self.buffer[: self.filled]


def _select(matrix: np.ndarray, columns: list[int]) -> np.ndarray:
    """``matrix[:, columns]``, without a copy when that is every column in order."""
    if len(columns) == matrix.shape[1] and columns == list(range(len(columns))):
        return matrix
    return matrix[:, columns]


def _shares(binned: np.ndarray, column: int, length: int) -> np.ndarray:
    counts = np.bincount(binned[:, column], minlength=length)[:length]
    return counts / max(binned.shape[0], 1)


class VersionWindow:
    """Rolling window of one version's inputs and predictions, binned like its training profile."""

    def __init__(self, schema: ModelSchema, profile: TrainingProfile, size: int) -> None:
        numeric_cols = [(f.name, j) for j, f in enumerate(schema.numeric)]
        self.numeric = _Binner.build(numeric_cols, profile.numeric)
        output_cols = [(o.name, j) for j, o in enumerate(schema.outputs)]
        self.outputs = _Binner.build(output_cols, profile.predictions)
        self.categorical: list[tuple[str, int, np.ndarray]] = []
        for j, c in enumerate(schema.categorical):
            cp = profile.categorical.get(c.name)
            if cp is None:
                continue
            shares = np.array([cp.proportions.get(k, 0.0) for k in c.categories]) * (1.0 - cp.missing_rate)
            self.categorical.append((c.name, j, np.append(shares, cp.missing_rate)))
        self._numeric = _Ring(size, len(self.numeric.names), np.float32)
        self._categorical = _Ring(size, len(self.categorical), np.int64)
        self._outputs = _Ring(size, len(self.outputs.names), np.float32)
        self._cat_columns = [j for _n, j, _e in self.categorical]

    @property
    def records(self) -> int:
        """Records in the window."""
        return self._numeric.filled

    def add(self, numeric: np.ndarray, categorical: np.ndarray, outputs: np.ndarray) -> None:
        """Add one validated batch and its predictions (``[rows, n_outputs]``)."""
        self._numeric.add(_select(numeric, self.numeric.columns))
        self._categorical.add(_select(categorical, self._cat_columns))
        self._outputs.add(_select(outputs, self.outputs.columns))

    def feature_psi(self) -> dict[str, float]:
        """PSI of every profiled input feature over the window."""
        out = {}
        binned = self.numeric.bins(self._numeric.rows())
        for j, name in enumerate(self.numeric.names):
            expected = self.numeric.expected[j]
            out[name] = psi(expected.tolist(), _shares(binned, j, len(expected)).tolist())
        categories = self._categorical.rows()
        for j, (name, _col, expected) in enumerate(self.categorical):
            out[name] = psi(expected.tolist(), _shares(categories, j, len(expected)).tolist())
        return out

    def prediction_psi(self) -> dict[str, float]:
        """PSI of every profiled output over the window."""
        binned = self.outputs.bins(self._outputs.rows())
        return {
            name: psi(self.outputs.expected[j].tolist(), _shares(binned, j, len(self.outputs.expected[j])).tolist())
            for j, name in enumerate(self.outputs.names)
        }


class DriftMonitor(Collector):
    """Windows of every served version; a Prometheus collector computing PSI at scrape time."""

    def __init__(self, window: int, min_records: int) -> None:
        self.window = window
        self.min_records = min_records
        self._windows: dict[tuple[str, int], VersionWindow | None] = {}

    def observe(
        self,
        model: str,
        version: int,
        schema: ModelSchema,
        profile: TrainingProfile | None,
        numeric: np.ndarray,
        categorical: np.ndarray,
        outputs: np.ndarray,
    ) -> None:
        """Add a served batch to the window of ``model`` ``version`` (no-op without a profile)."""
        key = (model, version)
        window = self._windows.get(key)
        if window is None:
            if key in self._windows or profile is None:
                self._windows[key] = None
                return
            window = VersionWindow(schema, profile, self.window)
            self._windows[key] = window
        window.add(numeric, categorical, outputs)

    def retain(self, served: set[tuple[str, int]]) -> None:
        """Forget the windows of versions no longer served."""
        for key in [k for k in self._windows if k not in served]:
            del self._windows[key]

    def window_of(self, model: str, version: int) -> VersionWindow | None:
        """The window of a version, if it has one."""
        return self._windows.get((model, version))

    def collect(self) -> Iterator[Metric]:
        """Drift gauges of every window with enough records."""
        features = GaugeMetricFamily(
            "modelops_gateway_feature_drift_psi",
            "Population stability index of live inputs against the training profile (alert above 0.25)",
            labels=["model", "version", "feature"],
        )
        predictions = GaugeMetricFamily(
            "modelops_gateway_prediction_drift_psi",
            "Population stability index of live predictions against the training profile",
            labels=["model", "version", "output"],
        )
        records = GaugeMetricFamily(
            "modelops_gateway_drift_window_records",
            "Records in the drift window of a version (PSI is exported from drift_min_records on)",
            labels=["model", "version"],
        )
        for (model, version), window in sorted(self._windows.items()):
            if window is None:
                continue
            records.add_metric([model, str(version)], window.records)
            if window.records < self.min_records:
                continue
            for name, value in window.feature_psi().items():
                features.add_metric([model, str(version), name], value)
            for name, value in window.prediction_psi().items():
                predictions.add_metric([model, str(version), name], value)
        yield features
        yield predictions
        yield records
