"""``modelops bench --compare``: the same model and payloads through four serving paths, as ratios.

Variants (each optional):

- ``gateway``: the public contract, FastAPI gateway -> Triton (JSON records in);
- ``triton``: the stack's Triton directly over HTTP with binary tensors (dynamic batching on);
- ``triton_nobatch``: a temporary Triton of the same build serving the same version folder with
  the same config minus dynamic batching (:class:`benchmarks.peers.TemporaryTriton`);
- ``mlflow``: ``mlflow models serve`` of the same registered version, what a user would pick
  instead (:class:`benchmarks.peers.MlflowModelServer`).

Every variant gets the same records (generated from the served version's schema), first checked
to give the same predictions, then two load runs (Locust, or the asyncio engine with
``--load-engine asyncio``, :mod:`benchmarks.asyncload`): a paced run at a fixed low request rate
(latency at fixed load) and a closed-loop run in steps of concurrent users (throughput, and
throughput while p95 stays within the budget). A sweep of records per request on the gateway
shows how rows per second grow with batch size. Numbers on a shared machine move with its
load; the ratios between variants measured back to back are what the comparison reports.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import orjson

from benchmarks.gate import VERSION_HEADER, ServedModel, discover, machine_facts
from benchmarks.loadrun import HttpTarget, Load, LoadEngine, run_load
from benchmarks.machine import read_cpu_times
from benchmarks.payloads import (
    PreparedRequest,
    chunk,
    decode_triton_binary_response,
    encode_tensors,
    fields_from_record_schema,
    gateway_request,
    generate_records,
    mlflow_request,
    triton_binary_request,
)
from benchmarks.peers import (
    MlflowModelServer,
    ServerFailed,
    TemporaryTriton,
    config_without_batching,
    resolve_version_dir,
)
from benchmarks.report import curve_plot, fmt, html_page, html_table, markdown_table, text_table, write_json
from benchmarks.stats import (
    GeneratorHealth,
    WindowStats,
    measurement_window,
    median_stats,
    window_stats,
    worst_health,
)
from modelspec import SCHEMA_FILE, ModelSchema

log = logging.getLogger(__name__)

VARIANTS: dict[str, str] = {
    "gateway": "gateway -> Triton (JSON records, the public contract)",
    "triton": "Triton directly (HTTP, binary tensors, dynamic batching on)",
    "triton_nobatch": "Triton directly, dynamic batching off (temporary server, same config otherwise)",
    "mlflow": "mlflow models serve, same registered version",
}
REQUEST_POOL = 256
AGREEMENT_TOLERANCE = 1e-3
"""Largest relative difference between two variants' predictions on the same records."""
AGREEMENT_REQUESTS = 8
COMPARE_LOAD_ENGINE: LoadEngine = "asyncio"
"""The comparison's load generator unless ``--load-engine`` says otherwise: the asyncio engine, whose
~0.03 ms of client CPU per request leaves the shared cores to the servers being compared (Locust's
~0.2 ms is as much as Triton's own cost, and capped Triton direct before Triton was saturated)."""


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


@dataclass(frozen=True)
class StepResult:
    """One load step of a closed-loop run."""

    users: int
    stats: WindowStats
    health: GeneratorHealth
    cpu_ms: float | None = None
    """CPU milliseconds the servers on the path spent per successful request."""

    @classmethod
    def of(cls, users: int, stats: WindowStats, health: GeneratorHealth) -> StepResult:
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
    steps: list[StepResult] = field(default_factory=list)
    error: str | None = None
    rounds: int = 0

    @property
    def saturation_rps(self) -> float | None:
        """Highest throughput of any step with (almost) no errors."""
        good = [s.stats.throughput_rps for s in self.steps if s.stats.error_ratio <= 0.01]
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

    def generator_saturated(self) -> list[int]:
        """Users of the steps where the load generator was the bottleneck."""
        return [s.users for s in self.steps if s.health.saturated]


@dataclass(frozen=True)
class SweepPoint:
    """Gateway throughput at one number of records per request."""

    records_per_request: int
    stats: WindowStats
    health: GeneratorHealth


@dataclass
class Target:
    """A comparison target: its result, met or not, and the numbers behind it."""

    name: str
    required: str
    measured: str
    met: bool | None


