"""A PyTorch regressor over tabular features, with its preprocessing inside the graph.

The module takes the two tensors of :mod:`modelspec.schema` (``numeric`` with NaN for missing
values, ``categorical`` as category indices), imputes, scales and embeds them itself, and
returns predictions in target units. Exporting it to ONNX therefore exports the whole model:
the gateway never re-implements preprocessing.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from modelspec import ModelSchema
from modelspec.tensors import encode_columns

log = logging.getLogger(__name__)


def encode(frame: pd.DataFrame, schema: ModelSchema) -> tuple[np.ndarray, np.ndarray]:
    """Turn a frame of business fields into the model's (numeric FP32, categorical INT64) arrays.

    Lenient, as training data needs: a numeric value that does not parse is missing (NaN), an
    unknown or non-string category is missing (:attr:`~modelspec.CategoricalFeature.missing_index`).
    Parsing is pandas' (``to_numeric``); the tensor layout is :func:`modelspec.tensors.encode_columns`.
    """
    columns: dict[str, Any] = {
        f.name: pd.to_numeric(frame[f.name], errors="coerce").to_numpy(dtype=np.float32, na_value=np.nan)
        for f in schema.numeric
    }
    columns.update((c.name, frame[c.name]) for c in schema.categorical)
    return encode_columns(columns, schema, len(frame))


class TabularRegressor(nn.Module):
    """MLP over standardised numerics, missing-value indicators and category embeddings."""

    num_mean: torch.Tensor
    num_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    def __init__(
        self,
        numeric_mean: np.ndarray,
        numeric_std: np.ndarray,
        cardinalities: list[int],
        target_mean: float,
        target_std: float,
        hidden: int = 64,
        embedding_dim: int = 4,
    ) -> None:
        super().__init__()
        n_num = len(numeric_mean)
        self.register_buffer("num_mean", torch.tensor(numeric_mean, dtype=torch.float32))
        self.register_buffer("num_std", torch.tensor(np.where(numeric_std > 0, numeric_std, 1.0), dtype=torch.float32))
        self.register_buffer("y_mean", torch.tensor(target_mean, dtype=torch.float32))
        self.register_buffer("y_std", torch.tensor(target_std if target_std > 0 else 1.0, dtype=torch.float32))
        # One extra row per embedding for "missing" (index == cardinality).
        self.embeddings = nn.ModuleList(nn.Embedding(c + 1, embedding_dim) for c in cardinalities)
        self.cardinalities = list(cardinalities)
        width = 2 * n_num + embedding_dim * len(cardinalities)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """Predict ``[batch, 1]`` targets from ``numeric`` ``[batch, n]`` and ``categorical`` ``[batch, m]``."""
        missing = torch.isnan(numeric)
        x = torch.where(missing, self.num_mean, numeric)
        x = (x - self.num_mean) / self.num_std
        parts = [x, missing.to(x.dtype)]
        for j, emb in enumerate(self.embeddings):
            idx = torch.clamp(categorical[:, j], 0, self.cardinalities[j])
            parts.append(emb(idx))
        out: torch.Tensor = self.mlp(torch.cat(parts, dim=1))
        return out * self.y_std + self.y_mean


@dataclass(frozen=True)
class TrainingResult:
    """A trained module and how it did on the held-out rows."""

    module: nn.Module
    metrics: dict[str, float]
    params: dict[str, str]
    train_index: np.ndarray
    test_index: np.ndarray


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R2 of ``y_pred`` against ``y_true``."""
    err = y_pred - y_true
    ss_tot = float(((y_true - y_true.mean()) ** 2).sum())
    return {
        "rmse": float(math.sqrt(float((err**2).mean()))),
        "mae": float(np.abs(err).mean()),
        "r2": 1.0 - float((err**2).sum()) / ss_tot if ss_tot > 0 else 0.0,
    }


def train_regressor(
    frame: pd.DataFrame,
    target: np.ndarray,
    schema: ModelSchema,
    *,
    epochs: int = 60,
    hidden: int = 64,
    learning_rate: float = 3e-3,
    batch_size: int = 128,
    test_fraction: float = 0.2,
    seed: int = 7,
    on_epoch: Callable[[int, int, float], None] | None = None,
) -> TrainingResult:
    """Train a :class:`TabularRegressor` on ``frame`` -> ``target`` with a seeded train/test split.

    Args:
        frame: business fields, one column per schema feature.
        target: the value to predict, one per row.
        schema: the feature schema (column order of the tensors).
        epochs: passes over the training rows.
        hidden: width of the hidden layers.
        learning_rate: Adam learning rate.
        batch_size: rows per optimisation step.
        test_fraction: share of rows held out for the metrics and the parity check.
        seed: seeds the split, the initialisation and the shuffling.
        on_epoch: called with (epoch, epochs, train loss) after each epoch, for progress.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frame))
    n_test = max(1, int(len(frame) * test_fraction))
    test_idx, train_idx = np.sort(order[:n_test]), np.sort(order[n_test:])

    numeric, categorical = encode(frame, schema)
    y = target.astype(np.float32).reshape(-1, 1)
    num_train = numeric[train_idx]
    module = TabularRegressor(
        numeric_mean=np.nan_to_num(np.nanmean(num_train, axis=0)),
        numeric_std=np.nan_to_num(np.nanstd(num_train, axis=0)),
        cardinalities=[len(c.categories) for c in schema.categorical],
        target_mean=float(y[train_idx].mean()),
        target_std=float(y[train_idx].std()),
        hidden=hidden,
    )
    opt = torch.optim.Adam(module.parameters(), lr=learning_rate)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    xn, xc, yt = (
        torch.from_numpy(num_train),
        torch.from_numpy(categorical[train_idx]),
        torch.from_numpy(y[train_idx]),
    )
    y_scale = float(module.y_std)
    started = time.monotonic()
    for epoch in range(1, epochs + 1):
        module.train()
        perm = torch.randperm(len(train_idx))
        total = 0.0
        for start in range(0, len(perm), batch_size):
            b = perm[start : start + batch_size]
            opt.zero_grad()
            # Loss on the standardised target keeps the step size independent of its units.
            loss = nn.functional.mse_loss(module(xn[b], xc[b]) / y_scale, yt[b] / y_scale)
            loss.backward()
            opt.step()
            total += loss.detach().item() * len(b)
        sched.step()
        if on_epoch:
            on_epoch(epoch, epochs, total / len(train_idx))
    module.eval()
    with torch.no_grad():
        pred = module(torch.from_numpy(numeric[test_idx]), torch.from_numpy(categorical[test_idx])).numpy()
    metrics = regression_metrics(y[test_idx, 0].astype(np.float64), pred[:, 0].astype(np.float64))
    metrics["train_seconds"] = time.monotonic() - started
    log.info("trained %d epochs in %.1f s: %s", epochs, metrics["train_seconds"], metrics)
    params = {
        "epochs": str(epochs),
        "hidden": str(hidden),
        "learning_rate": str(learning_rate),
        "batch_size": str(batch_size),
        "test_fraction": str(test_fraction),
        "seed": str(seed),
        "rows_train": str(len(train_idx)),
        "rows_test": str(len(test_idx)),
    }
    return TrainingResult(module=module, metrics=metrics, params=params, train_index=train_idx, test_index=test_idx)
