"""The column-wise validation path gives exactly what the per-record path gives, or gives up.

``modelspec.tensors.validate_records`` is the reference (it raises the precise errors);
``validate_columns`` must return an identical :class:`Batch` (tensors bit for bit, flags in the
same order) or None, and the gateway's ``validate`` must answer exactly as the reference does,
error code, message and field included (modelspec's InvalidRecord is the gateway's 422 invalid_input).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.contract import validate
from gateway.errors import GatewayError
from gateway.testing import demo_schema, training_records
from modelspec import CategoricalFeature, ModelSchema, NumericFeature, OutputSpec, tensors
from modelspec.tensors import (
    COLUMNWISE_MIN_RECORDS,
    Batch,
    InvalidRecord,
    RecordError,
    TooManyRecords,
    validate_columns,
    validate_records,
)

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
FLOAT32_MAX = float(np.finfo(np.float32).max)
OUTPUTS = [OutputSpec(name="y")]
RECORD_ERROR_CODES = {InvalidRecord: "invalid_input", TooManyRecords: "payload_too_large"}


def outcome(fn: Any) -> tuple[Any, ...]:
    """What a validation call gives, in a form that compares exactly (bits of the tensors, error text)."""
    try:
        batch: Batch = fn()
    except GatewayError as e:
        return ("error", e.code, e.message, e.field)
    except RecordError as e:  # what the gateway answers for it
        return ("error", RECORD_ERROR_CODES[type(e)], e.message, e.field)
    return (
        "ok",
        batch.numeric.dtype.str,
        batch.numeric.shape,
        batch.numeric.tobytes(),
        batch.numeric.flags.c_contiguous,
        batch.categorical.dtype.str,
        batch.categorical.shape,
        batch.categorical.tobytes(),
        [f.as_dict() for f in batch.flags],
        batch.single,
    )


def assert_same(schema: ModelSchema, records: list[Any]) -> Batch | None:
    """The column path equals the reference (or gives up), and validate() equals the reference."""
    reference = outcome(lambda: validate_records(schema, records, False))
    columns = validate_columns(schema, records)
    if columns is not None:
        assert reference[0] == "ok", f"the column path accepted what the reference rejects: {reference}"
        assert outcome(lambda: columns) == reference
    assert outcome(lambda: validate(schema, records, len(records))) == reference
    return columns


def check_and_count(schema: ModelSchema, records: list[Any]) -> Batch | None:
    """:func:`assert_same`, counting which way it went (pytest --hypothesis-show-statistics)."""
    columns = assert_same(schema, records)
    if columns is not None:
        event("column path decided" + (" with flags" if columns.flags else ""))
    else:
        reference = outcome(lambda: validate_records(schema, records, False))[0]
        event(f"column path gave up; the reference says {reference}")
    return columns


# ---- strategies ---------------------------------------------------------------------------------

NAMES = [f"f{k}" for k in range(10)]
BOUNDS = st.sampled_from([0.0, -0.0, 1.0, -1.0, 10.0, 0.5, -20.0, 40.0, 1e6, -1e6, 2.0**53, 1e300, -1e300])


@st.composite
def numeric_features(draw: st.DrawFn, name: str) -> NumericFeature:
    low, high = sorted([draw(BOUNDS), draw(BOUNDS)])
    return NumericFeature(
        name=name,
        minimum=low,
        maximum=high,
        nullable=draw(st.booleans()),
        range_policy=draw(st.sampled_from(["flag", "reject"])),
        example=low,
    )


@st.composite
def categorical_features(draw: st.DrawFn, name: str) -> CategoricalFeature:
    categories = draw(st.lists(st.sampled_from(["a", "b", "c", "N", "", "é", "1.5", "None"]), min_size=1, unique=True))
    policy = draw(st.sampled_from(["fallback", "reject"]))
    return CategoricalFeature(
        name=name,
        categories=categories,
        nullable=draw(st.booleans()),
        unknown_policy=policy,
        fallback=draw(st.sampled_from(categories)) if policy == "fallback" else None,
        example=categories[0],
    )


@st.composite
def schemas(draw: st.DrawFn) -> ModelSchema:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=6, unique=True))
    features: list[NumericFeature | CategoricalFeature] = []
    for name in names:
        kind = draw(st.sampled_from(["numeric", "numeric", "categorical"]))
        features.append(draw(numeric_features(name) if kind == "numeric" else categorical_features(name)))
    return ModelSchema(model_name="prop", features=features, outputs=OUTPUTS)


MISSING = object()  # the field is left out of the record

# values a careless client may send (json.loads gives NaN/inf for NaN/Infinity literals, ints of any size)
ODD_VALUES = st.sampled_from(
    [
        True,
        False,
        "1.5",
        "",
        "nan",
        [1.0],
        [],
        {"a": 1},
        math.nan,
        math.inf,
        -math.inf,
        10**400,
        -(10**400),
        2**1024,
        2**53 + 1,
        2**64 + 1,
        -(2**63) - 1,
        FLOAT32_MAX,
        -FLOAT32_MAX,
        3.4028236e38,
        int(FLOAT32_MAX),
        int(FLOAT32_MAX) + 2**100,
        1e308,
        -0.0,
        0,
        None,
        MISSING,
    ]
)


def numeric_values(f: NumericFeature, odd: bool) -> st.SearchStrategy[Any]:
    """Mostly what the column path decides (valid, nulls, out of range); with ``odd``, anything."""
    low, high = f.minimum, f.maximum
    # what float32 holds of the trained range (beyond it the reference rejects any value)
    lo, hi = max(low, -FLOAT32_MAX), min(high, FLOAT32_MAX)
    options: list[st.SearchStrategy[Any]] = []
    edges = [v for v in (low, high, -0.0, 0.0, 0, math.nextafter(low, math.inf)) if lo <= v <= hi]
    if edges:
        options.append(st.sampled_from(edges))
    if lo < hi:
        options.append(st.floats(lo, hi))
    if math.ceil(lo) <= math.floor(hi):
        options.append(st.integers(math.ceil(lo), math.floor(hi)))
    options = options * 2
    if f.nullable:
        options.append(st.sampled_from([None, MISSING]))
    if f.range_policy == "flag" or odd:
        biggest = int(FLOAT32_MAX)  # exactly FLOAT32_MAX as a double
        if low > -FLOAT32_MAX:
            options.append(st.floats(-FLOAT32_MAX, min(low, FLOAT32_MAX), exclude_max=low <= FLOAT32_MAX))
            options.append(st.integers(-biggest, min(math.ceil(low) - 1, biggest)))
        if high < FLOAT32_MAX:
            options.append(st.floats(max(high, -FLOAT32_MAX), FLOAT32_MAX, exclude_min=high >= -FLOAT32_MAX))
            options.append(st.integers(max(math.floor(high) + 1, -biggest), biggest))
    if odd:
        options += [ODD_VALUES, st.floats(), st.integers(), st.sampled_from([None, MISSING])]
    return st.one_of(options)


def categorical_values(c: CategoricalFeature, odd: bool) -> st.SearchStrategy[Any]:
    """Mostly what the column path decides (known, nulls, unknown under fallback); with ``odd``, anything."""
    options = [st.sampled_from(c.categories)] * 3
    if c.nullable:
        options.append(st.sampled_from([None, MISSING]))
    if c.unknown_policy == "fallback" or odd:
        options.append(st.sampled_from(["zz", "A", "n", " N", "calm"]).filter(lambda v: v not in c.categories))
        options.append(st.text(max_size=4).map(lambda v: "~" + v))  # no category starts with ~
    if odd:
        options.append(ODD_VALUES)
        options.append(st.sampled_from([1, 1.0, ["a"], {"a": "b"}, True, None, MISSING]))
    return st.one_of(options)


@st.composite
def records_for(draw: st.DrawFn, schema: ModelSchema, odd: bool, max_size: int = 40) -> list[Any]:
    """A list of records for ``schema``; with ``odd``, now and then a broken record or field."""
    n = draw(st.integers(1, max_size))
    # (usual values, anything) per feature; in an odd list, one field in ten may be anything
    values = [
        (numeric_values(f, False), numeric_values(f, True))
        if isinstance(f, NumericFeature)
        else (categorical_values(f, False), categorical_values(f, True))
        for f in schema.features
    ]
    records: list[Any] = []
    for _ in range(n):
        if odd and draw(st.integers(0, 40)) == 0:
            records.append(draw(st.sampled_from([None, 1, "x", [], [1, 2], True])))
            continue
        record: dict[str, Any] = {}
        for f, (usual, anything) in zip(schema.features, values, strict=True):
            value = draw(anything if odd and draw(st.integers(0, 9)) == 0 else usual)
            if value is not MISSING:
                record[f.name] = value
        if odd and draw(st.integers(0, 30)) == 0:
            record[draw(st.sampled_from(["extra", "f99", "x y", "é" * 80]))] = draw(st.sampled_from([1, None, "a"]))
        records.append(record)
    return records


def _can_be_valid(schema: ModelSchema) -> bool:
    """Every numeric feature accepts some value (a range beyond float32 under reject accepts none)."""
    return all(
        f.nullable or f.range_policy == "flag" or max(f.minimum, -FLOAT32_MAX) <= min(f.maximum, FLOAT32_MAX)
        for f in schema.numeric
    )


@st.composite
def decidable_cases(draw: st.DrawFn) -> tuple[ModelSchema, list[Any]]:
    schema = draw(schemas().filter(_can_be_valid))
    return schema, draw(records_for(schema, odd=False))


@st.composite
def any_cases(draw: st.DrawFn) -> tuple[ModelSchema, list[Any]]:
    schema = draw(schemas())
    return schema, draw(records_for(schema, odd=True))


# ---- properties ---------------------------------------------------------------------------------


@PROPERTY
@given(decidable_cases())
def test_column_path_decides_valid_flagged_and_null_records_exactly(case: tuple[ModelSchema, list[Any]]) -> None:
    schema, records = case
    batch = check_and_count(schema, records)
    # everything here is valid (nulls only where nullable, out-of-range only under flag, unknown only under fallback)
    assert batch is not None, "the column path gave up on records it should decide"


@PROPERTY
@given(any_cases())
def test_column_path_is_identical_or_gives_up_on_anything(case: tuple[ModelSchema, list[Any]]) -> None:
    schema, records = case
    check_and_count(schema, records)


@PROPERTY
@given(any_cases())
def test_identical_after_a_json_round_trip(case: tuple[ModelSchema, list[Any]]) -> None:
    """What the gateway really sees: json.loads output, NaN/Infinity literals included."""
    schema, records = case
    try:
        text = json.dumps(records, allow_nan=True)
    except (TypeError, ValueError):
        return
    check_and_count(schema, json.loads(text))


@PROPERTY
@given(
    st.lists(
        st.one_of(
            st.integers(-(2**128), 2**128),  # beyond float32 near the ends: the reference error
            st.integers(-(2**64), 2**64),
            st.integers(2**53 - 8, 2**53 + 8),
            st.floats(allow_nan=False, allow_infinity=False),
            st.floats(-FLOAT32_MAX, FLOAT32_MAX, width=32),
        ),
        min_size=COLUMNWISE_MIN_RECORDS,
        max_size=30,
    )
)
def test_ints_and_floats_convert_to_the_same_float32(values: list[Any]) -> None:
    """float(int) then float32 per value, and numpy over a mixed column, round the same way."""
    schema = ModelSchema(
        model_name="wide",
        features=[NumericFeature(name="x", minimum=-1e300, maximum=1e300, range_policy="flag", example=0)],
        outputs=OUTPUTS,
    )
    check_and_count(schema, [{"x": v} for v in values])


# ---- examples of the subtle cases ---------------------------------------------------------------


def wide_schema(*, nullable: bool = False, policy: str = "flag") -> ModelSchema:
    return ModelSchema(
        model_name="wide",
        features=[
            NumericFeature(name="x", minimum=-1.0, maximum=1.0, nullable=nullable, range_policy=policy, example=0),
            NumericFeature(name="y", minimum=-1e300, maximum=1e300, example=0),
        ],
        outputs=OUTPUTS,
    )


def column_batch(schema: ModelSchema, records: list[Any]) -> Batch:
    """The column path's batch, checked against the reference; it must not give up."""
    batch = assert_same(schema, records)
    assert batch is not None
    return batch