@dataclass
class CompareOutcome:
    """Everything a comparison measured."""

    served: ServedModel
    variants: dict[str, VariantResult]
    sweep: list[SweepPoint]
    agreement: dict[str, float]
    targets: list[Target]
    options: CompareOptions
    started_at: str
    machine: dict[str, Any]
    report_dir: Path


# -- payloads ----------------------------------------------------------------------------------------


def build_requests(
    served: ServedModel, schema: ModelSchema, records_per_request: int, seed: int
) -> dict[str, list[PreparedRequest]]:
    """The same generated records encoded for each kind of target."""
    fields = fields_from_record_schema(served.record_schema)
    records = generate_records(fields, REQUEST_POOL * records_per_request, seed)
    out: dict[str, list[PreparedRequest]] = {"gateway": [], "triton": [], "mlflow": []}
    for batch in chunk(records, records_per_request):
        numeric, categorical = encode_tensors(batch, schema)
        out["gateway"].append(gateway_request(batch))
        out["triton"].append(triton_binary_request(schema, numeric, categorical))
        out["mlflow"].append(mlflow_request(schema, numeric, categorical))
    return out


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
    """The predictions a target gives for the first requests of a pool."""
    return [_predictions(kind, base_url, path, r, output) for r in requests]


def max_relative_diff(got: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """Largest ``|a - b| / max(|b|, 1)`` over paired prediction arrays."""
    diffs = [float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1.0))) for a, b in zip(got, reference, strict=True)]
    return max(diffs, default=0.0)


# -- measuring ---------------------------------------------------------------------------------------


def measure_variant(result: VariantResult, target: HttpTarget, opts: CompareOptions, workdir: Path) -> VariantResult:
    """Latency at fixed load, then throughput in steps of users, for one target."""
    pace = opts.fixed_rps / opts.fixed_users
    fixed = run_load(
        target,
        Load(
            users=opts.fixed_users,
            duration_s=opts.fixed_s,
            processes=opts.processes,
            pace_per_user=pace,
            engine=opts.load_engine,
        ),
        workdir / "fixed",
    )
    t_from, t_to = measurement_window(fixed.samples, min(opts.settle_s, opts.fixed_s / 3))
    result.fixed = window_stats(fixed.samples, t_from, t_to)
    result.fixed_health = fixed.health_in(t_from, t_to)
    ramp = run_load(
        target,
        Load(
            users=max(opts.steps),
            duration_s=0,
            processes=opts.processes,
            steps=tuple((u, opts.step_s) for u in opts.steps),
            engine=opts.load_engine,
        ),
        workdir / "steps",
    )
    origin = ramp.samples.test_start
    settle = min(opts.settle_s, opts.step_s * 0.4)
    for i, users in enumerate(opts.steps):
        start = origin + i * opts.step_s + settle
        stop = origin + (i + 1) * opts.step_s
        stats = window_stats(ramp.samples, start, stop)
        result.steps.append(StepResult.of(users, stats, ramp.health_in(start, stop)))
        log.info(
            "  %s %4d users: %7.0f req/s  p50 %6.1f ms  p95 %6.1f ms  errors %.2f%%  (%s %.0f%% of a core)",
            result.name,
            users,
            stats.throughput_rps,
            stats.p50_ms,
            stats.p95_ms,
            stats.error_ratio * 100,
            opts.load_engine,
            result.steps[-1].health.max_process_cpu * 100,
        )
    return result


def run_sweep(
    gateway_url: str, served: ServedModel, schema: ModelSchema, opts: CompareOptions, workdir: Path
) -> list[SweepPoint]:
    """Gateway rows per second at each number of records per request (closed loop, fixed users)."""
    points: list[SweepPoint] = []
    for k in opts.records_sweep:
        requests = build_requests(served, schema, k, opts.seed)["gateway"]
        ports = (_port(gateway_url), _port(opts.triton_url))
        target = HttpTarget(f"gateway x{k}", gateway_url, served.predict_path, requests, VERSION_HEADER, ports)
        load = Load(users=opts.sweep_users, duration_s=opts.sweep_s, processes=opts.processes, engine=opts.load_engine)
        run = run_load(target, load, workdir / f"x{k}")
        t_from, t_to = measurement_window(run.samples, min(opts.settle_s, opts.sweep_s / 3))
        stats = window_stats(run.samples, t_from, t_to)
        points.append(SweepPoint(k, stats, run.health_in(t_from, t_to)))
        log.info(
            "  gateway %3d records/request: %8.0f rows/s (%6.0f req/s, p95 %.1f ms)",
            k,
            stats.predictions_per_s,
            stats.throughput_rps,
            stats.p95_ms,
        )
    return points


