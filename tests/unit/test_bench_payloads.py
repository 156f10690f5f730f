"""Payloads of the benchmarks: generated from the public record schema, encoded per target."""

from __future__ import annotations

import json
import math

import jsonschema
import numpy as np
import pytest

from benchmarks.payloads import (
    PayloadError,
    chunk,
    decode_triton_binary_response,
    encode_tensors,
    fields_from_record_schema,
    gateway_request,
    generate_records,
    mlflow_request,
    triton_binary_request,
)
from modelspec import CategoricalFeature, ModelSchema, NumericFeature, OutputSpec


@pytest.fixture
def schema() -> ModelSchema:
    return ModelSchema(
        model_name="bench_model",
        features=[
            NumericFeature(name="temp_c", minimum=-20, maximum=40, example=10),
            NumericFeature(name="ceiling_m", minimum=0, maximum=20000, nullable=True, example=3000),
            NumericFeature(name="humidity", minimum=0, maximum=100, range_policy="reject", example=50),
            CategoricalFeature(name="sector", categories=["N", "E", "S", "W"], example="S"),
            CategoricalFeature(
                name="sky",
                categories=["clear", "cloudy", "other"],
                unknown_policy="fallback",
                fallback="other",
                nullable=True,
                example="clear",
            ),
        ],
        outputs=[OutputSpec(name="y")],
    )


def test_fields_follow_the_public_record_schema(schema: ModelSchema) -> None:
    fields = {f.name: f for f in fields_from_record_schema(schema.record_json_schema())}
    assert list(fields) == ["temp_c", "ceiling_m", "humidity", "sector", "sky"]
    assert (fields["temp_c"].minimum, fields["temp_c"].maximum) == (-20, 40)
    assert fields["ceiling_m"].nullable and not fields["temp_c"].nullable
    assert fields["sector"].categories == ("N", "E", "S", "W")
    assert fields["sky"].categories == ("clear", "cloudy", "other") and fields["sky"].nullable


def test_generated_records_are_valid_reproducible_and_in_range(schema: ModelSchema) -> None:
    record_schema = schema.record_json_schema()
    fields = fields_from_record_schema(record_schema)
    records = generate_records(fields, 400, seed=3)
    assert records == generate_records(fields, 400, seed=3)
    assert records != generate_records(fields, 400, seed=4)
    for record in records:
        jsonschema.validate(record, record_schema)
        if record["ceiling_m"] is not None:
            assert 0 <= record["ceiling_m"] <= 20000
        assert -20 <= record["temp_c"] <= 40
    assert any(r["ceiling_m"] is None for r in records), "nullable fields are sometimes missing"
    assert all(r["temp_c"] is not None for r in records), "required fields never are"


def test_an_unsupported_field_type_is_named() -> None:
    with pytest.raises(PayloadError, match="flag"):
        fields_from_record_schema({"properties": {"flag": {"type": "boolean"}}})


def test_tensors_match_the_schema_layout(schema: ModelSchema) -> None:
    records = [
        {"temp_c": 1.5, "ceiling_m": None, "humidity": 20, "sector": "W", "sky": None},
        {"temp_c": -3, "ceiling_m": 100, "humidity": 99, "sector": "N", "sky": "cloudy"},
    ]
    numeric, categorical = encode_tensors(records, schema)
    assert numeric.dtype == np.float32 and numeric.shape == (2, 3)
    assert categorical.dtype == np.int64 and categorical.shape == (2, 2)
    assert math.isnan(numeric[0, 1]) and numeric[1, 1] == 100
    assert categorical.tolist() == [[3, 3], [0, 1]]  # a missing category is len(categories)


def test_gateway_body_is_one_object_or_a_list(schema: ModelSchema) -> None:
    records = generate_records(fields_from_record_schema(schema.record_json_schema()), 8)
    one = gateway_request(records[:1])
    assert isinstance(json.loads(one.body), dict) and one.rows == 1
    many = gateway_request(records[:5])
    assert len(json.loads(many.body)) == 5 and many.rows == 5
    assert [len(c) for c in chunk(records, 3)] == [3, 3]


def test_triton_binary_request_round_trips(schema: ModelSchema) -> None:
    numeric = np.array([[1.0, np.nan, 2.0], [3.0, 4.0, 5.0]], dtype=np.float32)
    categorical = np.array([[0, 1], [2, 3]], dtype=np.int64)
    req = triton_binary_request(schema, numeric, categorical)
    head_len = int(req.headers["Inference-Header-Content-Length"])
    header = json.loads(req.body[:head_len])
    assert [i["name"] for i in header["inputs"]] == ["numeric", "categorical"]
    assert header["inputs"][0]["shape"] == [2, 3] and header["inputs"][1]["datatype"] == "INT64"
    raw = req.body[head_len:]
    got = np.frombuffer(raw[: numeric.nbytes], dtype="<f4").reshape(2, 3)
    np.testing.assert_array_equal(got, numeric)
    np.testing.assert_array_equal(np.frombuffer(raw[numeric.nbytes :], dtype="<i8").reshape(2, 2), categorical)

    out = np.array([7.5, -1.25], dtype="<f4")
    response_head = json.dumps(
        {"outputs": [{"name": "y", "datatype": "FP32", "shape": [2, 1], "parameters": {"binary_data_size": 8}}]}
    ).encode()
    decoded = decode_triton_binary_response(response_head + out.tobytes(), len(response_head))
    np.testing.assert_array_equal(decoded["y"], out)
    assert decoded["y"].flags.writeable, "the benchmark gets its own copy"
    assert header["outputs"] == [{"name": o.name, "parameters": {"binary_data": True}} for o in schema.outputs]
    assert req.headers["Accept-Encoding"] == "identity" and req.rows == 2


def test_triton_answers_as_json_and_other_datatypes(schema: ModelSchema) -> None:
    req = triton_binary_request(schema, np.zeros((1, 3), np.float32), np.zeros((1, 2), np.int64), binary_output=False)
    header = json.loads(req.body[: int(req.headers["Inference-Header-Content-Length"])])
    assert {o["parameters"]["binary_data"] for o in header["outputs"]} == {False}
    as_json = b'{"outputs": [{"name": "y", "datatype": "FP64", "shape": [2, 1], "data": [1.5, 2.5]}]}'
    decoded = decode_triton_binary_response(as_json, None)["y"]
    assert decoded.dtype == np.float32 and decoded.tolist() == [1.5, 2.5]
    int_head = json.dumps(
        {"outputs": [{"name": "y", "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 8}}]}
    ).encode()
    with pytest.raises(PayloadError, match="INT64"):
        decode_triton_binary_response(int_head + np.int64(3).tobytes(), len(int_head))


def test_mlflow_body_names_the_tensors_and_keeps_nan(schema: ModelSchema) -> None:
    numeric = np.array([[1.0, np.nan, 2.0]], dtype=np.float32)
    req = mlflow_request(schema, numeric, np.array([[1, 0]], dtype=np.int64))
    doc = json.loads(req.body)  # Python's json reads NaN, as MLflow's scoring server does
    assert set(doc["inputs"]) == {"numeric", "categorical"}
    assert math.isnan(doc["inputs"]["numeric"][0][1])
