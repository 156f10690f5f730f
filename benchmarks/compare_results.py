"""What ``modelops bench --compare`` measured, and the measures read from it.

The records here are written by the orchestration (:mod:`benchmarks.compare`) and read by the
judging (:mod:`benchmarks.compare_targets`) and the reports (:mod:`benchmarks.compare_report`):

- :class:`CompareOptions`: what to compare and how hard to push;
- :class:`LoadStep`: one step of users of a closed-loop run; :class:`VariantResult`: one serving path;
- :class:`SweepPoint`: the gateway at one number of records per request;
- :class:`TargetVerdict`: one comparison target, met or not;
- :class:`CompareOutcome`: all of it, with the machine it ran on.

The measures of a variant (``saturation_rps``, ``one_user_p50``, ...) live on
:class:`VariantResult`, so the targets and the ratio table read the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.gate import ServedModel
from benchmarks.loadrun import LoadEngine
from benchmarks.stats import GeneratorHealth, WindowStats

VARIANTS: dict[str, str] = {
    "gateway": "gateway -> Triton (JSON records, the public contract)",
    "triton": "Triton directly (HTTP, binary tensors, dynamic batching on)",
    "triton_nobatch": "Triton directly, dynamic batching off (temporary server, same config otherwise)",
    "mlflow": "mlflow models serve, same registered version",
}
"""The serving paths a comparison can measure, in the order it measures them."""

COMPARE_LOAD_ENGINE: LoadEngine = "asyncio"
"""The comparison's load generator unless ``--load-engine`` says otherwise: the asyncio engine, whose
~0.03 ms of client CPU per request leaves the shared cores to the servers being compared (Locust's
~0.2 ms is as much as Triton's own cost, and capped Triton direct before Triton was saturated)."""

TARGETS_FILE = Path(__file__).resolve().parent / "targets" / "compare.yaml"
"""The targets a comparison is judged against unless ``--targets`` names another file
(:mod:`benchmarks.compare_targets` reads it)."""

GOOD_STEP_ERROR_RATIO = 0.01
"""A step with more failed requests than this does not count towards saturation throughput."""


@dataclass(frozen=True)
class CompareOptions:
    """What to compare and how hard to push."""

    gateway_url: str
    triton_url: str
    tracking_uri: str
    report_dir: Path
    model_repository: Path | None = None
    model: str | None = None
    variants: tuple[str, ...] = tuple(VARIANTS)
    steps: tuple[int, ...] = (1, 8, 16, 32, 64, 128)
    step_s: float = 8.0
    settle_s: float = 2.0
    fixed_rps: float = 50.0
    fixed_users: int = 5
    fixed_s: float = 10.0
    records_sweep: tuple[int, ...] = (1, 4, 16, 64)
    sweep_users: int = 16
    sweep_s: float = 8.0
    p95_budget_ms: float = 60.0
    max_error_ratio: float = 0.001
    batching_users: int = 64
    rounds: int = 1
    processes: int = 1
    mlflow_workers: int = 1
    seed: int = 0
    load_engine: LoadEngine = COMPARE_LOAD_ENGINE
    """Which load generator sends every run (:data:`benchmarks.loadrun.ENGINES`)."""
    targets_path: Path = TARGETS_FILE
    """The targets file the comparison is judged against."""


@dataclass(frozen=True)
class LoadStep:
    """One step of users of a closed-loop load run against one serving path."""

    users: int
    stats: WindowStats
    health: GeneratorHealth
    cpu_ms: float | None = None
    """CPU milliseconds the servers on the path spent per successful request."""

    @classmethod
    def of(cls, users: int, stats: WindowStats, health: GeneratorHealth) -> LoadStep:
        """A step, with the servers' CPU per request when their processes were found."""
        cpu = None
        if health.server_cores is not None and stats.throughput_rps > 0:
            cpu = health.server_cores / stats.throughput_rps * 1000.0
        return cls(users, stats, health, cpu)

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "users": self.users,
            **self.stats.as_dict(),
            "server_cpu_ms_per_request": self.cpu_ms,
            "generator": self.health.as_dict(),
        }