def _port(url: str) -> int:
    """The TCP port of a base URL (0 when it has none)."""
    return urlsplit(url).port or 0


@contextlib.contextmanager
def _variant_server(
    variant: str, opts: CompareOptions, served: ServedModel, version_dir: Path, schema: ModelSchema, workdir: Path
) -> Iterator[tuple[str, str, str, tuple[int, ...]]]:
    """Start what a variant needs; yield (payload kind, base URL, path, ports of the servers on the path)."""
    infer = f"/v2/models/{served.name}/versions/{served.version}/infer"
    if variant == "gateway":
        yield "gateway", opts.gateway_url, served.predict_path, (_port(opts.gateway_url), _port(opts.triton_url))
    elif variant == "triton":
        yield "triton", opts.triton_url, infer, (_port(opts.triton_url),)
    elif variant == "triton_nobatch":
        config = config_without_batching(opts.model_repository, served.name, schema, served.version)
        with TemporaryTriton(served.name, served.version, version_dir, config, workdir) as triton:
            yield "triton", triton.http_url, infer, (triton.http_port,)
    elif variant == "mlflow":
        with MlflowModelServer(served.name, served.version, opts.tracking_uri, workdir, opts.mlflow_workers) as ml:
            yield "mlflow", ml.url, "/invocations", (ml.port,)
    else:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def run_compare(opts: CompareOptions) -> CompareOutcome:
    """Start what the variants need, check they agree, measure each in turn (``rounds`` times), judge.

    With several rounds the variants are measured in a rotating order and every number is the
    median over rounds, so load that other processes put on a shared machine affects all
    variants alike.

    Raises:
        benchmarks.gate.BenchError: the gateway does not serve the model.
        ServerFailed: the version's files cannot be found.
    """
    served = discover(opts.gateway_url, opts.model)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    machine = {**machine_facts(), "background_busy": background_busy()}
    opts.report_dir.mkdir(parents=True, exist_ok=True)
    version_dir = resolve_version_dir(
        served.name, served.version, opts.model_repository, opts.tracking_uri, opts.report_dir / "bundle"
    )
    schema = ModelSchema.model_validate_json((version_dir / SCHEMA_FILE).read_bytes())
    output = schema.outputs[0].name
    requests = build_requests(served, schema, 1, opts.seed)
    log.info("comparing %s v%d: %s", served.name, served.version, ", ".join(opts.variants))

    variants = {v: VariantResult(v, "") for v in opts.variants}
    agreement: dict[str, float] = {}
    targets: dict[str, HttpTarget] = {}
    rounds: dict[str, list[VariantResult]] = {v: [] for v in opts.variants}
    sweeps: list[list[SweepPoint]] = []
    with contextlib.ExitStack() as servers:
        reference: list[np.ndarray] | None = None
        for variant in opts.variants:
            workdir = opts.report_dir / variant
            try:
                kind, base, path, ports = servers.enter_context(
                    _variant_server(variant, opts, served, version_dir, schema, workdir)
                )
                got = predictions_of(kind, base, path, requests[kind][:AGREEMENT_REQUESTS], output)
            except ServerFailed as exc:
                variants[variant].error = str(exc)
                log.error("%s: %s", variant, exc)
                continue
            variants[variant].url = base + path
            reference = reference if reference is not None else got
            agreement[variant] = max_relative_diff(got, reference)
            if agreement[variant] > AGREEMENT_TOLERANCE:
                log.warning("%s predicts differently from %s: %.3g", variant, opts.variants[0], agreement[variant])
            header = VERSION_HEADER if kind == "gateway" else ""
            targets[variant] = HttpTarget(variant, base, path, requests[kind], header, ports)
        ready = [v for v in opts.variants if v in targets]
        for n in range(opts.rounds):
            order = ready[n % len(ready) :] + ready[: n % len(ready)] if ready else []
            if opts.rounds > 1:
                log.info("round %d of %d: %s", n + 1, opts.rounds, ", ".join(order))
            for variant in order:
                workdir = opts.report_dir / variant / f"round{n + 1}"
                rounds[variant].append(measure_variant(VariantResult(variant, ""), targets[variant], opts, workdir))
            if "gateway" in targets and opts.records_sweep:
                sweeps.append(
                    run_sweep(opts.gateway_url, served, schema, opts, opts.report_dir / "sweep" / f"round{n + 1}")
                )
    for variant, results in rounds.items():
        if results:
            combine_rounds(variants[variant], results)
    outcome = CompareOutcome(
        served=served,
        variants=variants,
        sweep=combine_sweeps(sweeps),
        agreement=agreement,
        targets=[],
        options=opts,
        started_at=started,
        machine=machine,
        report_dir=opts.report_dir,
    )
    outcome.targets = judge_targets(outcome)
    return outcome


