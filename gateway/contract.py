"""The /predict contract over HTTP: validation errors as 422/413, and the OpenAPI request body.

Records become tensors in :mod:`modelspec.tensors` (every rule of the schema, two validation
paths with identical results, the tensor layout); this module only maps its errors onto the
gateway's: :class:`~modelspec.tensors.InvalidRecord` -> :class:`~gateway.errors.InvalidInput`
(422), :class:`~modelspec.tensors.TooManyRecords` -> :class:`~gateway.errors.PayloadTooLarge`
(413), message and field unchanged. :class:`Batch` is re-exported for the gateway's data plane.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidInput, PayloadTooLarge
from modelspec import ModelSchema, tensors
from modelspec.tensors import FLOAT32_MAX, Batch, Flag, InvalidRecord, TooManyRecords

__all__ = ["Batch", "Flag", "request_body_schema", "validate"]


def validate(schema: ModelSchema, body: Any, max_records: int) -> Batch:
    """Validate ``body`` (one record or a list) against ``schema`` into the model's tensors.

    Raises:
        InvalidInput: naming the first bad field (422).
        PayloadTooLarge: more than ``max_records`` records (413).
    """
    try:
        return tensors.validate(schema, body, max_records)
    except TooManyRecords as exc:
        raise PayloadTooLarge(exc.message, field=exc.field) from None
    except InvalidRecord as exc:
        raise InvalidInput(exc.message, field=exc.field) from None


def request_body_schema(schema: ModelSchema | None, max_records: int) -> dict[str, Any]:
    """OpenAPI requestBody for /predict: one record or a list of up to ``max_records`` records."""
    record: dict[str, Any] = (
        schema.record_json_schema() if schema else {"type": "object", "description": "model not served yet"}
    )
    for prop in record.get("properties", {}).values():
        types = prop.get("type")
        if "number" in (types if isinstance(types, list) else [types]):
            # what a float32 tensor can hold; beyond it validation answers 422
            prop.setdefault("minimum", -FLOAT32_MAX)
            prop.setdefault("maximum", FLOAT32_MAX)
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