def given_up(schema: ModelSchema, records: list[Any]) -> tuple[Any, ...]:
    """The column path gives up; the reference's error (validate gives the same one)."""
    assert validate_columns(schema, records) is None
    result = outcome(lambda: validate(schema, records, len(records)))
    assert result == outcome(lambda: validate_records(schema, records, False))
    assert result[0] == "error"
    return result


def test_mixed_int_and_float_column_matches_float_of_each_value() -> None:
    values = [1, 0.1, 2**53 + 1, 2**60 + 3, -(2**63) - 1, 2**64 + 1, 16777217, 0.30000000000000004]
    batch = column_batch(wide_schema(), [{"x": 0, "y": v} for v in values])
    expected = np.array([float(v) for v in values], dtype=np.float64).astype(np.float32)
    assert batch.numeric[:, 1].tobytes() == expected.tobytes()


def test_huge_ints_beyond_a_double_give_the_reference_error() -> None:
    for big in (10**400, 2**1024, -(2**1024)):
        records = [{"x": 0, "y": 1}] * 5 + [{"x": 0, "y": big}]
        assert given_up(wide_schema(), records) == (
            "error",
            "invalid_input",
            "field 'y' must be a finite number (magnitude below 3.4e38)",
            "[5].y",
        )


def test_float32_magnitude_limit_is_inclusive() -> None:
    batch = column_batch(wide_schema(), [{"x": 0, "y": FLOAT32_MAX}, {"x": 0, "y": -FLOAT32_MAX}] * 2)
    assert np.isfinite(batch.numeric).all()
    given_up(wide_schema(), [{"x": 0, "y": 1.0}] * 4 + [{"x": 0, "y": 3.4028236e38}])
    given_up(wide_schema(), [{"x": 0, "y": 1.0}] * 4 + [{"x": 0, "y": int(FLOAT32_MAX) + 2**104}])