def combine_rounds(into: VariantResult, results: list[VariantResult]) -> VariantResult:
    """Median over rounds of the fixed-load run and of each step; the busiest load generator of each."""
    fixed = [r.fixed for r in results if r.fixed]
    into.fixed = median_stats(fixed) if fixed else None
    healths = [r.fixed_health for r in results if r.fixed_health]
    into.fixed_health = worst_health(healths) if healths else None
    into.steps = []
    for i, step in enumerate(results[0].steps):
        same = [r.steps[i] for r in results if len(r.steps) > i]
        cpu = [s.cpu_ms for s in same if s.cpu_ms is not None]
        into.steps.append(
            StepResult(
                step.users,
                median_stats([s.stats for s in same]),
                worst_health([s.health for s in same]),
                float(np.median(cpu)) if cpu else None,
            )
        )
    into.rounds = len(results)
    return into


def combine_sweeps(sweeps: list[list[SweepPoint]]) -> list[SweepPoint]:
    """Median over rounds of each point of the records-per-request sweep."""
    if not sweeps:
        return []
    return [
        SweepPoint(
            point.records_per_request,
            median_stats([s[i].stats for s in sweeps]),
            worst_health([s[i].health for s in sweeps]),
        )
        for i, point in enumerate(sweeps[0])
    ]


def background_busy(seconds: float = 3.0) -> float | None:
    """Share of the machine's CPUs busy before the comparison loads anything (other people's work)."""
    before = read_cpu_times()
    time.sleep(seconds)
    after = read_cpu_times()
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


# -- judging -----------------------------------------------------------------------------------------


def _of(result: VariantResult | None, measure: Callable[[VariantResult], float | None]) -> float | None:
    """A measure of a variant, None when the variant was not run or failed."""
    return measure(result) if result is not None and not result.error else None


def _saturation(r: VariantResult) -> float | None:
    return r.saturation_rps


def _fixed_p50(r: VariantResult) -> float | None:
    return r.fixed.p50_ms if r.fixed else None


def _fixed_p95(r: VariantResult) -> float | None:
    return r.fixed.p95_ms if r.fixed else None


def _cpu_per_request(r: VariantResult) -> float | None:
    """Servers' CPU ms per request at the step of highest throughput."""
    good = [s for s in r.steps if s.stats.error_ratio <= 0.01 and s.cpu_ms is not None]
    return max(good, key=lambda s: s.stats.throughput_rps).cpu_ms if good else None


def _one_user_p50(r: VariantResult) -> float | None:
    return next((s.stats.p50_ms for s in r.steps if s.users == 1), None)


def _limited_by_generator(r: VariantResult, throughput: float) -> bool:
    """Whether the step that reached ``throughput`` had a saturated load generator (a lower bound)."""
    return any(s.health.saturated for s in r.steps if s.stats.throughput_rps == throughput)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0 or not (math.isfinite(a) and math.isfinite(b)):
        return None
    return a / b


def sweep_efficiency(sweep: Sequence[SweepPoint]) -> dict[int, float]:
    """Rows/s at k records per request over k x rows/s at one record (1.0 = perfectly linear)."""
    base = next((p.stats.predictions_per_s for p in sweep if p.records_per_request == 1), None)
    if not base:
        return {}
    return {p.records_per_request: p.stats.predictions_per_s / (p.records_per_request * base) for p in sweep}