@dataclass
class VariantResult:
    """What one serving path did."""

    name: str
    url: str
    fixed: WindowStats | None = None
    fixed_health: GeneratorHealth | None = None
    steps: list[LoadStep] = field(default_factory=list)
    error: str | None = None
    rounds: int = 0

    @property
    def saturation_rps(self) -> float | None:
        """Highest throughput of any step with (almost) no errors."""
        good = [s.stats.throughput_rps for s in self.steps if s.stats.error_ratio <= GOOD_STEP_ERROR_RATIO]
        return max(good) if good else None

    def rps_within(self, p95_ms: float, max_error_ratio: float) -> float | None:
        """Highest throughput of a step whose p95 and error ratio stayed within budget (0 when none)."""
        if not self.steps:
            return None
        ok = [
            s.stats.throughput_rps
            for s in self.steps
            if s.stats.p95_ms <= p95_ms and s.stats.error_ratio <= max_error_ratio
        ]
        return max(ok, default=0.0)

    def rps_at(self, users: int) -> float | None:
        """Throughput of the step with ``users`` users."""
        return next((s.stats.throughput_rps for s in self.steps if s.users == users), None)

    @property
    def fixed_p50(self) -> float | None:
        """p50 latency of the paced fixed-load run, ms."""
        return self.fixed.p50_ms if self.fixed else None

    @property
    def fixed_p95(self) -> float | None:
        """p95 latency of the paced fixed-load run, ms."""
        return self.fixed.p95_ms if self.fixed else None

    @property
    def one_user_p50(self) -> float | None:
        """p50 latency with one request in flight (the closed-loop step of one user), ms."""
        return next((s.stats.p50_ms for s in self.steps if s.users == 1), None)

    @property
    def cpu_per_request(self) -> float | None:
        """Servers' CPU ms per request at the step of highest throughput."""
        good = [s for s in self.steps if s.stats.error_ratio <= GOOD_STEP_ERROR_RATIO and s.cpu_ms is not None]
        return max(good, key=lambda s: s.stats.throughput_rps).cpu_ms if good else None

    def generator_saturated(self) -> list[int]:
        """Users of the steps where the load generator was the bottleneck."""
        return [s.users for s in self.steps if s.health.saturated]

    def limited_by_generator(self, throughput: float) -> bool:
        """Whether the step that reached ``throughput`` had a saturated load generator (a lower bound)."""
        return any(s.health.saturated for s in self.steps if s.stats.throughput_rps == throughput)


Measure = Callable[[VariantResult], float | None]
"""A number read from one variant's result (None when it was not measured)."""


def measure_of(result: VariantResult | None, measure: Measure) -> float | None:
    """A measure of a variant, None when the variant was not run or failed."""
    return measure(result) if result is not None and not result.error else None


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, None when either is missing or not finite, or ``b`` is not positive."""
    if a is None or b is None or b <= 0 or not (math.isfinite(a) and math.isfinite(b)):
        return None
    return a / b


@dataclass(frozen=True)
class SweepPoint:
    """Gateway throughput at one number of records per request."""

    records_per_request: int
    stats: WindowStats
    health: GeneratorHealth


def sweep_efficiency(sweep: Sequence[SweepPoint]) -> dict[int, float]:
    """Rows/s at k records per request over k x rows/s at one record (1.0 = perfectly linear)."""
    base = next((p.stats.predictions_per_s for p in sweep if p.records_per_request == 1), None)
    if not base:
        return {}
    return {p.records_per_request: p.stats.predictions_per_s / (p.records_per_request * base) for p in sweep}


@dataclass
class TargetVerdict:
    """One comparison target against what was measured: met, missed, or not measured (``met`` None)."""

    name: str
    required: str
    measured: str
    met: bool | None

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"name": self.name, "required": self.required, "measured": self.measured, "met": self.met}


@dataclass
class CompareOutcome:
    """Everything a comparison measured."""

    served: ServedModel
    variants: dict[str, VariantResult]
    sweep: list[SweepPoint]
    agreement: dict[str, float]
    targets: list[TargetVerdict]
    options: CompareOptions
    started_at: str
    machine: dict[str, Any]
    report_dir: Path
