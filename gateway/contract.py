"""Validate /predict records against a version's feature schema and turn them into tensors.

Validation is done here rather than by a generated pydantic model so that every rule the
schema declares (trained ranges with reject/flag policy, unknown categories with
reject/fallback, nullability) gives one precise error naming the field, and so the hot path
is a plain loop over dicts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.errors import InvalidInput, PayloadTooLarge
from modelspec import CategoricalFeature, ModelSchema, NumericFeature

# Unknown field names are echoed in the error only when they look like a field name; anything
# else (long, odd characters) is the client's payload and stays out of responses and logs.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Flag:
    """A value accepted but worth telling the client about."""

    record: int
    field: str
    reason: str  # out_of_range | unknown_category (mapped to the declared fallback)

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"record": self.record, "field": self.field, "reason": self.reason}


@dataclass
class Batch:
    """Validated records as the two model tensors, plus what was flagged."""

    numeric: np.ndarray
    categorical: np.ndarray
    flags: list[Flag] = field(default_factory=list)
    single: bool = False

    @property
    def rows(self) -> int:
        """Number of records."""
        return int(self.numeric.shape[0])


def records_of(body: Any, max_records: int) -> tuple[list[Any], bool]:
    """Return (records, was_single) from a body that is one record or a list of records."""
    if isinstance(body, dict):
        return [body], True
    if isinstance(body, list):
        if not body:
            raise InvalidInput("the list of records is empty; send at least one record", field="body")
        if len(body) > max_records:
            raise PayloadTooLarge(
                f"{len(body)} records in one request; the limit is {max_records}: split the request",
                field="body",
            )
        return body, False
    raise InvalidInput("the body must be a JSON object (one record) or a list of records", field="body")


def validate(schema: ModelSchema, body: Any, max_records: int) -> Batch:
    """Validate ``body`` against ``schema``; raise InvalidInput naming the first bad field."""
    records, single = records_of(body, max_records)
    numeric_features = schema.numeric
    categorical_features = schema.categorical
    known = {f.name for f in schema.features}
    numeric = np.empty((len(records), len(numeric_features)), dtype=np.float32)
    categorical = np.zeros((len(records), max(len(categorical_features), 1)), dtype=np.int64)
    flags: list[Flag] = []
    for i, record in enumerate(records):
        where = "" if single else f"[{i}]"
        if not isinstance(record, dict):
            raise InvalidInput(f"record{where} must be a JSON object of named fields", field=where or "body")
        if len(record) > len(known) or any(k not in known for k in record):
            extra = next(k for k in record if k not in known)
            shown = extra if _SAFE_NAME.fullmatch(extra) else "?"
            raise InvalidInput(
                "unknown field; the fields are listed in the OpenAPI schema at /docs and GET /models",
                field=_path(where, shown),
            )
        for j, f in enumerate(numeric_features):
            numeric[i, j] = _numeric(f, record, i, where, flags)
        for j, c in enumerate(categorical_features):
            categorical[i, j] = _categorical(c, record, i, where, flags)
    return Batch(numeric=numeric, categorical=categorical, flags=flags, single=single)


def _path(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _numeric(f: NumericFeature, record: dict[str, Any], i: int, where: str, flags: list[Flag]) -> float:
    path = _path(where, f.name)
    if f.name not in record:
        if f.nullable:
            return math.nan
        raise InvalidInput(f"field {f.name!r} is required", field=path)
    value = record[f.name]
    if value is None:
        if f.nullable:
            return math.nan
        raise InvalidInput(f"field {f.name!r} must not be null", field=path)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"field {f.name!r} must be a number", field=path)
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a double
        number = math.inf
    if not math.isfinite(number) or abs(number) > _FLOAT32_MAX:
        # the model's tensor is float32: a larger magnitude would reach it as infinity
        raise InvalidInput(f"field {f.name!r} must be a finite number (magnitude below 3.4e38)", field=path)
    if number < f.minimum or number > f.maximum:
        if f.range_policy == "reject":
            raise InvalidInput(
                f"field {f.name!r} is outside the trained range [{f.minimum:g}, {f.maximum:g}]", field=path
            )
        flags.append(Flag(i, f.name, "out_of_range"))
    return number


def _categorical(c: CategoricalFeature, record: dict[str, Any], i: int, where: str, flags: list[Flag]) -> int:
    path = _path(where, c.name)
    missing_index = len(c.categories)
    if c.name not in record or record[c.name] is None:
        if c.nullable:
            return missing_index
        reason = "is required" if c.name not in record else "must not be null"
        raise InvalidInput(f"field {c.name!r} {reason}", field=path)
    value = record[c.name]
    if not isinstance(value, str):
        raise InvalidInput(f"field {c.name!r} must be a string", field=path)
    index = c.index(value)
    if index is not None:
        return index
    if c.unknown_policy == "fallback" and c.fallback is not None:
        flags.append(Flag(i, c.name, "unknown_category"))
        return c.categories.index(c.fallback)
    shown = ", ".join(c.categories[:12]) + (", ..." if len(c.categories) > 12 else "")
    raise InvalidInput(f"field {c.name!r} must be one of: {shown}", field=path)


def request_body_schema(schema: ModelSchema | None, max_records: int) -> dict[str, Any]:
    """OpenAPI requestBody for /predict: one record or a list of up to ``max_records`` records."""
    record: dict[str, Any] = (
        schema.record_json_schema() if schema else {"type": "object", "description": "model not served yet"}
    )
    for prop in record.get("properties", {}).values():
        types = prop.get("type")
        if "number" in (types if isinstance(types, list) else [types]):
            # what a float32 tensor can hold; beyond it validation answers 422
            prop.setdefault("minimum", -_FLOAT32_MAX)
            prop.setdefault("maximum", _FLOAT32_MAX)
    example = schema.example_record() if schema else {}
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        record,
                        {"type": "array", "items": record, "minItems": 1, "maxItems": max_records},
                    ]
                },
                "examples": {
                    "one record": {"value": example},
                    "several records": {"value": [example, example]},
                },
            }
        },
    }
