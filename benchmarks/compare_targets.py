"""The comparison's targets (``benchmarks/targets/compare.yaml``) and their verdicts.

Like the release budgets (:mod:`benchmarks.budget`), what a comparison must show is data: the
targets file lists, per target, what it measures (``measure``, one of :data:`MEASURES`), the
comparison (``<=`` or ``>=``), the wanted value and its name in the reports (``description``,
which may name the comparison's options). :func:`load_targets` validates the file and names the
field that is wrong; :func:`judge_targets` turns a :class:`~benchmarks.compare_results.CompareOutcome`
into one :class:`~benchmarks.compare_results.TargetVerdict` per target (``met`` None where a
variant it needs was not measured).

How each measure is computed is code, here, because it is more than a lookup: ratios of
throughputs reached while the load generator was saturated are bounds, and say so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from benchmarks.budget import read_yaml_document
from benchmarks.compare_results import (
    TARGETS_FILE,
    CompareOptions,
    CompareOutcome,
    Measure,
    TargetVerdict,
    VariantResult,
    measure_of,
    ratio,
    sweep_efficiency,
)

Comparison = Literal["<=", ">="]


class TargetsError(ValueError):
    """A targets file is missing or invalid; the message names the file and the field."""


@dataclass(frozen=True)
class Reading:
    """A measure's value (None: not measured) and how the reports show it."""

    value: float | None
    shown: str


@dataclass(frozen=True)
class MeasureSpec:
    """How one measure is read from an outcome, and how its wanted value is written."""

    read: Callable[[CompareOutcome], Reading]
    show_wanted: Callable[[float], str]
    what: str


def _ms_over(v: float) -> str:
    return f"{v:+g} ms"


def _times(v: float) -> str:
    return f"{v:.2f}x"


def _plain(v: float) -> str:
    return f"{v:.2f}"


def _bound(result: VariantResult | None, value: float | None) -> bool:
    """Whether ``value`` was reached with a saturated load generator (so it is only a bound)."""
    return result is not None and value is not None and result.limited_by_generator(value)


def _gateway_overhead(measure: Measure) -> Callable[[CompareOutcome], Reading]:
    def read(outcome: CompareOutcome) -> Reading:
        gw = measure_of(outcome.variants.get("gateway"), measure)
        tr = measure_of(outcome.variants.get("triton"), measure)
        overhead = gw - tr if gw is not None and tr is not None else None
        return Reading(overhead, f"{overhead:+.2f} ms" if overhead is not None else "n/a")

    return read


def _one_user_p50(r: VariantResult) -> float | None:
    return r.one_user_p50


def _fixed_p50(r: VariantResult) -> float | None:
    return r.fixed_p50


def _saturation(r: VariantResult) -> float | None:
    return r.saturation_rps


def _gateway_over_triton_saturation(outcome: CompareOutcome) -> Reading:
    tr = outcome.variants.get("triton")
    gw_sat, tr_sat = measure_of(outcome.variants.get("gateway"), _saturation), measure_of(tr, _saturation)
    sat = ratio(gw_sat, tr_sat)
    # A saturated load generator makes a throughput a lower bound, so the ratio is a bound too.
    note = " (upper bound: load generator saturated on Triton)" if _bound(tr, tr_sat) else ""
    return Reading(sat, f"{sat:.2f}x{note}" if sat is not None else "n/a")


def _batching_speedup(outcome: CompareOutcome) -> Reading:
    users = outcome.options.batching_users

    def at_users(r: VariantResult) -> float | None:
        return r.rps_at(users)

    tr = outcome.variants.get("triton")
    tr_at = measure_of(tr, at_users)
    speedup = ratio(tr_at, measure_of(outcome.variants.get("triton_nobatch"), at_users))
    note = " (lower bound: load generator saturated on Triton)" if _bound(tr, tr_at) else ""
    return Reading(speedup, f"{speedup:.2f}x{note}" if speedup is not None else "n/a")


def _gateway_over_mlflow_within_p95(outcome: CompareOutcome) -> Reading:
    opts = outcome.options

    def within(r: VariantResult) -> float | None:
        return r.rps_within(opts.p95_budget_ms, opts.max_error_ratio)

    gw_within = measure_of(outcome.variants.get("gateway"), within)
    ml_within = measure_of(outcome.variants.get("mlflow"), within)
    budget = ratio(gw_within, ml_within)
    if budget is None and gw_within and ml_within == 0:
        budget = math.inf
    if budget is None:
        return Reading(None, "n/a")
    return Reading(budget, "inf (mlflow never within budget)" if budget == math.inf else f"{budget:.2f}x")


