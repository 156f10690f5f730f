"""The shared on-disk format: schema rules, compatibility, profiles, routing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from modelspec import (
    CategoricalFeature,
    CategoricalProfile,
    ModelSchema,
    NumericFeature,
    NumericProfile,
    OutputSpec,
    Routing,
    breaking_changes,
)
from modelspec.profile import psi


def schema(**changes) -> ModelSchema:
    features = changes.pop(
        "features",
        [
            NumericFeature(name="temp_c", minimum=-10, maximum=40, example=20),
            NumericFeature(name="cloud", minimum=0, maximum=10, nullable=True, example=5),
            CategoricalFeature(name="sector", categories=["N", "S"], example="N"),
        ],
    )
    return ModelSchema(model_name="m", features=features, outputs=[OutputSpec(name="y")], **changes)


def test_example_record_and_json_schema() -> None:
    s = schema()
    assert s.example_record() == {"temp_c": 20, "cloud": 5, "sector": "N"}
    js = s.record_json_schema()
    assert js["required"] == ["temp_c", "sector"]
    assert js["properties"]["cloud"]["type"] == ["number", "null"]
    assert js["properties"]["sector"]["enum"] == ["N", "S"]
    assert js["additionalProperties"] is False


@pytest.mark.parametrize(
    "bad",
    [
        lambda: NumericFeature(name="x", minimum=2, maximum=1, example=1),
        lambda: NumericFeature(name="Bad-Name", minimum=0, maximum=1, example=0),
        lambda: NumericFeature(name="x", minimum=0, maximum=float("inf"), example=0),
        lambda: CategoricalFeature(name="c", categories=["a", "a"], example="a"),
        lambda: CategoricalFeature(name="c", categories=["a"], example="b"),
        lambda: CategoricalFeature(name="c", categories=["a"], unknown_policy="fallback", example="a"),
        lambda: schema(features=[NumericFeature(name="x", minimum=0, maximum=1, example=0)] * 2),
        lambda: ModelSchema(model_name="../etc", features=[], outputs=[OutputSpec(name="y")]),
    ],
)
def test_invalid_schemas_are_refused(bad) -> None:
    with pytest.raises(ValidationError):
        bad()


def test_compatible_changes_are_not_breaking() -> None:
    live = schema()
    wider = schema(
        features=[
            NumericFeature(name="temp_c", minimum=-20, maximum=50, example=20),
            NumericFeature(name="cloud", minimum=0, maximum=10, nullable=True, example=5),
            CategoricalFeature(name="sector", categories=["N", "S", "E"], example="N"),
            NumericFeature(name="new_optional", minimum=0, maximum=1, nullable=True, example=0),
        ]
    )
    assert breaking_changes(live, wider) == []


def test_breaking_changes_are_named() -> None:
    live = schema()
    broken = schema(
        features=[
            NumericFeature(name="temp_c", minimum=0, maximum=40, range_policy="reject", example=20),
            NumericFeature(name="cloud", minimum=0, maximum=10, example=5),
            CategoricalFeature(name="sector", categories=["N"], example="N"),
            NumericFeature(name="required_new", minimum=0, maximum=1, example=0),
        ]
    )
    problems = "\n".join(breaking_changes(live, broken))
    assert "'temp_c' rejects values" in problems
    assert "'cloud' is no longer nullable" in problems
    assert "'sector' lost categories ['S']" in problems
    assert "'required_new' is required" in problems
    dropped = schema(features=[NumericFeature(name="temp_c", minimum=-10, maximum=40, example=20)])
    assert any("'sector' was removed" in p for p in breaking_changes(live, dropped))


def test_a_stricter_policy_is_breaking_even_with_the_same_or_a_wider_range() -> None:
    """flag -> reject and fallback -> reject turn answers clients got (200) into 422: both must be reported."""
    live = schema(
        features=[
            NumericFeature(name="temp_c", minimum=-10, maximum=40, range_policy="flag", example=20),
            CategoricalFeature(
                name="sector", categories=["N", "S", "E"], unknown_policy="fallback", fallback="N", example="N"
            ),
        ]
    )
    stricter = schema(
        features=[
            NumericFeature(name="temp_c", minimum=-20, maximum=50, range_policy="reject", example=20),
            CategoricalFeature(name="sector", categories=["N", "S", "E"], unknown_policy="reject", example="N"),
        ]
    )
    problems = "\n".join(breaking_changes(live, stricter))
    assert "'temp_c' rejects values the live version accepts: its range policy changed from flag to reject" in problems
    assert "'sector' rejects values the live version accepts: its unknown policy changed from fallback" in problems
    # The other way round is a widening, and a reject range that only widens stays compatible.
    assert breaking_changes(stricter, live) == []
    widened = schema(
        features=[
            NumericFeature(name="temp_c", minimum=-30, maximum=60, range_policy="reject", example=20),
            CategoricalFeature(name="sector", categories=["N", "S", "E"], unknown_policy="reject", example="N"),
        ]
    )
    assert breaking_changes(stricter, widened) == []


def test_numeric_profile_bins_and_missing() -> None:
    values = np.r_[np.arange(100, dtype=float), [np.nan] * 25]
    p = NumericProfile.from_values(values)
    assert p.missing_rate == pytest.approx(0.2)
    assert len(p.proportions) == len(p.edges) + 1
    assert sum(p.proportions) == pytest.approx(1.0)
    assert p.bin_of(-5) == 0 and p.bin_of(1e9) == len(p.edges)


def test_categorical_profile() -> None:
    p = CategoricalProfile.from_values(["N", "N", "S", None], ["N", "S", "E"])
    assert p.proportions == {"N": pytest.approx(2 / 3), "S": pytest.approx(1 / 3), "E": 0.0}
    assert p.missing_rate == 0.25


def test_psi_is_zero_for_equal_and_large_for_shifted() -> None:
    base = [0.25, 0.25, 0.25, 0.25]
    assert psi(base, base) == pytest.approx(0.0)
    assert psi(base, [0.7, 0.1, 0.1, 0.1]) > 0.25
    with pytest.raises(ValueError, match="bins differ"):
        psi(base, [1.0])


def test_psi_matches_values_computed_by_hand() -> None:
    """sum((a - e) * ln(a / e)): a scaled or otherwise wrong formula must fail here, not only a threshold."""
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5) = 0.25 ln 2 + 0.25 ln 1.5 = 0.25 ln 3
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * np.log(3.0), rel=1e-12)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.2746530722, rel=1e-9)
    # an empty bin is floored at 1e-4: (1e-4 - 0.5) ln(1e-4 / 0.5) + (1 - 0.5) ln(1 / 0.5)
    assert psi([0.5, 0.5], [0.0, 1.0]) == pytest.approx(4.6043185, rel=1e-7)
    # symmetric in its arguments
    assert psi([0.25, 0.75], [0.5, 0.5]) == pytest.approx(psi([0.5, 0.5], [0.25, 0.75]), rel=1e-12)


def test_routing_round_trip_is_atomic(tmp_path: Path) -> None:
    assert Routing.read(tmp_path) is None
    r = Routing(model_name="m", champion=3, challenger=4, previous_champion=2)
    r.write(tmp_path)
    assert Routing.read(tmp_path) == r
    assert r.loaded_versions() == [2, 3, 4]
    assert [p.name for p in tmp_path.iterdir()] == ["routing.json"]  # no temp file left behind
