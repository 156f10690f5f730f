"""Bring your own model: register any PyTorch module over tabular features.

Example::

    from registry.byo import infer_schema, register_model

    schema = infer_schema(holdout, name="chiller_kw", target="power_kw")   # edit it if needed
    version = register_model(my_module, holdout, name="chiller_kw", target="power_kw", schema=schema)

The module either takes ``(numeric, categorical)`` tensors as described in
:mod:`modelspec.schema` (FP32 ``[batch, n_numeric]`` with NaN for missing values, INT64
``[batch, n_categorical]`` category indices) or, for models without categorical features, one
FP32 tensor ``[batch, n_numeric]``. It returns ``[batch, 1]``. The sample should be held-out rows
with the target column: it gives the schema, the drift profile, the quality metrics and the rows
the ONNX parity check runs on.
"""

from __future__ import annotations

import hashlib
import inspect
import logging

import numpy as np
import pandas as pd
import torch
from torch import nn

from deployer.settings import RegistrySettings, get_registry_settings
from modelspec import CategoricalFeature, ModelSchema, NumericFeature, OutputSpec, QualityMetric
from registry.register import RegisteredVersion, register_trained
from registry.tabular import TrainingResult, encode, regression_metrics

log = logging.getLogger(__name__)


def _snake(name: str) -> str:
    out = "".join(c.lower() if c.isalnum() else "_" for c in str(name)).strip("_")
    return out if out and out[0].isalpha() else f"f_{out}"


def infer_schema(
    sample: pd.DataFrame,
    *,
    name: str,
    target: str,
    max_categories: int = 64,
    description: str = "",
) -> ModelSchema:
    """Infer a feature schema from ``sample``: numbers are numeric, strings categorical.

    Ranges come from the sample (values outside are flagged, not rejected); a column with any
    missing value is nullable; a categorical column lists the categories seen. Column names
    must already be lower snake case (they become the public field names).

    Raises:
        ValueError: a column cannot be typed, has too many categories, or has an unsafe name.
    """
    features: list[NumericFeature | CategoricalFeature] = []
    for col in sample.columns:
        if col == target:
            continue
        if _snake(col) != col:
            raise ValueError(f"column {col!r}: field names must be lower snake case, e.g. {_snake(col)!r}")
        series = sample[col]
        nullable = bool(series.isna().any())
        present = series.dropna()
        if present.empty:
            raise ValueError(f"column {col!r} has no values to infer a type from")
        if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
            values = present.astype(float)
            features.append(
                NumericFeature(
                    name=col,
                    minimum=float(values.min()),
                    maximum=float(values.max()),
                    nullable=nullable,
                    example=float(values.median()),
                )
            )
        else:
            categories = sorted({str(v) for v in present})
            if len(categories) > max_categories:
                raise ValueError(
                    f"column {col!r} has {len(categories)} distinct values (> {max_categories}); "
                    "encode it numerically or raise max_categories"
                )
            features.append(
                CategoricalFeature(
                    name=col,
                    categories=categories,
                    nullable=nullable,
                    example=str(present.mode().iloc[0]),
                )
            )
    # Numeric columns first, then categorical: the tensor layout the module sees.
    features.sort(key=lambda f: f.kind != "numeric")
    return ModelSchema(
        model_name=name,
        description=description,
        features=features,
        outputs=[OutputSpec(name=_snake(target))],
        quality_metric=QualityMetric(name="rmse", greater_is_better=False),
    )


class _NumericOnly(nn.Module):
    """Adapts a module that takes one numeric tensor to the two-tensor signature."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """Ignore ``categorical`` (the schema has none) and call the wrapped module."""
        out: torch.Tensor = self.inner(numeric)
        return out


def _adapt(module: nn.Module, schema: ModelSchema) -> nn.Module:
    params = [
        p
        for p in inspect.signature(module.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(params) >= 2:
        return module
    if schema.categorical:
        raise ValueError(
            "the module takes one tensor, but the schema has categorical features: "
            "make forward take (numeric, categorical)"
        )
    return _NumericOnly(module)


def register_model(
    module: nn.Module,
    sample: pd.DataFrame,
    *,
    name: str,
    target: str,
    schema: ModelSchema | None = None,
    params: dict[str, str] | None = None,
    description: str = "",
    settings: RegistrySettings | None = None,
) -> RegisteredVersion:
    """Register a trained ``module`` as a new version of model ``name``.

    The version is exported to ONNX and registered only if its parity check passes. No alias is
    moved: promote it in the MLflow UI or with ``modelops promote``.

    Args:
        module: the trained PyTorch module (see the module docstring for its signature).
        sample: held-out rows with the feature columns and ``target`` (at least 37 rows).
        name: registered model name (lower snake case).
        target: the target column of ``sample``.
        schema: the feature schema; inferred from ``sample`` when omitted.
        params: parameters to log on the MLflow run.
        description: registered model description.
        settings: registry settings; the environment's by default.
    """
    settings = settings or get_registry_settings()
    if target not in sample.columns:
        raise ValueError(f"the sample has no target column {target!r}")
    if len(sample) < 37:
        raise ValueError("the sample needs at least 37 rows for the parity check")
    schema = schema or infer_schema(sample, name=name, target=target, description=description)
    if schema.model_name != name:
        raise ValueError(f"the schema is for {schema.model_name!r}, not {name!r}")
    served = _adapt(module, schema).eval()
    frame = sample.drop(columns=[target]).reset_index(drop=True)
    y = sample[target].to_numpy(dtype=np.float64)
    numeric, categorical = encode(frame, schema)
    with torch.no_grad():
        pred = served(torch.from_numpy(numeric), torch.from_numpy(categorical)).numpy().reshape(-1)
    metrics = regression_metrics(y, pred.astype(np.float64))
    everything = np.arange(len(frame))
    result = TrainingResult(
        module=served,
        metrics=metrics,
        params={"source": "register_model", **(params or {})},
        train_index=everything,
        test_index=everything,
    )
    digest = hashlib.sha256(pd.util.hash_pandas_object(sample, index=False).to_numpy().tobytes()).hexdigest()
    log.info("registering %s: sample rmse %.4g over %d rows", name, metrics["rmse"], len(frame))
    return register_trained(
        settings,
        schema,
        frame,
        y,
        result,
        data_hash=f"sha256:{digest}",
        data_source="register_model sample",
        description=description,
    )
