"""Request payloads generated from the served version's schema, encoded for each target.

Records come from the public contract: the record JSON Schema that ``GET /models`` publishes
(:meth:`modelspec.ModelSchema.record_json_schema`). Numbers are drawn inside their trained range
(``x-trained-range``), categories from their list, and nullable fields are left out now and then,
so every record is valid and none is flagged. The same records are then encoded for every target
a comparison measures:

- the gateway: JSON records (one object, or a list when a request carries several);
- Triton directly: the KServe v2 infer request with the binary tensor extension, the cheapest
  way to send tensors over HTTP;
- ``mlflow models serve``: ``{"inputs": {tensor: [[...]]}}`` for the logged ONNX pyfunc.

Encoding to tensors uses :class:`modelspec.ModelSchema` (the on-disk format the registry and
gateway share), so the benchmark never imports the gateway.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from modelspec import ModelSchema
from modelspec.tensors import encode_records, feed
from tritonio.codec import HEADER_LENGTH, datatype_of, decode_response, encode_request

NULL_RATIO = 0.05
"""Share of nullable values sent as missing."""
IDENTITY = {"Accept-Encoding": "identity"}
"""Every request refuses compressed answers: Locust asks for gzip by default, and Triton then spends
CPU compressing each response, which the gateway's own calls to Triton never ask for."""


class PayloadError(ValueError):
    """The schema cannot be turned into records (a field type the generator does not know)."""


@dataclass(frozen=True)
class FieldSpec:
    """One record field as the public JSON Schema describes it."""

    name: str
    kind: Literal["number", "string"]
    nullable: bool
    minimum: float = 0.0
    maximum: float = 0.0
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class PreparedRequest:
    """One HTTP request body with its headers, ready to send as it is."""

    body: bytes
    headers: dict[str, str]
    rows: int


def fields_from_record_schema(schema: dict[str, Any]) -> list[FieldSpec]:
    """Read the fields of a record JSON Schema (``GET /models`` -> ``fields``).

    Raises:
        PayloadError: a property is neither a number nor a string.
    """
    fields: list[FieldSpec] = []
    for name, prop in schema.get("properties", {}).items():
        types = prop.get("type")
        type_list = types if isinstance(types, list) else [types]
        nullable = "null" in type_list
        if "number" in type_list or "integer" in type_list:
            low, high = prop.get("x-trained-range") or [prop.get("minimum", 0.0), prop.get("maximum", 1.0)]
            fields.append(FieldSpec(name, "number", nullable, minimum=float(low), maximum=float(high)))
        elif "string" in type_list:
            values = [v for v in (prop.get("enum") or prop.get("examples") or []) if v is not None]
            if not values:
                raise PayloadError(f"field {name!r}: a string field without enum or examples")
            fields.append(FieldSpec(name, "string", nullable, categories=tuple(values)))
        else:
            raise PayloadError(f"field {name!r}: type {types!r} is not supported by the payload generator")
    if not fields:
        raise PayloadError("the record schema has no properties")
    return fields


def generate_records(fields: Sequence[FieldSpec], count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` valid records, reproducible for a given ``seed``."""
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    for _ in range(count):
        record: dict[str, Any] = {}
        for f in fields:
            if f.nullable and rng.random() < NULL_RATIO:
                record[f.name] = None
            elif f.kind == "number":
                record[f.name] = _round(rng.uniform(f.minimum, f.maximum))
            else:
                record[f.name] = rng.choice(f.categories)
        records.append(record)
    return records


def _round(value: float) -> float:
    """Four significant digits: the size of real sensor values in JSON."""
    if value == 0:
        return 0.0
    return round(value, max(0, 3 - math.floor(math.log10(abs(value)))))


def chunk(records: Sequence[dict[str, Any]], per_request: int) -> list[list[dict[str, Any]]]:
    """Split records into requests of ``per_request`` records (the last partial one dropped)."""
    if per_request < 1:
        raise ValueError("records per request must be >= 1")
    usable = len(records) - len(records) % per_request
    return [list(records[i : i + per_request]) for i in range(0, usable, per_request)]


def encode_tensors(records: Sequence[dict[str, Any]], schema: ModelSchema) -> tuple[np.ndarray, np.ndarray]:
    """The model's two input tensors for ``records``: numeric FP32 (NaN = missing), categorical INT64.

    :func:`modelspec.tensors.encode_records`: for the valid records generated here, the tensors the
    gateway builds from them (a missing category gets index ``len(categories)``).
    """
    return encode_records(records, schema)


def gateway_request(records: Sequence[dict[str, Any]]) -> PreparedRequest:
    """``POST /predict`` body: one object for one record, else a list."""
    body = orjson.dumps(records[0] if len(records) == 1 else list(records))
    return PreparedRequest(body, {"Content-Type": "application/json", **IDENTITY}, len(records))


def triton_binary_request(
    schema: ModelSchema, numeric: np.ndarray, categorical: np.ndarray, *, binary_output: bool = True
) -> PreparedRequest:
    """KServe v2 infer body with the binary tensor extension (JSON header, then raw tensor bytes)."""
    request = encode_request(
        feed(schema, numeric, categorical),
        [o.name for o in schema.outputs],
        binary_outputs=binary_output,
    )
    headers = {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(request.header_length),
        **IDENTITY,
    }
    return PreparedRequest(request.body(), headers, int(numeric.shape[0]))


def mlflow_request(schema: ModelSchema, numeric: np.ndarray, categorical: np.ndarray) -> PreparedRequest:
    """``POST /invocations`` body of the ONNX pyfunc: named tensors as nested lists (NaN written as NaN)."""
    inputs = feed(schema, numeric.tolist(), categorical.tolist())
    # The MLflow scoring server parses with Python's json, which reads the NaN literal; orjson cannot write it.
    body = json.dumps({"inputs": inputs}, allow_nan=True, separators=(",", ":")).encode()
    return PreparedRequest(body, {"Content-Type": "application/json", **IDENTITY}, int(numeric.shape[0]))


def decode_triton_binary_response(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    """FP32 outputs of a Triton infer response (binary extension or plain JSON), flattened.

    Raises:
        PayloadError: a binary output is not FP32.
        tritonio.errors.BadResponse: the body is not an infer response.
    """
    arrays = decode_response(body, header_length)
    if header_length is None:
        return {name: array.astype(np.float32).reshape(-1) for name, array in arrays.items()}
    for name, array in arrays.items():
        if array.dtype != np.float32:
            raise PayloadError(f"output {name!r} is {datatype_of(array.dtype)}; the benchmark reads FP32")
    return {name: array.reshape(-1).copy() for name, array in arrays.items()}