def test_negative_zero_keeps_its_sign_and_is_inside_a_zero_bound() -> None:
    schema = ModelSchema(
        model_name="z",
        features=[NumericFeature(name="x", minimum=0.0, maximum=1.0, range_policy="reject", example=0)],
        outputs=OUTPUTS,
    )
    batch = column_batch(schema, [{"x": -0.0}, {"x": 0}, {"x": 0.0}, {"x": -0.0}])
    assert np.signbit(batch.numeric[:, 0]).tolist() == [True, False, False, True]


def test_values_exactly_at_the_bounds_are_not_flagged() -> None:
    batch = column_batch(wide_schema(), [{"x": -1.0, "y": 0}, {"x": 1, "y": 0}, {"x": -1, "y": 0}, {"x": 1.0, "y": 0}])
    assert batch.flags == []
    flagged = column_batch(wide_schema(), [{"x": math.nextafter(1.0, 2.0), "y": 0}] + [{"x": 1.0, "y": 0}] * 3)
    assert [f.as_dict() for f in flagged.flags] == [{"record": 0, "field": "x", "reason": "out_of_range"}]


def test_a_value_that_rounds_into_the_range_in_float32_is_still_flagged_like_the_reference() -> None:
    # 1 + 2**-40 > 1.0 as a double (flagged) but is 1.0 as float32
    batch = column_batch(wide_schema(), [{"x": 1.0 + 2**-40, "y": 0}] * 4)
    assert len(batch.flags) == 4 and batch.numeric[0, 0] == np.float32(1.0)


