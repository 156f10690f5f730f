"""benchmarks.compare_agreement: a NaN prediction is a disagreement, never a pass."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from benchmarks.compare_agreement import AGREEMENT_TOLERANCE, AgreementCheck, max_relative_diff

FINITE = [np.array([100.0, 200.0]), np.array([0.5])]


def test_agreeing_predictions_differ_by_their_relative_difference() -> None:
    assert max_relative_diff(FINITE, FINITE) == 0.0
    assert max_relative_diff([np.array([101.0, 200.0]), np.array([0.5])], FINITE) == pytest.approx(0.01)
    assert max_relative_diff([np.array([100.0, 200.0]), np.array([0.25])], FINITE) == pytest.approx(0.25)  # |b| < 1


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", [0, 1])
def test_a_non_finite_prediction_on_either_side_is_an_infinite_difference(bad: float, where: int) -> None:
    """``max(worst, nan)`` kept ``worst`` and ``nan > tolerance`` is false: NaN passed the check."""
    got = [a.copy() for a in FINITE]
    got[where][-1] = bad
    assert max_relative_diff(got, FINITE) == math.inf
    assert max_relative_diff(FINITE, got) == math.inf
    shifted = [np.array([150.0, 200.0]), np.array([bad])]  # a finite difference first, the non-finite after it
    assert max_relative_diff(shifted, FINITE) == math.inf


def test_the_check_records_and_logs_a_variant_that_answers_nan(caplog: pytest.LogCaptureFixture) -> None:
    check = AgreementCheck()
    check.add("triton", FINITE)
    with caplog.at_level(logging.WARNING, logger="benchmarks.compare_agreement"):
        diff = check.add("gateway", [np.array([100.0, math.nan]), np.array([0.5])])  # a null in a 200 answer
    assert diff == math.inf and not diff <= AGREEMENT_TOLERANCE
    assert check.max_relative_diff == {"triton": 0.0, "gateway": math.inf}
    assert "gateway predicts differently from triton" in caplog.text