def judge_targets(outcome: CompareOutcome) -> list[Target]:
    """The issue's targets, met or not, from what was measured (None where a variant is missing)."""
    v = outcome.variants
    opts = outcome.options
    gw, tr, nb, ml = (v.get(n) for n in ("gateway", "triton", "triton_nobatch", "mlflow"))
    targets: list[Target] = []

    # Two readings of "low load": one request in flight (closed loop), and a paced low rate, where
    # every process on the path also pays for waking up between requests.
    for label, measure in (("1 request in flight", _one_user_p50), (f"{opts.fixed_rps:g} req/s paced", _fixed_p50)):
        gw_p50, tr_p50 = _of(gw, measure), _of(tr, measure)
        overhead = gw_p50 - tr_p50 if gw_p50 is not None and tr_p50 is not None else None
        targets.append(
            Target(
                f"gateway overhead over Triton, p50 at {label}",
                "<= +2 ms",
                f"{overhead:+.2f} ms" if overhead is not None else "n/a",
                None if overhead is None else overhead <= 2.0,
            )
        )

    def bound(r: VariantResult | None, value: float | None) -> bool:
        return r is not None and value is not None and _limited_by_generator(r, value)

    gw_sat, tr_sat = _of(gw, _saturation), _of(tr, _saturation)
    sat = _ratio(gw_sat, tr_sat)
    # A saturated load generator makes a throughput a lower bound, so the ratio is a bound too.
    sat_note = " (upper bound: load generator saturated on Triton)" if bound(tr, tr_sat) else ""
    targets.append(
        Target(
            "gateway / Triton throughput at saturation",
            ">= 0.70x",
            f"{sat:.2f}x{sat_note}" if sat is not None else "n/a",
            None if sat is None else sat >= 0.7,
        )
    )

    def at_users(r: VariantResult) -> float | None:
        return r.rps_at(opts.batching_users)

    def within(r: VariantResult) -> float | None:
        return r.rps_within(opts.p95_budget_ms, opts.max_error_ratio)

    tr_at = _of(tr, at_users)
    batching = _ratio(tr_at, _of(nb, at_users))
    batching_note = " (lower bound: load generator saturated on Triton)" if bound(tr, tr_at) else ""
    targets.append(
        Target(
            f"dynamic batching on / off, {opts.batching_users} users",
            ">= 2.00x",
            f"{batching:.2f}x{batching_note}" if batching is not None else "n/a",
            None if batching is None else batching >= 2.0,
        )
    )
    gw_within, ml_within = _of(gw, within), _of(ml, within)
    budget = _ratio(gw_within, ml_within)
    if budget is None and gw_within and ml_within == 0:
        budget = math.inf
    targets.append(
        Target(
            f"gateway / mlflow models serve, throughput at p95 <= {opts.p95_budget_ms:g} ms",
            ">= 3.00x",
            ("inf (mlflow never within budget)" if budget == math.inf else f"{budget:.2f}x")
            if budget is not None
            else "n/a",
            None if budget is None else budget >= 3.0,
        )
    )
    eff = sweep_efficiency(outcome.sweep)
    if eff:
        worst_k = min(eff, key=lambda k: eff[k])
        shown = ", ".join(f"x{k}: {e:.2f}" for k, e in sorted(eff.items()))
        targets.append(
            Target(
                "rows/s grows ~linearly with records/request (efficiency = rows/s / (k x rows/s at 1))",
                ">= 0.70 up to 64",
                shown,
                eff[worst_k] >= 0.7,
            )
        )
    else:
        targets.append(Target("rows/s grows ~linearly with records/request", ">= 0.70 up to 64", "n/a", None))
    return targets


# -- reporting ---------------------------------------------------------------------------------------


