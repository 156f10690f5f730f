"""Schema-driven fuzzing of /predict: records generated from the published OpenAPI request schema, then mutated.

Properties: a record the published schema allows is answered 200; anything else is a 4xx with the
one error shape; nothing is ever a 5xx. The strategies are reused against the real stack by
``tests/integration/test_gateway_contract.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.testing import MODEL, FakeTriton, factory, write_repository

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
    action = draw(st.sampled_from(["drop", "retype", "extra", "shape", "nonfinite"]))
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
    return body


def check_answer(status: int, text: str, body: Any) -> None:
    """The fuzz properties of one answer."""
    assert status < 500, f"{status} for {body!r}: {text}"
    if status >= 400:
        error = json.loads(text)
        assert set(error) == {"error"} and set(error["error"]) == {"code", "message", "field"}, text
        assert MARKER not in error["error"]["message"], "the error echoes the payload"


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


def test_broken_bodies_are_4xx_never_5xx(fuzz_client: TestClient) -> None:
    schema = body_schema_of(fuzz_client)

    @FUZZ
    @given(mutated_bodies(schema))
    def prop(body: Any) -> None:
        resp = fuzz_client.post("/predict", content=encode(body), headers={"content-type": "application/json"})
        check_answer(resp.status_code, resp.text, body)

    prop()


def test_arbitrary_bytes_are_4xx_never_5xx(fuzz_client: TestClient) -> None:
    @FUZZ
    @given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
    def prop(raw: bytes) -> None:
        resp = fuzz_client.post("/predict", content=raw, headers={"content-type": "application/json"})
        check_answer(resp.status_code, resp.text, raw)

    prop()
