"""Feature schema: the business fields a model takes and how they become tensors.

A served model takes two tensors: ``numeric`` (FP32, ``[batch, n_numeric]``, NaN where a
nullable value is missing) and ``categorical`` (INT64, ``[batch, n_categorical]``, the index
of the category in :attr:`CategoricalFeature.categories`, :attr:`CategoricalFeature.missing_index`
(``len(categories)``) for a missing value). All imputation, scaling and embedding happen inside the
exported graph, so the gateway only maps names to columns; :mod:`modelspec.tensors` builds the
tensors from records, for every caller.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from modelspec.rows import CATEGORICAL_TENSOR, NUMERIC_TENSOR

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
"""Feature, output and model names: lower snake case, so they are safe in URLs, paths and labels."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NumericFeature(_Frozen):
    """A real-valued input.

    ``minimum``/``maximum`` are the range seen in training; what happens to a value outside
    it is ``range_policy`` (``reject``: 422; ``flag``: accepted and reported in the response).
    """

    kind: Literal["numeric"] = "numeric"
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    description: str = ""
    unit: str | None = None
    minimum: float
    maximum: float
    nullable: bool = False
    range_policy: Literal["reject", "flag"] = "flag"
    example: float

    @model_validator(mode="after")
    def _check_range(self) -> NumericFeature:
        if not (math.isfinite(self.minimum) and math.isfinite(self.maximum)):
            raise ValueError(f"feature {self.name!r}: minimum and maximum must be finite")
        if self.minimum > self.maximum:
            raise ValueError(f"feature {self.name!r}: minimum {self.minimum} > maximum {self.maximum}")
        return self


class CategoricalFeature(_Frozen):
    """A value from a closed set of strings.

    An unknown value is rejected, or mapped to ``fallback`` when ``unknown_policy`` is
    ``fallback``.
    """

    kind: Literal["categorical"] = "categorical"
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    description: str = ""
    categories: Annotated[list[str], Field(min_length=1)]
    nullable: bool = False
    unknown_policy: Literal["reject", "fallback"] = "reject"
    fallback: str | None = None
    example: str

    @model_validator(mode="after")
    def _check_categories(self) -> CategoricalFeature:
        if len(set(self.categories)) != len(self.categories):
            raise ValueError(f"feature {self.name!r}: categories repeat")
        if self.unknown_policy == "fallback" and self.fallback not in self.categories:
            raise ValueError(f"feature {self.name!r}: fallback must be one of the categories")
        if self.example not in self.categories:
            raise ValueError(f"feature {self.name!r}: example must be one of the categories")
        return self

    @property
    def missing_index(self) -> int:
        """The tensor index of a missing value (null, absent, or unknown where the encoding is lenient).

        One past the last category: the exported graph keeps an extra embedding row for it.
        """
        return len(self.categories)

    def index(self, value: str) -> int | None:
        """Return the tensor index of ``value``, or None when it is not a known category."""
        try:
            return self.categories.index(value)
        except ValueError:
            return None


Feature = Annotated[NumericFeature | CategoricalFeature, Field(discriminator="kind")]