def test_numeric_strings_are_not_numbers() -> None:
    assert given_up(wide_schema(), [{"x": 0, "y": 0}] * 4 + [{"x": "1.5", "y": 0}])[2:] == (
        "field 'x' must be a number",
        "[4].x",
    )


def test_bools_are_not_numbers_nor_categories() -> None:
    assert given_up(wide_schema(), [{"x": 0, "y": 0}] * 4 + [{"x": True, "y": 0}])[3] == "[4].x"
    assert given_up(wide_schema(), [{"x": 0, "y": False}] * 4)[3] == "[0].y"
    schema = demo_schema()
    records = training_records(5)
    records[3]["wind_direction"] = True
    assert given_up(schema, records)[2:] == ("field 'wind_direction' must be a string", "[3].wind_direction")


def test_nan_and_infinity_literals_are_rejected_even_in_nullable_fields() -> None:
    for value in (math.nan, math.inf, -math.inf):
        records = [{"x": None, "y": 0}] * 4 + [{"x": value, "y": 0}]
        assert given_up(wide_schema(nullable=True), records)[3] == "[4].x"
        assert given_up(wide_schema(), [{"x": 0, "y": value}] * 4)[3] == "[0].y"


def test_nulls_and_absent_fields() -> None:
    batch = column_batch(wide_schema(nullable=True), [{"x": None, "y": 1}, {"y": 2}, {"x": 0.5, "y": 3}, {"y": 4}])
    assert np.isnan(batch.numeric[:, 0]).tolist() == [True, True, False, True]
    assert given_up(wide_schema(), [{"x": 0, "y": 1}] * 4 + [{"x": None, "y": 1}])[2:] == (
        "field 'x' must not be null",
        "[4].x",
    )
    assert given_up(wide_schema(), [{"x": 0, "y": 1}] * 4 + [{"y": 1}])[2:] == ("field 'x' is required", "[4].x")


