"""Do the serving paths give the same answers? The same records through every variant, compared.

A comparison of speeds means something only when every variant computes the same thing: before
any load, :func:`predictions_of` sends each variant the first requests of the same pool (the
same generated records, encoded for that variant) and :class:`AgreementCheck` keeps the largest
relative difference of each variant's predictions from the first variant that answered.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import httpx
import numpy as np
import orjson

from benchmarks.payloads import PreparedRequest, decode_triton_binary_response
from benchmarks.peers import ServerFailed

log = logging.getLogger(__name__)

AGREEMENT_TOLERANCE = 1e-3
"""Largest relative difference between two variants' predictions on the same records."""
AGREEMENT_REQUESTS = 8
"""Requests of the pool each variant answers for the check."""


def _predictions(kind: str, base_url: str, path: str, req: PreparedRequest, output: str) -> np.ndarray:
    resp = httpx.post(base_url + path, content=req.body, headers=req.headers, timeout=30)
    if resp.status_code != 200:
        raise ServerFailed(f"{kind} at {base_url}{path} answered {resp.status_code}: {resp.text[:300]}")
    if kind == "gateway":
        return np.asarray([p[output] for p in resp.json()["predictions"]], dtype=np.float64)
    if kind == "triton":
        length = resp.headers.get("inference-header-content-length")
        arrays = decode_triton_binary_response(resp.content, int(length) if length else None)
        return arrays[output].astype(np.float64).ravel()
    doc = orjson.loads(resp.content)
    preds = doc["predictions"]
    values = preds[output] if isinstance(preds, dict) else [p[output] if isinstance(p, dict) else p for p in preds]
    return np.asarray(values, dtype=np.float64).ravel()


def predictions_of(
    kind: str, base_url: str, path: str, requests: Sequence[PreparedRequest], output: str
) -> list[np.ndarray]:
    """The predictions a target gives for the first requests of a pool.

    Args:
        kind: the payload kind the target speaks: ``gateway``, ``triton`` or ``mlflow``.
        base_url: the target's base URL.
        path: the path predictions are posted to.
        requests: the requests, encoded for ``kind``.
        output: the model output compared.

    Raises:
        ServerFailed: the target answered a request with anything but 200.
    """
    return [_predictions(kind, base_url, path, r, output) for r in requests]


def max_relative_diff(got: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """Largest ``|a - b| / max(|b|, 1)`` over paired prediction arrays; infinity when one is not finite.

    A NaN prediction (a gateway's ``null``, an engine's overflow) is a disagreement, whatever the
    other side says: a NaN difference compares false with every tolerance, and ``max`` over a list
    that holds one keeps or drops it depending on where it stands.
    """
    worst = 0.0
    for a, b in zip(got, reference, strict=True):
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            return math.inf
        worst = max(worst, float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1.0), initial=0.0)))
    return worst


class AgreementCheck:
    """Each variant's predictions against the first variant's (the reference), as they come."""

    def __init__(self, tolerance: float = AGREEMENT_TOLERANCE) -> None:
        """Args:
        tolerance: the largest relative difference that is still agreement (a larger one is logged).
        """
        self.tolerance = tolerance
        self.max_relative_diff: dict[str, float] = {}
        """Per variant, its largest relative difference from the reference (0.0 for the reference)."""
        self._reference: list[np.ndarray] | None = None
        self._reference_variant = ""

    def add(self, variant: str, predictions: list[np.ndarray]) -> float:
        """Record a variant's predictions; the first ones recorded become the reference."""
        if self._reference is None:
            self._reference, self._reference_variant = predictions, variant
        diff = max_relative_diff(predictions, self._reference)
        self.max_relative_diff[variant] = diff
        if not diff <= self.tolerance:  # inf: a prediction of one of them is NaN or infinite
            log.warning("%s predicts differently from %s: %.3g", variant, self._reference_variant, diff)
        return diff