def _sweep_linearity(outcome: CompareOutcome) -> Reading:
    eff = sweep_efficiency(outcome.sweep)
    if not eff:
        return Reading(None, "n/a")
    return Reading(min(eff.values()), ", ".join(f"x{k}: {e:.2f}" for k, e in sorted(eff.items())))


MEASURES: dict[str, MeasureSpec] = {
    "gateway_overhead_p50_one_user": MeasureSpec(
        _gateway_overhead(_one_user_p50), _ms_over, "gateway p50 - Triton p50 with one request in flight, ms"
    ),
    "gateway_overhead_p50_paced": MeasureSpec(
        _gateway_overhead(_fixed_p50), _ms_over, "gateway p50 - Triton p50 in the paced fixed-load run, ms"
    ),
    "gateway_over_triton_saturation": MeasureSpec(
        _gateway_over_triton_saturation, _times, "gateway / Triton throughput at saturation"
    ),
    "batching_speedup": MeasureSpec(
        _batching_speedup, _times, "Triton / Triton without dynamic batching, throughput at batching_users"
    ),
    "gateway_over_mlflow_within_p95": MeasureSpec(
        _gateway_over_mlflow_within_p95, _times, "gateway / mlflow models serve, throughput within the p95 budget"
    ),
    "sweep_linearity": MeasureSpec(
        _sweep_linearity, _plain, "worst rows/s at k records / (k x rows/s at 1) over the records sweep"
    ),
}
"""Every measure a target can name, with what it is."""


def _format_context(options: CompareOptions) -> dict[str, Any]:
    """What a target's description and note may name: the options, and the largest sweep point."""
    context = {f.name: getattr(options, f.name) for f in fields(options)}
    context["largest_sweep"] = max(options.records_sweep, default=0)
    return context


_SAMPLE_CONTEXT = _format_context(CompareOptions("", "", "", Path()))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetSpec(_Strict):
    """One target as the file writes it."""

    measure: str = Field(description="What is measured: a key of MEASURES.")
    description: str = Field(min_length=1, description="The target's name in the reports (options allowed).")
    comparison: Comparison = Field(description="How the measurement must compare with `wanted`.")
    wanted: float = Field(allow_inf_nan=False, description="The value the measurement is compared with.")
    note: str = Field("", description="Shown after the wanted value (options allowed), e.g. 'up to 64'.")

    @field_validator("measure")
    @classmethod
    def _known_measure(cls, value: str) -> str:
        if value not in MEASURES:
            raise ValueError(f"unknown measure {value!r}; choose from {', '.join(MEASURES)}")
        return value

    @field_validator("description", "note")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        try:
            value.format(**_SAMPLE_CONTEXT)
        except KeyError as exc:
            names = ", ".join(sorted(_SAMPLE_CONTEXT))
            raise ValueError(f"names {{{exc.args[0]}}}, which is not an option; choose from {names}") from exc
        except (ValueError, IndexError, AttributeError) as exc:
            raise ValueError(f"is not a valid format string: {exc}") from exc
        return value

    def verdict(self, outcome: CompareOutcome) -> TargetVerdict:
        """This target against an outcome."""
        spec = MEASURES[self.measure]
        context = _format_context(outcome.options)
        note = self.note.format(**context)
        required = f"{self.comparison} {spec.show_wanted(self.wanted)}" + (f" {note}" if note else "")
        reading = spec.read(outcome)
        met = None
        if reading.value is not None:
            met = reading.value <= self.wanted if self.comparison == "<=" else reading.value >= self.wanted
        return TargetVerdict(self.description.format(**context), required, reading.shown, met)


class TargetsFile(_Strict):
    """A targets file: what a comparison must show."""

    description: str = ""
    targets: list[TargetSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _each_measure_once(self) -> TargetsFile:
        seen: set[str] = set()
        for t in self.targets:
            if t.measure in seen:
                raise ValueError(f"measure {t.measure!r} has two targets; keep one")
            seen.add(t.measure)
        return self


def load_targets(path: Path = TARGETS_FILE) -> TargetsFile:
    """Read and validate a targets YAML file.

    Raises:
        TargetsError: the file is missing, not YAML, or breaks the schema (the field is named).
    """
    return read_yaml_document(path, TargetsFile, TargetsError, "targets", "benchmarks/targets/compare.yaml")


def judge_targets(outcome: CompareOutcome, targets: TargetsFile | None = None) -> list[TargetVerdict]:
    """The targets, met or not, from what was measured (``met`` None where a variant is missing).

    Args:
        outcome: what the comparison measured.
        targets: the targets; None reads ``outcome.options.targets_path``.

    Raises:
        TargetsError: ``targets`` is None and the targets file is missing or invalid.
    """
    if targets is None:
        targets = load_targets(outcome.options.targets_path)
    return [t.verdict(outcome) for t in targets.targets]