def test_flags_are_ordered_by_record_then_numeric_then_categorical_features() -> None:
    schema = demo_schema()
    records = training_records(6)
    records[1].update(temperature_c=99, station_type="moon", cloud_cover_tenths=11)
    records[4].update(station_type="moon")
    records[5].update(cloud_cover_tenths=-1, temperature_c=-99)
    batch = column_batch(schema, records)
    assert [(f.record, f.field) for f in batch.flags] == [
        (1, "temperature_c"),
        (1, "cloud_cover_tenths"),
        (1, "station_type"),
        (4, "station_type"),
        (5, "temperature_c"),
        (5, "cloud_cover_tenths"),
    ]


def test_reject_policies_give_the_reference_error() -> None:
    schema = demo_schema()
    records = training_records(6)
    records[2]["pressure_mbar"] = 2000
    records[4]["wind_direction"] = "up"
    assert given_up(schema, records)[2:] == (
        "field 'pressure_mbar' is outside the trained range [950, 1050]",
        "[2].pressure_mbar",
    )
    records[2]["pressure_mbar"] = 1000
    assert given_up(schema, records)[3] == "[4].wind_direction"


def test_unknown_category_falls_back_and_null_category_is_the_missing_index() -> None:
    schema = demo_schema()
    records = training_records(5)
    records[0]["station_type"] = "moon"
    records[1]["station_type"] = None
    del records[2]["station_type"]
    batch = column_batch(schema, records)
    assert batch.categorical[:3, 1].tolist() == [2, 3, 3]


def test_unhashable_and_odd_categorical_values_give_the_reference_error() -> None:
    schema = demo_schema()
    for value in (["N"], {"N": 1}, 1, 1.0, None):
        records = training_records(5)
        records[3]["wind_direction"] = value
        assert given_up(schema, records)[3] == "[3].wind_direction"


