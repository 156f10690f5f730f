"""Performance budgets of a model (``benchmarks/budgets/<model>.yaml``) and the verdicts of a run.

A budgets file states the load a release must take (users, duration, records per request) and
what it must deliver under that load: p50/p95/p99 latency, the error ratio, a minimum
throughput, and what a prediction may cost. Cost comes from the price per hour of the node or
GPU that serves the model and the sustained throughput measured::

    cost per 1,000 predictions = price_per_hour / (predictions_per_s * 3.6)

:func:`evaluate` compares a measured :class:`~benchmarks.stats.WindowStats` with the budgets and
returns one :class:`Verdict` per budget; any failed verdict fails the gate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from benchmarks.stats import WindowStats

_Document = TypeVar("_Document", bound=BaseModel)

BUDGETS_DIR = Path(__file__).resolve().parent / "budgets"
"""Where the budgets file of each model lives (``<model>.yaml``)."""


class BudgetError(ValueError):
    """A budgets file is missing or invalid; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoadSpec(_Strict):
    """The load the budgets apply to (command-line options override each field)."""

    users: int = Field(32, ge=1, le=10_000, description="Concurrent closed-loop users.")
    spawn_rate: float = Field(32.0, gt=0, description="Users started per second.")
    duration_s: float = Field(30.0, gt=0, le=24 * 3600, description="Length of the run, seconds.")
    warmup_s: float = Field(3.0, ge=0, description="Seconds at the start left out of every statistic.")
    records_per_request: int = Field(1, ge=1, le=100_000, description="Records in each /predict request.")


class LatencyBudget(_Strict):
    """Upper bounds on latency percentiles of successful requests, milliseconds (None = unbounded)."""

    p50: float | None = Field(None, gt=0)
    p95: float | None = Field(None, gt=0)
    p99: float | None = Field(None, gt=0)


class CostBudget(_Strict):
    """What serving costs: the price of the node or GPU, and the most a prediction may cost."""

    price_per_hour: float = Field(gt=0, description="Price of the serving node or GPU per hour.")
    currency: str = Field("USD", min_length=1, max_length=8)
    hardware: str = Field("", description="What the price is for (shown in reports).")
    max_per_1k: float | None = Field(None, gt=0, description="Most that 1,000 predictions may cost.")


class Budgets(_Strict):
    """The budgets file of one model."""

    model: str = Field(min_length=1, description="Registered model name the budgets are for.")
    description: str = ""
    load: LoadSpec = LoadSpec()
    latency_ms: LatencyBudget = LatencyBudget()
    max_error_ratio: float = Field(0.001, ge=0, le=1, description="Failed requests / all requests.")
    min_throughput_per_s: float | None = Field(
        None, gt=0, description="Least sustained predictions (records) per second."
    )
    cost: CostBudget | None = None


def load_budgets(path: Path) -> Budgets:
    """Read and validate a budgets YAML file.

    Raises:
        BudgetError: the file is missing, not YAML, or breaks the schema (the field is named).
    """
    return read_yaml_document(path, Budgets, BudgetError, "budgets", "benchmarks/budgets/solar_ghi.yaml")


def read_yaml_document(
    path: Path, model: type[_Document], error: type[Exception], what: str, example: str
) -> _Document:
    """Read the YAML file ``path`` as the pydantic ``model`` (the budgets, the comparison's targets).

    Raises:
        error: the file is missing (``what`` names the kind of file, ``example`` one to copy), not
            YAML, or breaks the schema; the message names the file and every offending field.
    """
    if not path.is_file():
        raise error(f"no {what} file at {path}; write one like {example}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise error(f"{path} is not valid YAML: {exc}") from exc
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise error(f"{path}: {problems}") from exc


def default_budgets_path(model: str) -> Path:
    """``benchmarks/budgets/<model>.yaml``."""
    return BUDGETS_DIR / f"{model}.yaml"


def cost_per_1k(price_per_hour: float, predictions_per_s: float) -> float:
    """Cost of 1,000 predictions at a sustained throughput (infinite when nothing was served)."""
    if predictions_per_s <= 0:
        return float("inf")
    return price_per_hour / (predictions_per_s * 3.6)


@dataclass(frozen=True)
class Verdict:
    """One budget against its measurement."""

    name: str
    limit: float
    measured: float
    unit: str
    comparison: Literal["<=", ">="]
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def _check(name: str, measured: float, limit: float, unit: str, comparison: Literal["<=", ">="]) -> Verdict:
    passed = measured <= limit if comparison == "<=" else measured >= limit
    return Verdict(name, limit, measured, unit, comparison, passed)


def evaluate(stats: WindowStats, budgets: Budgets, versions_answering: int = 1) -> list[Verdict]:
    """Compare a run's statistics with the budgets; one verdict per budget that is set.

    Args:
        stats: the measurement window of the run.
        budgets: what the model must deliver.
        versions_answering: how many model versions answered; more than one means the run
            cannot be attributed to a version, which fails the gate.
    """
    verdicts: list[Verdict] = []
    if stats.requests == 0:
        verdicts.append(_check("requests completed", 0, 1, "requests", ">="))
    for label, limit in (
        ("p50", budgets.latency_ms.p50),
        ("p95", budgets.latency_ms.p95),
        ("p99", budgets.latency_ms.p99),
    ):
        if limit is not None:
            verdicts.append(_check(f"latency {label}", getattr(stats, f"{label}_ms"), limit, "ms", "<="))
    verdicts.append(_check("error ratio", stats.error_ratio, budgets.max_error_ratio, "", "<="))
    if budgets.min_throughput_per_s is not None:
        verdicts.append(
            _check("throughput", stats.predictions_per_s, budgets.min_throughput_per_s, "predictions/s", ">=")
        )
    if budgets.cost is not None and budgets.cost.max_per_1k is not None:
        measured = cost_per_1k(budgets.cost.price_per_hour, stats.predictions_per_s)
        verdicts.append(
            _check("cost per 1k predictions", measured, budgets.cost.max_per_1k, budgets.cost.currency, "<=")
        )
    if versions_answering > 1:
        verdicts.append(_check("versions answering", versions_answering, 1, "versions", "<="))
    return verdicts
