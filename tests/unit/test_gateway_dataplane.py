"""The data plane without HTTP: body bytes and a request id in, answer bytes and headers out (or an error).

And the one error shape: every error body comes from :func:`gateway.errors.error_body`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from gateway import errors
from gateway.app import create_app
from gateway.contract import validate
from gateway.dataplane import Gateway
from gateway.errors import GatewayError, InvalidInput, ModelNotFound, ModelNotReady, Overloaded
from gateway.feedback import FeedbackStore, StoredPrediction
from gateway.inference import infer_in_chunks
from gateway.policy import TrafficPolicy
from gateway.shadow import SHADOW_SUFFIX
from gateway.testing import (
    MODEL,
    FakeTriton,
    demo_schema,
    factory,
    fake_model,
    given_body,
    metric_value,
    settings_for,
    tensors_of,
    training_records,
    write_repository,
)
from gateway.wire import FeedbackResponse, PredictResponse

RECORDS = training_records(3, seed=7)


_settings = settings_for


def _run(test: Callable[[Gateway], Coroutine[Any, Any, None]], gw: Gateway) -> None:
    """Run ``test`` against a started data plane, then stop it."""

    async def main() -> None:
        gw.start()
        try:
            await test(gw)
        finally:
            await gw.stop(grace_s=1.0)

    asyncio.run(main())


def _gateway(tmp_path: Path, fake: FakeTriton, *, challenger: int | None = None, **settings: Any) -> Gateway:
    write_repository(tmp_path / "repo", champion=1, challenger=challenger)
    gw = Gateway(_settings(tmp_path, **settings), factory(fake))
    gw.refresh()
    return gw


def _unread() -> tuple[Callable[[int], Awaitable[bytes]], list[int]]:
    """A body reader that records its calls (the tests expect none)."""
    calls: list[int] = []

    async def read(limit: int) -> bytes:
        calls.append(limit)
        return orjson.dumps(RECORDS)

    return read, calls


def test_a_prediction_is_bytes_in_and_bytes_and_headers_out(tmp_path: Path) -> None:
    fake = FakeTriton()
    gw = _gateway(tmp_path, fake)

    async def test(gw: Gateway) -> None:
        body, headers = await gw.predict(MODEL, "order-1", given_body(RECORDS))
        answer = PredictResponse.model_validate_json(body)
        assert answer.request_id == "order-1"
        assert (answer.model.name, answer.model.version, answer.model.alias) == (MODEL, 1, "champion")
        numeric, categorical = tensors_of(demo_schema(), RECORDS)
        expected = fake_model(numeric, categorical, 1).astype(np.float32)
        assert [p["ghi_wm2"] for p in answer.predictions] == pytest.approx(expected.tolist())
        assert headers == {"x-request-id": "order-1", "x-model-version": "1", "x-model-alias": "champion"}
        assert fake.calls == [(MODEL, 1, 3, "order-1")]
        assert gw.in_flight == 0

    _run(test, gw)
    exposition = gw.metrics.exposition().decode()
    ok = {"model": MODEL, "version": "1", "route": "/predict", "status": "200", "code": "ok"}
    assert metric_value(exposition, "modelops_gateway_requests_total", **ok) == 1.0


def test_the_data_plane_answers_what_the_http_route_answers(tmp_path: Path) -> None:
    write_repository(tmp_path / "repo")
    with TestClient(create_app(_settings(tmp_path), factory(FakeTriton()))) as client:
        resp = client.post("/predict", json=RECORDS, headers={"x-request-id": "same-1"})
        gw: Gateway = client.app.gateway  # type: ignore[attr-defined]
        body, headers = client.portal.call(gw.predict, MODEL, "same-1", given_body(RECORDS))  # type: ignore[union-attr]
    assert resp.status_code == 200
    assert resp.content == body
    assert {k: resp.headers[k] for k in headers} == headers
    assert resp.headers["content-type"] == "application/json"


def test_errors_are_raised_with_the_request_id_and_counted(tmp_path: Path) -> None:
    gw = _gateway(tmp_path, FakeTriton())

    async def test(gw: Gateway) -> None:
        bad = [dict(RECORDS[0], pressure_mbar=2000.0)]  # outside the range, and the policy is reject
        with pytest.raises(InvalidInput) as raised:
            await gw.predict(MODEL, "bad-1", given_body(bad))
        assert raised.value.field == "[0].pressure_mbar"
        assert raised.value.headers["x-request-id"] == "bad-1"
        with pytest.raises(errors.MalformedRequest):
            await gw.predict(MODEL, "bad-2", given_body(b"{"))
        assert gw.in_flight == 0

    _run(test, gw)
    exposition = gw.metrics.exposition().decode()
    labels = {"model": MODEL, "version": "1", "route": "/predict", "status": "422", "code": "invalid_input"}
    assert metric_value(exposition, "modelops_gateway_requests_total", **labels) == 1.0


def test_no_body_is_read_when_the_gateway_is_overloaded_or_the_model_unknown(tmp_path: Path) -> None:
    gw = _gateway(tmp_path, FakeTriton(), max_in_flight=1)

    async def test(gw: Gateway) -> None:
        read, calls = _unread()
        gw.in_flight = 1
        with pytest.raises(Overloaded) as raised:
            await gw.predict(MODEL, "busy-1", read)
        assert raised.value.headers == {"Retry-After": "1", "x-request-id": "busy-1"}
        gw.in_flight = 0
        with pytest.raises(ModelNotFound):
            await gw.predict("no_such_model", "lost-1", read)
        assert calls == []

    _run(test, gw)
    exposition = gw.metrics.exposition().decode()
    unknown = {"model": "_unknown", "version": "", "route": "/predict", "status": "404", "code": "model_not_found"}
    assert metric_value(exposition, "modelops_gateway_requests_total", **unknown) == 1.0


def test_a_data_plane_that_is_not_started_says_so(tmp_path: Path) -> None:
    gw = _gateway(tmp_path, FakeTriton())

    async def test() -> None:
        with pytest.raises(ModelNotReady, match="starting"):
            await gw.predict(MODEL, "early-1", given_body(RECORDS))

    asyncio.run(test())


def test_choose_version_follows_the_canary_share_and_the_shadow_switch(tmp_path: Path) -> None:
    gw = _gateway(tmp_path, FakeTriton(), challenger=2)
    champion, shadow = gw.choose_version(MODEL)
    assert (champion.version, champion.alias, shadow) == (1, "champion", False)
    gw.policies.set(MODEL, TrafficPolicy(canary_share=1.0, shadow=True))
    challenger, shadow = gw.choose_version(MODEL)
    assert (challenger.version, challenger.alias, shadow) == (2, "challenger", False)
    gw.policies.set(MODEL, TrafficPolicy(canary_share=0.0, shadow=True))
    champion, shadow = gw.choose_version(MODEL)
    assert (champion.version, shadow) == (1, True)


def test_large_batches_go_to_triton_in_chunks_of_max_batch_size(tmp_path: Path) -> None:
    gw = _gateway(tmp_path, FakeTriton())
    served = gw.models.target(MODEL)
    batch = validate(served.schema, training_records(10, seed=1), 100)

    async def test() -> None:
        chunked = FakeTriton()
        split = await infer_in_chunks(chunked, served, batch, 4, "big")
        assert sorted((rows, rid) for _m, _v, rows, rid in chunked.calls) == [(2, "big.2"), (4, "big.0"), (4, "big.1")]
        whole = FakeTriton()
        once = await infer_in_chunks(whole, served, batch, None, "big")
        assert whole.calls == [(MODEL, 1, 10, "big")]
        assert split.shape == (10, 1) and split.dtype == np.float32
        np.testing.assert_array_equal(split, once)

    asyncio.run(test())


def test_a_shadowed_prediction_is_mirrored_and_its_feedback_scores_both_versions(tmp_path: Path) -> None:
    fake = FakeTriton()
    gw = _gateway(tmp_path, fake, challenger=2)
    gw.policies.set(MODEL, TrafficPolicy(canary_share=0.0, shadow=True))

    async def test(gw: Gateway) -> None:
        _body, headers = await gw.predict(MODEL, "mirror-1", given_body(RECORDS))
        assert headers["x-model-version"] == "1"
        await gw.shadow.drain(5.0)
        assert sorted((v, rid) for _m, v, _rows, rid in fake.calls) == [
            (1, "mirror-1"),
            (2, f"mirror-1{SHADOW_SUFFIX}"),
        ]
        truth = [{"ghi_wm2": 100.0}, None, {"ghi_wm2": 300.0}]
        answer = FeedbackResponse.model_validate_json(
            await gw.join_outcome(given_body({"request_id": "mirror-1", "outcomes": truth}))
        )
        assert (answer.request_id, answer.model, answer.version, answer.outcomes) == ("mirror-1", MODEL, 1, 2)
        with pytest.raises(errors.DuplicateFeedback):
            await gw.join_outcome(given_body({"request_id": "mirror-1", "outcomes": truth}))

    _run(test, gw)
    exposition = gw.metrics.exposition().decode()
    for version in ("1", "2"):
        assert metric_value(exposition, "modelops_gateway_feedback_outcomes_total", model=MODEL, version=version) == 2
    assert metric_value(exposition, "modelops_gateway_shadow_requests_total", version="2", outcome="ok") == 1


def test_feedback_is_refused_when_switched_off(tmp_path: Path) -> None:
    gw = _gateway(tmp_path, FakeTriton(), feedback_enabled=False)

    async def test(gw: Gateway) -> None:
        read, calls = _unread()
        with pytest.raises(ModelNotReady, match="switched off"):
            await gw.join_outcome(read)
        assert calls == []

    _run(test, gw)


# -- the one error shape -------------------------------------------------------------------------
def test_every_error_body_has_one_shape_built_in_one_place() -> None:
    def shape(body: dict[str, Any]) -> tuple[str, ...]:
        assert list(body) == ["error"]
        return tuple(body["error"])

    expected = ("code", "message", "field")
    assert shape(errors.error_body("c", "m")) == expected
    assert InvalidInput("bad", field="x").body() == errors.error_body("invalid_input", "bad", "x")
    assert GatewayError("boom").body() == errors.error_body("internal_error", "boom")
    assert errors.internal_error_body() == errors.error_body("internal_error", "internal error; it was logged")
    assert errors.http_error_body(404) == errors.error_body("not_found", "no such route; see /docs")
    assert errors.http_error_body(405) == errors.error_body("method_not_allowed", "method not allowed on this route")
    assert errors.http_error_body(418) == errors.error_body("http_error", "request not accepted")


def test_the_fast_path_and_the_framework_answer_errors_alike(tmp_path: Path) -> None:
    write_repository(tmp_path / "repo")
    settings = _settings(tmp_path)
    with TestClient(create_app(settings, factory(FakeTriton())), raise_server_exceptions=False) as client:
        fast = client.post("/models/no_such_model/predict", json=RECORDS)  # GatewayApp.__call__
        assert fast.status_code == 404 and fast.json()["error"]["code"] == "model_not_found"
        route = client.get("/nowhere")  # FastAPI's 404
        assert route.json() == errors.http_error_body(404)
        method = client.get("/predict")  # the fast path takes POST only
        assert method.status_code == 405 and method.json() == errors.http_error_body(405)
        too_long = client.post(f"/models/{'a' * 65}/predict", json=RECORDS)  # past the fast path: FastAPI validates
        assert too_long.status_code == 422
        assert too_long.json() == errors.error_body("invalid_input", "invalid request parameter", "name")


# -- non-finite predictions: a 502 of their own, never a null in a 200 ------------------------------
@dataclass
class _NonFiniteTriton(FakeTriton):
    """The fake, answering ``value`` (NaN, infinity) for the last row of every call to ``versions``."""

    value: float = math.nan
    versions: tuple[int, ...] = (1,)

    async def infer(
        self, model: str, version: int, tensors: dict[str, np.ndarray], outputs: list[str], request_id: str = ""
    ) -> dict[str, np.ndarray]:
        answer = await super().infer(model, version, tensors, outputs, request_id)
        if version in self.versions:
            for values in answer.values():
                values[-1] = self.value
        return answer


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("records", [RECORDS[0], RECORDS], ids=["one-record", "a-list"])
def test_a_non_finite_prediction_is_a_502_of_its_own_never_a_null_in_a_200(
    tmp_path: Path, value: float, records: Any
) -> None:
    fake = _NonFiniteTriton(value=value)
    gw = _gateway(tmp_path, fake)
    rows = len(records) if isinstance(records, list) else 1

    async def test(gw: Gateway) -> None:
        with pytest.raises(errors.NonFinitePrediction) as raised:
            await gw.predict(MODEL, "nan-1", given_body(records))
        exc = raised.value
        assert (exc.status_code, exc.code, exc.headers["x-request-id"]) == (502, "non_finite_prediction", "nan-1")
        assert f"v1 computed a value that is not a finite number (NaN or infinity) for 1 of {rows} record" in (
            exc.message
        )
        assert "a fault of the model version, not of the request" in exc.message  # the records are in range
        assert "report the request_id" in exc.message
        sent = [str(v) for v in RECORDS[0].values() if isinstance(v, float)] + [RECORDS[0]["station_type"]]
        assert not any(v in exc.message for v in sent)  # the payload is never echoed
        with pytest.raises(errors.UnknownRequestId):  # nothing stored for feedback to join
            await gw.join_outcome(
                given_body({"request_id": "nan-1", "outcomes": [None] * (rows - 1) + [{"ghi_wm2": 1}]})
            )

    _run(test, gw)
    exposition = gw.metrics.exposition().decode()
    counted = {"model": MODEL, "version": "1", "route": "/predict", "status": "502", "code": "non_finite_prediction"}
    assert metric_value(exposition, "modelops_gateway_requests_total", **counted) == 1.0
    assert metric_value(exposition, "modelops_gateway_non_finite_predictions_total", version="1", call="predict") == 1
    assert metric_value(exposition, "modelops_gateway_drift_window_records", version="1") in (None, 0)  # not binned


def test_a_non_finite_prediction_of_records_with_out_of_range_values_says_so(tmp_path: Path) -> None:
    """The contract accepts (and flags) values far outside the trained ranges; they can overflow a model."""
    gw = _gateway(tmp_path, _NonFiniteTriton())
    far = [RECORDS[0], dict(RECORDS[1], temperature_c=3.0e38)]  # the last record: the fake answers NaN for it

    async def test(gw: Gateway) -> None:
        with pytest.raises(errors.NonFinitePrediction) as raised:
            await gw.predict(MODEL, "far-1", given_body(far))
        message = raised.value.message
        assert "for 1 of 2 record(s)" in message and "1 of them had values outside the trained ranges" in message
        assert "send values within the trained ranges" in message and "3e+38" not in message
        with pytest.raises(errors.NonFinitePrediction, match="a fault of the model version, not of the request"):
            await gw.predict(MODEL, "near-1", given_body(RECORDS[:2]))

    _run(test, gw)


def test_a_non_finite_prediction_answers_502_over_http_and_in_chunks(tmp_path: Path) -> None:
    write_repository(tmp_path / "repo")
    with TestClient(create_app(_settings(tmp_path), factory(_NonFiniteTriton()))) as client:
        resp = client.post("/predict", json=RECORDS, headers={"x-request-id": "nan-http"})
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "non_finite_prediction" and resp.headers["x-request-id"] == "nan-http"
    assert b"null" not in resp.content.replace(b'"field":null', b"")
    gw = _gateway(tmp_path, FakeTriton())
    served = gw.models.target(MODEL)
    batch = validate(served.schema, training_records(10, seed=1), 100)

    async def chunks() -> None:
        with pytest.raises(errors.NonFinitePrediction, match="for 3 of 10 record"):  # the last row of each chunk
            await infer_in_chunks(_NonFiniteTriton(), served, batch, 4, "big")

    asyncio.run(chunks())


def test_a_non_finite_challenger_answer_is_counted_and_never_stored_or_compared(tmp_path: Path) -> None:
    fake = _NonFiniteTriton(versions=(2,))
    gw = _gateway(tmp_path, fake, challenger=2)
    gw.policies.set(MODEL, TrafficPolicy(canary_share=0.0, shadow=True))

    async def test(gw: Gateway) -> None:
        body, _headers = await gw.predict(MODEL, "mirror-nan", given_body(RECORDS))
        assert all(math.isfinite(p["ghi_wm2"]) for p in PredictResponse.model_validate_json(body).predictions)
        await gw.shadow.drain(5.0)
        assert [v for _m, v, _rows, _rid in fake.calls] == [1, 2]
        assert gw.feedback is not None and gw.feedback.flush()
        assert gw.feedback._fetch(f"mirror-nan{SHADOW_SUFFIX}") is None  # the challenger's NaN is not stored
        truth = [{"ghi_wm2": 100.0}, None, {"ghi_wm2": 300.0}]
        joined = FeedbackResponse.model_validate_json(
            await gw.join_outcome(given_body({"request_id": "mirror-nan", "outcomes": truth}))
        )
        assert (joined.version, joined.outcomes) == (1, 2)  # the champion is scored; the challenger is not

    _run(test, gw)
    exposition = gw.metrics.exposition().decode()
    assert metric_value(exposition, "modelops_gateway_shadow_requests_total", version="2", outcome="non_finite") == 1
    assert metric_value(exposition, "modelops_gateway_non_finite_predictions_total", version="2", call="shadow") == 1
    assert metric_value(exposition, "modelops_gateway_shadow_disagreement_count", challenger_version="2") in (None, 0)
    assert metric_value(exposition, "modelops_gateway_feedback_outcomes_total", version="2") is None


def test_the_feedback_store_never_stores_a_non_finite_prediction(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "feedback.db", retention_s=3600, window_s=3600)
    store.start()
    try:
        for request_id, value in (("finite", 1.0), ("nan", math.nan), ("inf", math.inf)):
            values = np.array([[2.0], [value]], dtype=np.float32)
            store.submit(StoredPrediction(request_id, MODEL, 1, time.time(), ("ghi_wm2",), values))
        assert store.flush()
        assert store.join("finite", [{"ghi_wm2": 3.0}, {"ghi_wm2": 3.0}]).outcomes == 2
        for request_id in ("nan", "inf"):
            with pytest.raises(errors.UnknownRequestId):  # never a 500, never a NaN in the quality sums
                store.join(request_id, [{"ghi_wm2": 3.0}, {"ghi_wm2": 3.0}])
        assert [(q.n, q.sum_sq) for q in store.quality()] == [(2, 5.0)]
    finally:
        store.close()
