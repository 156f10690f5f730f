"""Schema-driven fuzzing of /predict: records generated from the published OpenAPI request schema, then mutated.

Properties: a record the published schema allows is answered 200; a mutated body is judged by the
published schema itself (:mod:`jsonschema`): still valid, 200; invalid JSON (NaN, Infinity), 400
or 422; any other body the schema rejects, 422 ``invalid_input``; every error has the one
error shape; nothing is ever a 5xx. The strategies are reused against the real stack by
``tests/integration/test_gateway_contract.py``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.testing import MODEL, FakeTriton, demo_schema, factory, write_repository

MARKER = "fuzz-marker-7d1c"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def from_json_schema(schema: dict[str, Any], max_items: int = 5) -> st.SearchStrategy[Any]:
    """Values valid under ``schema`` (the subset of JSON Schema the gateway publishes)."""
    if "oneOf" in schema:
        return st.one_of([from_json_schema(s, max_items) for s in schema["oneOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    types = schema.get("type", "object")
    options = []
    for t in [types] if isinstance(types, str) else types:
        if t == "null":
            options.append(st.none())
        elif t == "number":
            low, high = schema.get("minimum"), schema.get("maximum")
            options.append(st.floats(low, high, allow_nan=False, allow_infinity=False))
            options.append(
                st.integers(int(low) if low is not None else -(2**53), int(high) if high is not None else 2**53)
            )
        elif t == "string":
            options.append(st.text(max_size=20))
        elif t == "array":
            items = from_json_schema(schema["items"], max_items)
            options.append(
                st.lists(items, min_size=schema.get("minItems", 0), max_size=min(schema.get("maxItems", 10), max_items))
            )
        elif t == "object":
            props = schema.get("properties", {})
            required = set(schema.get("required", []))
            options.append(
                st.fixed_dictionaries(
                    {k: from_json_schema(v, max_items) for k, v in props.items() if k in required},
                    optional={k: from_json_schema(v, max_items) for k, v in props.items() if k not in required},
                )
            )
    return st.one_of(options)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10) | st.just(MARKER),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)


@st.composite
def mutated_bodies(draw: st.DrawFn, body_schema: dict[str, Any]) -> Any:
    """A schema-valid body with one thing broken: a field dropped, retyped, nulled, added, or the shape."""
    body = draw(from_json_schema(body_schema))
    records = body if isinstance(body, list) else [body]
    if not records:
        return body
    record = records[draw(st.integers(0, len(records) - 1))]
    action = draw(st.sampled_from(["drop", "retype", "extra", "shape", "nonfinite", "bounds"]))
    if action == "drop" and record:
        record.pop(draw(st.sampled_from(sorted(record))))
    elif action == "retype" and record:
        record[draw(st.sampled_from(sorted(record)))] = draw(JSON_VALUES)
    elif action == "extra":
        record[draw(st.text(min_size=1, max_size=30))] = draw(JSON_VALUES)
    elif action == "shape":
        return draw(JSON_VALUES)
    elif action == "nonfinite" and record:
        record[draw(st.sampled_from(sorted(record)))] = draw(st.sampled_from([float("nan"), float("inf"), -1e308 * 10]))
    elif action == "bounds":
        _break_a_bound(draw, body_schema, record)
    return body


def _break_a_bound(draw: st.DrawFn, body_schema: dict[str, Any], record: dict[str, Any]) -> None:
    """Set a field just outside what the schema allows: past a minimum/maximum, or a string out of its enum."""
    props = body_schema["oneOf"][0]["properties"] if "oneOf" in body_schema else body_schema["properties"]
    bounded = sorted(k for k, v in props.items() if "enum" in v or "minimum" in v or "maximum" in v)
    if not bounded:
        return
    name = draw(st.sampled_from(bounded))
    prop = props[name]
    if "enum" in prop:
        record[name] = draw(st.text(max_size=8).filter(lambda t: t not in prop["enum"]))
    elif draw(st.booleans()) and "maximum" in prop and prop["maximum"] < 1e30:
        record[name] = prop["maximum"] + draw(st.floats(1e-3, 1e6))
    elif "minimum" in prop and prop["minimum"] > -1e30:
        record[name] = prop["minimum"] - draw(st.floats(1e-3, 1e6))


def check_answer(status: int, text: str, body: Any) -> None:
    """The fuzz properties of one answer."""
    assert status < 500, f"{status} for {body!r}: {text}"
    if status >= 400:
        error = json.loads(text)
        assert set(error) == {"error"} and set(error["error"]) == {"code", "message", "field"}, text
        assert MARKER not in error["error"]["message"], "the error echoes the payload"


def _has_nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(_has_nonfinite(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nonfinite(v) for v in value.values())
    return False


def expected_status(body_schema: dict[str, Any], body: Any) -> set[int]:
    """What the gateway may answer ``body``, judged by the schema it publishes (not by the gateway's code)."""
    if _has_nonfinite(body):
        # NaN / Infinity literals are not JSON: 400 malformed_json, or 422 naming the field when the parser
        # took the literal and the field check refused the value.
        return {400, 422}
    return {200} if Draft202012Validator(body_schema).is_valid(body) else {422}


def encode(body: Any) -> bytes:
    """JSON as a careless client writes it (NaN/Infinity literals included)."""
    return json.dumps(body, allow_nan=True).encode()


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("fuzz")
    write_repository(root / "repo")
    app = create_app(GatewaySettings(model_repository=root / "repo", default_model=MODEL), factory(FakeTriton()))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def body_schema_of(client: TestClient) -> dict[str, Any]:
    """The request schema /predict publishes."""
    spec = client.get("/openapi.json").json()
    return spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]


