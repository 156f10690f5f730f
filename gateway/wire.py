"""The wire format of the JSON routes: request and response models and the documented errors.

These pydantic models are the contract clients see in ``/openapi.json`` (snapshotted in
``tests/snapshots/openapi.json``; docs/contract.md describes it field by field): their docstrings
and field descriptions are the descriptions there, so editing one changes the snapshot. The
predict and feedback paths do not build them: :mod:`gateway.dataplane` writes the same documents
with ``orjson`` (no model instance per answer on the hot path), and the tests check the answers
against these models. Every error body is built by :func:`gateway.errors.error_body`, in the shape of
:class:`ErrorResponse`. The request body of a prediction is described from the served schema
(:func:`gateway.contract.request_body_schema`), not here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from gateway.policy import TrafficPolicy


class ModelRef(BaseModel):
    """Which model version answered."""

    name: str = Field(description="Model name")
    version: int = Field(description="MLflow (= Triton) version number")
    alias: str = Field(description="champion, or challenger when the request was part of the canary share")


class FlagOut(BaseModel):
    """A value that was accepted but flagged."""

    record: int = Field(description="Index of the record in the request (0 for a single record)")
    field: str = Field(description="Feature name")
    reason: str = Field(
        description="out_of_range (outside the trained range; the feature's policy is flag) or "
        "unknown_category (mapped to the feature's declared fallback)"
    )


class PredictResponse(BaseModel):
    """Predictions in the order of the records sent, and who made them."""

    request_id: str = Field(description="Echoes a valid X-Request-ID, else a new id; use it for POST /feedback")
    model: ModelRef
    predictions: list[dict[str, float]] = Field(description="One object per record: output name -> value")
    flags: list[FlagOut] = Field(default=[], description="Accepted values worth knowing about, per record")


class ErrorDetail(BaseModel):
    """Body of every error."""

    code: str = Field(description="Stable machine-readable code, e.g. invalid_input")
    message: str = Field(description="What went wrong and what to do; never echoes the request")
    field: str | None = Field(
        default=None, description="The offending field: `wind_direction`, `[3].wind_direction`, `body`, ..."
    )


class ErrorResponse(BaseModel):
    """Every error response has this shape."""

    error: ErrorDetail


class FeedbackRequest(BaseModel):
    """The true outcome of an earlier /predict request."""

    request_id: str = Field(description="request_id of the /predict response")
    outcomes: list[dict[str, float | None] | None] = Field(
        description="One entry per record of that request, in order: the true value of each output, "
        "or null when the outcome of that record is not known"
    )


class FeedbackResponse(BaseModel):
    """What the outcome was joined to."""

    request_id: str
    model: str
    version: int
    outcomes: int = Field(description="Values joined (records x outputs given)")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Malformed JSON (field: body)",
        401: "Missing or wrong API key",
        404: "Unknown model",
        408: "The body did not arrive within body_read_timeout_s; the connection is closed (field: body)",
        413: "Body or record count over the limit (field: body)",
        415: "Not application/json (field: content-type)",
        422: "A record does not satisfy the feature schema; `field` names it",
        502: "The model server failed the request (`upstream_error`) or the model computed NaN or infinity "
        "(`non_finite_prediction`: no prediction is ever `null`)",
        503: "Model not ready, gateway overloaded or shutting down; see Retry-After",
        504: "The model server did not answer in time",
    }.items()
}
"""The documented errors of the predict and admin routes."""

FEEDBACK_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Malformed JSON",
        401: "Missing or wrong API key",
        404: "Unknown request_id (never answered, or older than the retention period)",
        408: "The body did not arrive within body_read_timeout_s; the connection is closed",
        409: "The outcome of this request_id was already received",
        413: "Body over the limit",
        415: "Not application/json",
        422: "outcomes do not match the request's records and outputs; `field` names the entry",
        503: "Feedback is switched off",
    }.items()
}
"""The documented errors of ``POST /feedback``."""


def feedback_request_body() -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of ``POST /feedback``, with an example."""
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": FeedbackRequest.model_json_schema(),
                "examples": {
                    "two records": {
                        "value": {
                            "request_id": "3f9c2a7e4b1d4e0f9a8b7c6d5e4f3a2b",
                            "outcomes": [{"ghi_wm2": 512.0}, None],
                        }
                    }
                },
            }
        },
    }


def traffic_request_body() -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of ``PUT /admin/models/{name}/traffic``, with an example."""
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": TrafficPolicy.model_json_schema(),
                "example": {"canary_share": 0.1, "shadow": True},
            }
        },
    }