class OutputSpec(_Frozen):
    """One model output: a tensor of shape ``[batch, 1]`` returned under ``name``."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    description: str = ""
    unit: str | None = None


class QualityMetric(_Frozen):
    """The metric a version is trained, gated and monitored on."""

    name: Literal["rmse", "mae"] = "rmse"
    greater_is_better: bool = False


class ModelSchema(_Frozen):
    """Everything a client-facing contract needs to know about one model version."""

    schema_version: Literal[1] = 1
    model_name: Annotated[str, Field(pattern=NAME_PATTERN)]
    description: str = ""
    features: Annotated[list[Feature], Field(min_length=1)]
    outputs: Annotated[list[OutputSpec], Field(min_length=1)]
    quality_metric: QualityMetric = QualityMetric()
    numeric_tensor: str = NUMERIC_TENSOR
    categorical_tensor: str = CATEGORICAL_TENSOR

    @model_validator(mode="after")
    def _check_names(self) -> ModelSchema:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError("feature names repeat")
        return self

    @property
    def numeric(self) -> list[NumericFeature]:
        """Numeric features in tensor column order."""
        return [f for f in self.features if isinstance(f, NumericFeature)]

    @property
    def categorical(self) -> list[CategoricalFeature]:
        """Categorical features in tensor column order."""
        return [f for f in self.features if isinstance(f, CategoricalFeature)]

    def feature(self, name: str) -> NumericFeature | CategoricalFeature:
        """Return the feature called ``name`` (KeyError when there is none)."""
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def example_record(self) -> dict[str, Any]:
        """A valid record built from each feature's example value."""
        return {f.name: f.example for f in self.features}

    def record_json_schema(self) -> dict[str, Any]:
        """JSON Schema (OpenAPI 3.1 dialect) of one input record."""
        props: dict[str, Any] = {}
        for f in self.features:
            prop: dict[str, Any]
            if isinstance(f, NumericFeature):
                prop = {"type": "number", "description": _describe(f.description, f.unit)}
                prop["x-trained-range"] = [f.minimum, f.maximum]
                prop["x-range-policy"] = f.range_policy
                if f.range_policy == "reject":
                    prop["minimum"], prop["maximum"] = f.minimum, f.maximum
            else:
                prop = {"type": "string", "description": f.description}
                if f.unknown_policy == "reject":
                    prop["enum"] = list(f.categories)
                else:
                    prop["examples"] = list(f.categories)
                    prop["x-unknown-maps-to"] = f.fallback
            if f.nullable:
                prop["type"] = [prop["type"], "null"]
                if "enum" in prop:
                    prop["enum"] = [*prop["enum"], None]
            prop["example"] = f.example
            props[f.name] = prop
        return {
            "type": "object",
            "title": f"{self.model_name} record",
            "properties": props,
            "required": [f.name for f in self.features if not f.nullable],
            "additionalProperties": False,
        }


def _describe(description: str, unit: str | None) -> str:
    return f"{description} [{unit}]" if unit else description


def breaking_changes(live: ModelSchema, candidate: ModelSchema) -> list[str]:
    """List the ways ``candidate`` would break clients of ``live`` (empty when compatible).

    Clients may keep sending what ``live`` accepted and keep reading what it returned: a
    candidate may add nullable inputs, widen ranges, add categories and add outputs, but
    not drop or retype a field, make it required, narrow what it accepts, or drop an output.
    """
    problems: list[str] = []
    cand = {f.name: f for f in candidate.features}
    for old in live.features:
        new = cand.get(old.name)
        if new is None:
            problems.append(f"input field {old.name!r} was removed")
            continue
        if new.kind != old.kind:
            problems.append(f"input field {old.name!r} changed type from {old.kind} to {new.kind}")
            continue
        if old.nullable and not new.nullable:
            problems.append(f"input field {old.name!r} is no longer nullable")
        if isinstance(old, NumericFeature) and isinstance(new, NumericFeature):
            problems += _numeric_narrowing(old, new)
        elif isinstance(old, CategoricalFeature) and isinstance(new, CategoricalFeature):
            problems += _categorical_narrowing(old, new)
    live_names = {f.name for f in live.features}
    for name, f in cand.items():
        if name not in live_names and not f.nullable:
            problems.append(f"new input field {name!r} is required")
    cand_outputs = {o.name for o in candidate.outputs}
    for out in live.outputs:
        if out.name not in cand_outputs:
            problems.append(f"output {out.name!r} was removed")
    return problems


def _numeric_narrowing(old: NumericFeature, new: NumericFeature) -> list[str]:
    """How ``new`` refuses numbers ``old`` accepted: a ``flag`` policy accepts every number, ``reject`` its range."""
    if new.range_policy != "reject":
        return []
    if old.range_policy == "flag":
        return [
            f"input field {old.name!r} rejects values the live version accepts: its range policy changed from "
            f"flag to reject (values outside [{new.minimum:g}, {new.maximum:g}] now get 422)"
        ]
    if new.minimum > old.minimum or new.maximum < old.maximum:
        return [f"input field {old.name!r} rejects values the live version accepts: its range is narrower"]
    return []


def _categorical_narrowing(old: CategoricalFeature, new: CategoricalFeature) -> list[str]:
    """How ``new`` refuses strings ``old`` accepted: a ``fallback`` policy accepts every string."""
    problems: list[str] = []
    missing = [c for c in old.categories if c not in new.categories]
    if missing:
        problems.append(f"input field {old.name!r} lost categories {missing}")
    if old.unknown_policy == "fallback" and new.unknown_policy == "reject":
        problems.append(
            f"input field {old.name!r} rejects values the live version accepts: its unknown policy changed from "
            "fallback to reject (unknown categories now get 422)"
        )
    return problems
