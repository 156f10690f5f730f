"""Every bad /predict request is a 4xx with the one error shape naming the field, never a 5xx or an echo."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.contract import validate
from gateway.errors import InvalidInput, PayloadTooLarge
from gateway.settings import GatewaySettings
from gateway.testing import MODEL, FakeTriton, demo_schema, factory, write_repository

SECRET_VALUE = "zz-secret-payload-zz"


def _settings(tmp_path: Path, **overrides) -> GatewaySettings:
    values = {"model_repository": tmp_path / "repo", "default_model": MODEL, "max_records": 8, "max_body_bytes": 4096}
    return GatewaySettings(**{**values, **overrides})


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    write_repository(tmp_path / "repo")
    with TestClient(create_app(_settings(tmp_path), factory(FakeTriton()))) as c:
        yield c


def record(**changes) -> dict:
    rec = demo_schema().example_record()
    rec.update(changes)
    return {k: v for k, v in rec.items() if v is not ...}


def _error(resp, status: int, code: str, field: str | None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}
    assert body["error"]["code"] == code
    assert body["error"]["field"] == field
    assert SECRET_VALUE not in resp.text, "the error echoes the payload"
    return body["error"]


def post_raw(client: TestClient, content: bytes, content_type: str = "application/json"):
    return client.post("/predict", content=content, headers={"content-type": content_type})


def test_a_valid_record_and_a_valid_list(client: TestClient) -> None:
    one = client.post("/predict", json=record())
    assert one.status_code == 200
    assert one.json()["flags"] == [] and len(one.json()["predictions"]) == 1
    many = client.post("/predict", json=[record(), record(wind_direction="W")])
    assert many.status_code == 200 and len(many.json()["predictions"]) == 2
    assert many.headers["x-model-alias"] == "champion"


def test_malformed_json(client: TestClient) -> None:
    _error(post_raw(client, b'{"temperature_c": 1,'), 400, "malformed_json", "body")
    _error(post_raw(client, b""), 400, "malformed_json", "body")
    _error(post_raw(client, b"\xff\xfe" + SECRET_VALUE.encode()), 400, "malformed_json", "body")
    _error(post_raw(client, b"[" * 3000), 400, "malformed_json", "body")


def test_wrong_content_type(client: TestClient) -> None:
    resp = post_raw(client, orjson.dumps(record()), "text/plain")
    _error(resp, 415, "unsupported_media_type", "content-type")
    resp = client.post("/predict", data={"temperature_c": "1"})
    _error(resp, 415, "unsupported_media_type", "content-type")
    assert post_raw(client, orjson.dumps(record()), "application/json; charset=utf-8").status_code == 200


def test_body_too_large_is_413_even_without_content_length(client: TestClient) -> None:
    big = orjson.dumps([record(station_type=SECRET_VALUE * 30)] * 8)
    assert len(big) > 4096
    _error(post_raw(client, big), 413, "payload_too_large", "body")

    def chunks() -> Iterator[bytes]:  # chunked transfer: no Content-Length to trust
        for _ in range(10):
            yield b" " * 1000

    resp = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    _error(resp, 413, "payload_too_large", "body")


def test_empty_list_and_wrong_top_level(client: TestClient) -> None:
    _error(client.post("/predict", json=[]), 422, "invalid_input", "body")
    _error(client.post("/predict", json="temperature"), 422, "invalid_input", "body")
    _error(client.post("/predict", json=[record(), 7]), 422, "invalid_input", "[1]")


def test_too_many_records_is_413_and_the_limit_is_a_setting(client: TestClient, tmp_path: Path) -> None:
    _error(client.post("/predict", json=[record()] * 9), 413, "payload_too_large", "body")
    assert client.post("/predict", json=[record()] * 8).status_code == 200
    with TestClient(create_app(_settings(tmp_path, max_records=2), factory(FakeTriton()))) as small:
        _error(small.post("/predict", json=[record()] * 3), 413, "payload_too_large", "body")


def test_missing_required_field(client: TestClient) -> None:
    _error(client.post("/predict", json=record(temperature_c=...)), 422, "invalid_input", "temperature_c")
    _error(
        client.post("/predict", json=[record(), record(wind_direction=...)]), 422, "invalid_input", "[1].wind_direction"
    )


def test_null_in_a_non_nullable_field(client: TestClient) -> None:
    err = _error(client.post("/predict", json=record(pressure_mbar=None)), 422, "invalid_input", "pressure_mbar")
    assert "null" in err["message"]
    _error(client.post("/predict", json=[record(wind_direction=None)]), 422, "invalid_input", "[0].wind_direction")


def test_nullable_fields_may_be_null_or_absent(client: TestClient) -> None:
    for rec in (record(cloud_cover_tenths=None, station_type=None), record(cloud_cover_tenths=..., station_type=...)):
        resp = client.post("/predict", json=rec)
        assert resp.status_code == 200, resp.text
        assert resp.json()["flags"] == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature_c", "15"),
        ("temperature_c", True),
        ("temperature_c", [1]),
        ("temperature_c", {"v": 1}),
        ("wind_direction", 3),
        ("wind_direction", ["N"]),
        ("station_type", False),
    ],
)
def test_wrong_type(client: TestClient, field: str, value: object) -> None:
    _error(client.post("/predict", json=[record(**{field: value})]), 422, "invalid_input", f"[0].{field}")


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999"])
def test_nan_and_infinity_name_the_field(client: TestClient, literal: bytes) -> None:
    raw = orjson.dumps([record(temperature_c="@")]).replace(b'"@"', literal)
    err = _error(post_raw(client, raw), 422, "invalid_input", "[0].temperature_c")
    assert "finite" in err["message"]


def test_integers_too_large_for_a_double_are_not_finite(client: TestClient) -> None:
    raw = orjson.dumps(record(temperature_c="@")).replace(b'"@"', b"9" * 400)
    _error(post_raw(client, raw), 422, "invalid_input", "temperature_c")


def test_out_of_range_reject_policy(client: TestClient) -> None:
    err = _error(client.post("/predict", json=record(pressure_mbar=1200)), 422, "invalid_input", "pressure_mbar")
    assert "950" in err["message"] and "1050" in err["message"]


def test_out_of_range_flag_policy_says_which_records(client: TestClient) -> None:
    resp = client.post("/predict", json=[record(), record(temperature_c=55.0), record(temperature_c=-40)])
    assert resp.status_code == 200
    assert resp.json()["flags"] == [
        {"record": 1, "field": "temperature_c", "reason": "out_of_range"},
        {"record": 2, "field": "temperature_c", "reason": "out_of_range"},
    ]


def test_range_policy_is_configurable_per_feature(tmp_path: Path) -> None:
    write_repository(tmp_path / "repo")
    overrides = {f"{MODEL}.temperature_c": "reject", f"{MODEL}.pressure_mbar": "flag"}
    settings = _settings(tmp_path, range_policy_overrides=overrides)
    with TestClient(create_app(settings, factory(FakeTriton()))) as c:
        _error(c.post("/predict", json=record(temperature_c=55.0)), 422, "invalid_input", "temperature_c")
        resp = c.post("/predict", json=record(pressure_mbar=1200))
        assert resp.status_code == 200
        assert resp.json()["flags"] == [{"record": 0, "field": "pressure_mbar", "reason": "out_of_range"}]
        # the OpenAPI record schema shows the effective policy
        props = c.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]["content"][
            "application/json"
        ]["schema"]["oneOf"][0]["properties"]
        assert props["temperature_c"]["x-range-policy"] == "reject" and props["temperature_c"]["maximum"] == 40
    with pytest.raises(ValueError, match="model"):
        GatewaySettings(range_policy_overrides={"temperature_c": "reject"})


def test_unknown_category_reject_policy(client: TestClient) -> None:
    err = _error(
        client.post("/predict", json=record(wind_direction=SECRET_VALUE)), 422, "invalid_input", "wind_direction"
    )
    assert "calm, N, E, S, W" in err["message"]


def test_unknown_category_maps_to_the_declared_fallback(client: TestClient) -> None:
    resp = client.post("/predict", json=[record(station_type="harbour"), record(station_type="other")])
    assert resp.status_code == 200
    assert resp.json()["flags"] == [{"record": 0, "field": "station_type", "reason": "unknown_category"}]
    preds = resp.json()["predictions"]
    assert preds[0] == preds[1], "the unknown value was not mapped to the fallback"


def test_unknown_extra_fields(client: TestClient) -> None:
    _error(client.post("/predict", json=record(humidity=3)), 422, "invalid_input", "humidity")
    _error(client.post("/predict", json=[record(), record(humidity=3)]), 422, "invalid_input", "[1].humidity")
    # a field name that is itself a payload is not echoed
    resp = client.post("/predict", json=[record(**{SECRET_VALUE + " <script>": 1})])
    _error(resp, 422, "invalid_input", "[0].?")


def test_validate_directly() -> None:
    schema = demo_schema()
    batch = validate(schema, [record(cloud_cover_tenths=None, station_type=None)], 4)
    assert batch.numeric.shape == (1, 3) and batch.categorical.shape == (1, 2)
    assert batch.categorical[0, 1] == len(schema.categorical[1].categories), "missing = len(categories)"
    with pytest.raises(PayloadTooLarge):
        validate(schema, [record()] * 5, 4)
    with pytest.raises(InvalidInput):
        validate(schema, {}, 4)
