"""``modelops bench --compare``: the same model and payloads through four serving paths, as ratios.

Variants (each optional, :data:`benchmarks.compare_results.VARIANTS`):

- ``gateway``: the public contract, FastAPI gateway -> Triton (JSON records in);
- ``triton``: the stack's Triton directly over HTTP with binary tensors (dynamic batching on);
- ``triton_nobatch``: a temporary Triton of the same build serving the same version folder with
  the same config minus dynamic batching (:class:`benchmarks.peers.TemporaryTriton`);
- ``mlflow``: ``mlflow models serve`` of the same registered version, what a user would pick
  instead (:class:`benchmarks.peers.MlflowModelServer`).

Every variant gets the same records (generated from the served version's schema), first checked
to give the same predictions (:mod:`benchmarks.compare_agreement`), then two load runs (Locust, or
the asyncio engine with ``--load-engine asyncio``, :mod:`benchmarks.asyncload`): a paced run at a
fixed low request rate (latency at fixed load) and a closed-loop run in steps of concurrent users
(throughput, and throughput while p95 stays within the budget). A sweep of records per request on
the gateway shows how rows per second grow with batch size. Numbers on a shared machine move with
its load; the ratios between variants measured back to back are what the comparison reports.

This module is the orchestration: start what each variant needs, check agreement, measure in
rounds and take medians, then judge against the targets file (:mod:`benchmarks.compare_targets`).
The records it fills are in :mod:`benchmarks.compare_results`; the reports in
:mod:`benchmarks.compare_report`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from benchmarks.compare_agreement import AGREEMENT_REQUESTS, AgreementCheck, predictions_of
from benchmarks.compare_results import (
    VARIANTS,
    CompareOptions,
    CompareOutcome,
    LoadStep,
    SweepPoint,
    VariantResult,
)
from benchmarks.compare_targets import judge_targets, load_targets
from benchmarks.gate import VERSION_HEADER, ServedModel, discover, machine_facts
from benchmarks.loadrun import HttpTarget, Load, run_load
from benchmarks.machine import read_cpu_times
from benchmarks.payloads import (
    PreparedRequest,
    chunk,
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
from benchmarks.stats import measurement_window, median_stats, window_stats, worst_health
from modelspec import SCHEMA_FILE, ModelSchema

log = logging.getLogger(__name__)

REQUEST_POOL = 256
"""Distinct requests each variant's load cycles through."""


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
        result.steps.append(LoadStep.of(users, stats, ramp.health_in(start, stop)))
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


# -- the comparison ---------------------------------------------------------------------------------


def run_compare(opts: CompareOptions) -> CompareOutcome:
    """Start what the variants need, check they agree, measure each in turn (``rounds`` times), judge.

    With several rounds the variants are measured in a rotating order and every number is the
    median over rounds, so load that other processes put on a shared machine affects all
    variants alike.

    Raises:
        benchmarks.gate.BenchError: the gateway does not serve the model.
        ServerFailed: the version's files cannot be found.
        benchmarks.compare_targets.TargetsError: the targets file is missing or invalid (before any load).
    """
    targets = load_targets(opts.targets_path)
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
    agreement = AgreementCheck()
    http_targets: dict[str, HttpTarget] = {}
    rounds: dict[str, list[VariantResult]] = {v: [] for v in opts.variants}
    sweeps: list[list[SweepPoint]] = []
    with contextlib.ExitStack() as servers:
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
            agreement.add(variant, got)
            header = VERSION_HEADER if kind == "gateway" else ""
            http_targets[variant] = HttpTarget(variant, base, path, requests[kind], header, ports)
        ready = [v for v in opts.variants if v in http_targets]
        for n in range(opts.rounds):
            order = ready[n % len(ready) :] + ready[: n % len(ready)] if ready else []
            if opts.rounds > 1:
                log.info("round %d of %d: %s", n + 1, opts.rounds, ", ".join(order))
            for variant in order:
                workdir = opts.report_dir / variant / f"round{n + 1}"
                result = measure_variant(VariantResult(variant, ""), http_targets[variant], opts, workdir)
                rounds[variant].append(result)
            if "gateway" in http_targets and opts.records_sweep:
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
        agreement=agreement.max_relative_diff,
        targets=[],
        options=opts,
        started_at=started,
        machine=machine,
        report_dir=opts.report_dir,
    )
    outcome.targets = judge_targets(outcome, targets)
    return outcome


# -- rounds: medians over repeated measurements --------------------------------------------------------


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
            LoadStep(
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