def test_null_or_absent_category_of_a_required_fallback_feature_is_an_error_not_the_fallback() -> None:
    schema = ModelSchema(
        model_name="c",
        features=[
            CategoricalFeature(name="c", categories=["a", "b"], unknown_policy="fallback", fallback="b", example="a")
        ],
        outputs=OUTPUTS,
    )
    assert given_up(schema, [{"c": "a"}] * 4 + [{"c": None}])[2:] == ("field 'c' must not be null", "[4].c")
    assert given_up(schema, [{"c": "a"}] * 4 + [{}])[2:] == ("field 'c' is required", "[4].c")
    assert [f.record for f in column_batch(schema, [{"c": "a"}, {"c": "zz"}, {"c": "b"}, {"c": "None"}]).flags] == [
        1,
        3,
    ]


def test_records_that_are_not_objects_and_unknown_fields() -> None:
    schema = demo_schema()
    for odd in (None, [], "x", 1, [("temperature_c", 1)]):
        records: list[Any] = training_records(5)
        records[2] = odd
        assert given_up(schema, records)[2:] == ("record[2] must be a JSON object of named fields", "[2]")
    for extra, shown in (("humidity", "humidity"), ("x y", "?")):
        records = training_records(5)
        records[1][extra] = 1
        assert given_up(schema, records)[3] == f"[1].{shown}"
        del records[1]["cloud_cover_tenths"]  # as many fields as the schema has, one of them unknown
        assert given_up(schema, records)[3] == f"[1].{shown}"


def test_subclasses_are_left_to_the_reference_path() -> None:
    class Number(float):
        pass

    class Record(dict[str, Any]):
        pass

    schema = wide_schema()
    assert validate_columns(schema, [{"x": Number(0.5), "y": 0}] * 4) is None
    assert validate_columns(schema, [Record(x=0.5, y=0)] * 4) is None
    assert outcome(lambda: validate(schema, [Record(x=0.5, y=0)] * 4, 4))[0] == "ok"


def test_schemas_with_only_one_kind_of_feature() -> None:
    numeric_only = ModelSchema(
        model_name="n", features=[NumericFeature(name="x", minimum=0, maximum=1, example=0)], outputs=OUTPUTS
    )
    batch = column_batch(numeric_only, [{"x": 0.5}, {"x": 2}, {"x": 0}, {"x": 1}])
    assert batch.categorical.shape == (4, 1) and batch.flags[0].record == 1
    categorical_only = ModelSchema(
        model_name="c",
        features=[CategoricalFeature(name="c", categories=["a", "b"], nullable=True, example="a")],
        outputs=OUTPUTS,
    )
    batch = column_batch(categorical_only, [{"c": "b"}, {}, {"c": None}, {"c": "a"}])
    assert batch.numeric.shape == (4, 0) and batch.categorical[:, 0].tolist() == [1, 2, 2, 0]


def test_validate_uses_the_column_path_from_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    schema = demo_schema()
    calls: list[int] = []
    real = tensors.validate_columns

    def spy(schema: ModelSchema, records: list[Any]) -> Batch | None:
        calls.append(len(records))
        return real(schema, records)

    monkeypatch.setattr(tensors, "validate_columns", spy)
    validate(schema, schema.example_record(), 10)
    validate(schema, training_records(COLUMNWISE_MIN_RECORDS - 1), 10)
    assert calls == []
    batch = validate(schema, training_records(COLUMNWISE_MIN_RECORDS), 10)
    assert calls == [COLUMNWISE_MIN_RECORDS] and not batch.single


def test_the_plan_cache_follows_the_schema_object() -> None:
    a = wide_schema(policy="flag")
    b = wide_schema(policy="reject")
    records = [{"x": 5, "y": 0}] * 4
    assert len(column_batch(a, records).flags) == 4
    assert given_up(b, records)[3] == "[0].x"
    for k in range(100):  # more schemas than the cache holds
        column_batch(wide_schema(nullable=k % 2 == 0), [{"x": 0.5, "y": k}] * 4)
    assert len(column_batch(a, records).flags) == 4