def comparison_rows(outcome: CompareOutcome) -> list[list[str]]:
    """The ratio table: every variant against the gateway (absolute numbers in brackets).

    A throughput reached while the load generator was saturated is shown as ``>=``: a lower bound.
    """
    opts = outcome.options
    gw = outcome.variants.get("gateway")
    head = [
        "variant",
        "throughput at saturation",
        f"throughput at p95 <= {opts.p95_budget_ms:g} ms",
        f"throughput at {opts.batching_users} users",
        "server CPU per request",
        "p50 at 1 user",
        f"p50 at {opts.fixed_rps:g} req/s",
        f"p95 at {opts.fixed_rps:g} req/s",
    ]
    rows = [head]

    def within(r: VariantResult) -> float | None:
        return r.rps_within(opts.p95_budget_ms, opts.max_error_ratio)

    def at_users(r: VariantResult) -> float | None:
        return r.rps_at(opts.batching_users)

    columns: list[tuple[Callable[[VariantResult], float | None], str, int]] = [
        (_saturation, "req/s", 0),
        (within, "req/s", 0),
        (at_users, "req/s", 0),
        (_cpu_per_request, "ms", 3),
        (_one_user_p50, "ms", 2),
        (_fixed_p50, "ms", 2),
        (_fixed_p95, "ms", 2),
    ]
    for name, r in outcome.variants.items():
        if r.error:
            rows.append([name, f"not measured: {r.error[:60]}", *([""] * (len(head) - 2))])
            continue
        row = [name]
        for measure, unit, digits in columns:
            value, base = _of(r, measure), _of(gw, measure)
            ratio = _ratio(value, base)
            if value is None:
                row.append("-")
            else:
                # ">=": the load generator was saturated there, so the server can do at least this
                bound = ">=" if unit == "req/s" and _limited_by_generator(r, value) else ""
                shown = f"{bound}{fmt(value, digits)} {unit}"
                row.append(f"{ratio:.2f}x ({shown})" if ratio is not None else shown)
        rows.append(row)
    return rows


def target_rows(outcome: CompareOutcome) -> list[list[str]]:
    """The targets table."""
    rows = [["target", "required", "measured", "met"]]
    for t in outcome.targets:
        rows.append([t.name, t.required, t.measured, "n/a" if t.met is None else ("yes" if t.met else "NO")])
    return rows


def sweep_rows(outcome: CompareOutcome) -> list[list[str]]:
    """Records-per-request sweep on the gateway."""
    eff = sweep_efficiency(outcome.sweep)
    rows = [["records/request", "rows/s", "requests/s", "p95 ms", "linear efficiency"]]
    for p in outcome.sweep:
        rows.append(
            [
                str(p.records_per_request),
                fmt(p.stats.predictions_per_s, 0),
                fmt(p.stats.throughput_rps, 0),
                fmt(p.stats.p95_ms, 1),
                f"{eff.get(p.records_per_request, float('nan')):.2f}",
            ]
        )
    return rows


def generator_notes(outcome: CompareOutcome) -> list[str]:
    """Where the load generator or the machine limited a measurement."""
    notes: list[str] = []
    for name, r in outcome.variants.items():
        sat = r.generator_saturated()
        if sat:
            notes.append(f"{name}: load generator saturated at {', '.join(map(str, sat))} users (a lower bound there)")
        busy = [s.users for s in r.steps if (s.health.machine_busy or 0) >= 0.95]
        if busy:
            notes.append(f"{name}: machine CPUs >= 95% busy at {', '.join(map(str, busy))} users")
        other = [f"{s.users} users ({s.health.other_busy:.0%})" for s in r.steps if (s.health.other_busy or 0) >= 0.15]
        if other:
            notes.append(f"{name}: other processes busy during {', '.join(other)}")
    for p in outcome.sweep:
        if p.health.saturated:
            notes.append(f"gateway x{p.records_per_request}: load generator saturated")
    return notes


def to_document(outcome: CompareOutcome) -> dict[str, Any]:
    """JSON form of a comparison."""
    opts = outcome.options
    return {
        "kind": "modelops.compare",
        "model": outcome.served.name,
        "version": outcome.served.version,
        "started_at": outcome.started_at,
        "machine": outcome.machine,
        "load_generator": {"engine": opts.load_engine, "processes": opts.processes},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.__dict__.items()},
        "agreement_max_relative_diff": outcome.agreement,
        "variants": {
            name: {
                "description": VARIANTS.get(name, ""),
                "url": r.url,
                "error": r.error,
                "fixed": r.fixed.as_dict() if r.fixed else None,
                "fixed_generator": r.fixed_health.as_dict() if r.fixed_health else None,
                "steps": [s.as_dict() for s in r.steps],
                "saturation_rps": r.saturation_rps,
                "rps_within_p95_budget": r.rps_within(opts.p95_budget_ms, opts.max_error_ratio),
            }
            for name, r in outcome.variants.items()
        },
        "sweep": [
            {"records_per_request": p.records_per_request, **p.stats.as_dict(), "generator": p.health.as_dict()}
            for p in outcome.sweep
        ],
        "sweep_efficiency": sweep_efficiency(outcome.sweep),
        "targets": [t.__dict__ for t in outcome.targets],
        "generator_notes": generator_notes(outcome),
    }


