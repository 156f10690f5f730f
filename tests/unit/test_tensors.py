"""Records -> tensors has one definition (modelspec.tensors) that every former encoder now calls.

The gateway's strict validation, the training frame encoder (``registry.tabular.encode``) and the
benchmarks' record encoder (``benchmarks.payloads.encode_tensors``) give the same tensors, bit for
bit, on the same valid records; the lenient encoders turn what validation would reject into
missing values; reference rows and feed dicts follow the same layout.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from benchmarks.payloads import encode_tensors, fields_from_record_schema, generate_records
from gateway.contract import validate as gateway_validate
from gateway.errors import InvalidInput, PayloadTooLarge
from gateway.testing import demo_schema, training_records
from modelspec import CategoricalFeature, ModelSchema, NumericFeature, OutputSpec, Reference
from modelspec.tensors import (
    Batch,
    InvalidRecord,
    TooManyRecords,
    encode_columns,
    encode_records,
    feed,
    records_of,
    reference_tensors,
    validate,
)
from registry.tabular import encode as encode_frame

SNAPSHOT_SCHEMA = Path(__file__).resolve().parents[1] / "snapshots" / "solar_ghi.schema.json"


def _bits(numeric: np.ndarray, categorical: np.ndarray) -> tuple[Any, ...]:
    return (
        numeric.dtype.str,
        numeric.shape,
        numeric.tobytes(),
        categorical.dtype.str,
        categorical.shape,
        categorical.tobytes(),
    )


def _cases() -> list[tuple[str, ModelSchema, list[dict[str, Any]]]]:
    solar = ModelSchema.model_validate_json(SNAPSHOT_SCHEMA.read_text())
    solar_records = generate_records(fields_from_record_schema(solar.record_json_schema()), 200, seed=5)
    return [("demo", demo_schema(), training_records(200)), ("solar_ghi", solar, solar_records)]


@pytest.mark.parametrize(("name", "schema", "records"), _cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_the_three_former_encoders_agree_with_validation_on_the_same_records(
    name: str, schema: ModelSchema, records: list[dict[str, Any]]
) -> None:
    assert any(v is None for r in records for v in r.values()), "the records exercise missing values"
    for rows in (records[:1], records[:3], records):  # the per-record and the column-wise path
        batch = validate(schema, rows if len(rows) > 1 else rows[0], len(rows))
        assert not batch.flags
        expected = _bits(batch.numeric, batch.categorical)
        assert _bits(*gateway_validate(schema, rows, len(rows)).feed(schema).values()) == expected
        assert _bits(*encode_records(rows, schema)) == expected
        assert _bits(*encode_tensors(rows, schema)) == expected
        assert _bits(*encode_frame(pd.DataFrame.from_records(rows), schema)) == expected


SCHEMA = ModelSchema(
    model_name="m",
    features=[
        NumericFeature(name="x", minimum=0, maximum=1, example=0.5),
        CategoricalFeature(name="c", categories=["a", "b", "c"], example="a"),
        NumericFeature(name="z", minimum=0, maximum=1, nullable=True, example=0.5),
        CategoricalFeature(name="d", categories=["u", "v"], nullable=True, example="u"),
    ],
    outputs=[OutputSpec(name="y")],
)


def test_missing_index_is_one_past_the_last_category() -> None:
    assert [c.missing_index for c in SCHEMA.categorical] == [3, 2]
    batch = validate(SCHEMA, [{"x": 0.1, "c": "b", "d": None}, {"x": 0.2, "c": "c"}], 2)
    assert batch.categorical.tolist() == [[1, 2], [2, 2]]


def test_the_lenient_encoders_make_what_validation_rejects_missing() -> None:
    records: list[dict[str, Any]] = [
        {"x": 5.0, "c": "zz", "z": None, "d": 3},  # out of range, unknown, null, not a string
        {"x": None, "c": None},  # a required value null, the rest absent
        {"x": 1, "c": "a", "z": 0.25, "d": "v"},
    ]
    numeric, categorical = encode_records(records, SCHEMA)
    assert numeric.dtype == np.float32 and categorical.dtype == np.int64
    assert numeric[0, 0] == 5.0 and math.isnan(numeric[0, 1]) and math.isnan(numeric[1, 0])
    assert numeric[2].tolist() == [1.0, 0.25]
    assert categorical.tolist() == [[3, 2], [3, 2], [0, 1]]
    columns = {"x": np.array([0.5, np.nan]), "z": [None, 2], "c": pd.Series(["b", pd.NA]), "d": ("v", "w")}
    numeric, categorical = encode_columns(columns, SCHEMA, 2)
    assert np.isnan(numeric).tolist() == [[False, True], [True, False]]
    assert categorical.tolist() == [[1, 1], [3, 2]]


def test_a_schema_without_categorical_features_still_has_a_categorical_column() -> None:
    schema = ModelSchema(
        model_name="n",
        features=[NumericFeature(name="x", minimum=0, maximum=1, example=0)],
        outputs=[OutputSpec(name="y")],
    )
    numeric, categorical = encode_records([{"x": 0.5}, {"x": None}], schema)
    assert numeric.shape == (2, 1) and categorical.shape == (2, 1) and not categorical.any()
    assert _bits(numeric[:1], categorical[:1]) == _bits(*validate(schema, {"x": 0.5}, 1).feed(schema).values())


def test_reference_rows_become_the_tensors_they_were_taken_from() -> None:
    numeric = np.array([[0.5, np.nan], [0.25, 1.0]], dtype=np.float32)
    categorical = np.array([[2, 0], [3, 1]], dtype=np.int64)
    reference = Reference(
        numeric=[[None if np.isnan(v) else float(v) for v in row] for row in numeric],  # as the export writes it
        categorical=categorical.tolist(),
        outputs={"y": [1.0, 2.0]},
        tolerance=1e-4,
    )
    assert _bits(*reference_tensors(reference)) == _bits(numeric, categorical)


def test_feed_names_the_tensors_as_the_schema_does() -> None:
    schema = SCHEMA.model_copy(update={"numeric_tensor": "num_in", "categorical_tensor": "cat_in"})
    batch = validate(schema, [{"x": k / 10, "c": "a"} for k in range(6)], 6)
    assert isinstance(batch, Batch) and batch.rows == 6
    whole = batch.feed(schema)
    assert list(whole) == ["num_in", "cat_in"]
    assert whole["num_in"] is batch.numeric and whole["cat_in"] is batch.categorical
    part = batch.feed(schema, slice(4, 8))
    assert part["num_in"].shape == (2, 2) and part["cat_in"].shape == (2, 2)
    assert part["num_in"][:, 0].tolist() == pytest.approx([0.4, 0.5])
    assert feed(schema, batch.numeric, batch.categorical) == whole


def test_modelspec_errors_carry_message_and_field_and_the_gateway_maps_them() -> None:
    with pytest.raises(TooManyRecords) as too_many:
        records_of([{}] * 3, 2)
    assert (too_many.value.message, too_many.value.field) == (
        "3 records in one request; the limit is 2: split the request",
        "body",
    )
    with pytest.raises(InvalidRecord, match="empty") as empty:
        records_of([], 2)
    assert empty.value.field == "body"
    with pytest.raises(InvalidRecord) as bad:
        validate(SCHEMA, [{"x": 0.5, "c": "a"}, {"x": "1", "c": "a"}], 2)
    assert (bad.value.message, bad.value.field) == ("field 'x' must be a number", "[1].x")
    assert isinstance(bad.value, ValueError)
    with pytest.raises(PayloadTooLarge) as large:
        gateway_validate(SCHEMA, [{}] * 3, 2)
    assert (large.value.message, large.value.field, large.value.status_code) == (too_many.value.message, "body", 413)
    with pytest.raises(InvalidInput) as invalid:
        gateway_validate(SCHEMA, [{"x": 0.5, "c": "a"}, {"x": "1", "c": "a"}], 2)
    assert (invalid.value.message, invalid.value.field, invalid.value.status_code) == (
        bad.value.message,
        "[1].x",
        422,
    )