def test_every_body_the_published_schema_allows_is_answered(fuzz_client: TestClient) -> None:
    schema = body_schema_of(fuzz_client)

    @FUZZ
    @given(from_json_schema(schema))
    def prop(body: Any) -> None:
        resp = fuzz_client.post("/predict", content=encode(body), headers={"content-type": "application/json"})
        assert resp.status_code == 200, f"{body!r}: {resp.text}"
        rows = len(body) if isinstance(body, list) else 1
        assert len(resp.json()["predictions"]) == rows

    prop()


def test_broken_bodies_get_the_status_the_published_schema_implies(fuzz_client: TestClient) -> None:
    """A body the schema rejects is a 422 (not a 200 nor only "< 500"); a mutation that left it valid, 200."""
    schema = body_schema_of(fuzz_client)

    @FUZZ
    @given(mutated_bodies(schema))
    def prop(body: Any) -> None:
        resp = fuzz_client.post("/predict", content=encode(body), headers={"content-type": "application/json"})
        check_answer(resp.status_code, resp.text, body)
        assert resp.status_code in expected_status(schema, body), f"{body!r}: {resp.status_code} {resp.text}"

    prop()


@pytest.mark.parametrize(
    ("change", "status"),
    [
        (lambda r: r.update(pressure_mbar=2000.0), 422),  # outside a reject range
        (lambda r: r.update(wind_direction="NNW"), 422),  # not in a reject enum
        (lambda r: r.pop("temperature_c"), 422),  # required
        (lambda r: r.update(temperature_c="warm"), 422),
        (lambda r: r.update(temperature_c=True), 422),  # a bool is not a number
        (lambda r: r.update(surprise=1), 422),
        (lambda r: r.update(temperature_c=99.0), 200),  # a flag range accepts it
        (lambda r: r.update(cloud_cover_tenths=None), 200),  # nullable
    ],
)
def test_the_oracle_itself_agrees_with_hand_picked_cases(fuzz_client: TestClient, change: Any, status: int) -> None:
    """The oracle of the property above, and the gateway, on cases whose answer is known by hand."""
    schema = body_schema_of(fuzz_client)
    record = dict(demo_schema().example_record())
    change(record)
    assert expected_status(schema, record) == {status}
    assert fuzz_client.post("/predict", json=record).status_code == status


def test_arbitrary_bytes_are_4xx_never_5xx(fuzz_client: TestClient) -> None:
    @FUZZ
    @given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
    def prop(raw: bytes) -> None:
        resp = fuzz_client.post("/predict", content=raw, headers={"content-type": "application/json"})
        check_answer(resp.status_code, resp.text, raw)

    prop()