def write_reports(outcome: CompareOutcome, command: str) -> dict[str, Path]:
    """``compare.json``, ``compare.md`` and ``compare.html`` in the report folder."""
    d = outcome.report_dir
    paths = {"json": d / "compare.json", "md": d / "compare.md", "html": d / "compare.html"}
    write_json(paths["json"], {**to_document(outcome), "command": command})
    paths["md"].write_text(markdown_report(outcome, command))
    curves = {
        name: [{"users": s.users, **s.stats.as_dict()} for s in r.steps]
        for name, r in outcome.variants.items()
        if r.steps
    }
    notes = generator_notes(outcome) or ["load generator not saturated in any step"]
    sections = [
        ("", f"<p>{_facts_line(outcome)}</p><p><code>{command}</code></p>"),
        ("Ratios (to the gateway)", html_table(comparison_rows(outcome))),
        ("Targets", html_table(target_rows(outcome))),
        ("p95 latency vs throughput", curve_plot(curves, outcome.options.p95_budget_ms) if curves else ""),
        ("Records per request (gateway)", html_table(sweep_rows(outcome)) if outcome.sweep else "<p>not run</p>"),
        ("Load generator", "<ul>" + "".join(f"<li>{n}</li>" for n in notes) + "</ul>"),
        ("Steps", _steps_html(outcome)),
    ]
    paths["html"].write_text(
        html_page(f"Serving paths compared: {outcome.served.name} v{outcome.served.version}", sections)
    )
    return paths


def _steps_html(outcome: CompareOutcome) -> str:
    rows = [
        [
            "variant",
            "users",
            "req/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "errors",
            "server CPU ms/req",
            "busiest load-generator process",
            "machine busy",
            "other work",
        ]
    ]
    for name, r in outcome.variants.items():
        for s in r.steps:
            rows.append(
                [
                    name,
                    str(s.users),
                    fmt(s.stats.throughput_rps, 0),
                    fmt(s.stats.p50_ms, 2),
                    fmt(s.stats.p95_ms, 2),
                    fmt(s.stats.p99_ms, 2),
                    f"{s.stats.error_ratio:.2%}",
                    fmt(s.cpu_ms, 3),
                    f"{s.health.max_process_cpu:.0%}",
                    f"{(s.health.machine_busy or 0):.0%}",
                    "-" if s.health.other_busy is None else f"{s.health.other_busy:.0%}",
                ]
            )
    return html_table(rows)


def _facts_line(outcome: CompareOutcome) -> str:
    m = outcome.machine
    busy = m.get("background_busy")
    other = f"{busy:.0%} of the CPUs busy with other work just before" if busy is not None else "other load unknown"
    rounds = outcome.options.rounds
    return (
        f"{outcome.started_at}; {m.get('cpus')} CPUs ({m.get('processor')}), {m.get('platform')}; {other} "
        f"(load average {m.get('loadavg_before')}); load generator {outcome.options.load_engine} "
        f"({outcome.options.processes} sending process(es)); "
        f"{'median of ' + str(rounds) + ' rounds; ' if rounds > 1 else ''}predictions agree within "
        f"{max(outcome.agreement.values(), default=0.0):.1e} (relative)"
    )


def markdown_report(outcome: CompareOutcome, command: str) -> str:
    """The comparison as Markdown (what docs/benchmarks.md shows)."""
    parts = [
        f"### {outcome.served.name} v{outcome.served.version}, {outcome.started_at}",
        "",
        _facts_line(outcome),
        "",
        f"`{command}`",
        "",
        markdown_table(comparison_rows(outcome)),
        "",
        markdown_table(target_rows(outcome)),
    ]
    if outcome.sweep:
        parts += ["", markdown_table(sweep_rows(outcome))]
    notes = generator_notes(outcome)
    if notes:
        parts += ["", *[f"- {n}" for n in notes]]
    return "\n".join(parts) + "\n"


def terminal_report(outcome: CompareOutcome) -> str:
    """The comparison as plain-text tables."""
    parts = [
        f"serving paths compared: {outcome.served.name} v{outcome.served.version}",
        _facts_line(outcome),
        "",
        text_table(comparison_rows(outcome)),
        "",
        text_table(target_rows(outcome)),
    ]
    if outcome.sweep:
        parts += ["", text_table(sweep_rows(outcome))]
    parts += ["", *generator_notes(outcome)]
    return "\n".join(parts).rstrip() + "\n"
