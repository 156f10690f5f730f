"""Results of the GPU check: one record per load step, the issue's targets, and a markdown table."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

SINGLE_ROW_TARGET_RPS = 20_000.0
SINGLE_ROW_P99_BUDGET_MS = 50.0
MULTI_ROW_TARGET_ROWS_PS = 200_000.0
MULTI_ROW_SIZE = 64
BATCHING_SPEEDUP_TARGET = 3.0
BATCHING_SPEEDUP_CONCURRENCY = 64
SATURATION_BATCH_TARGET = 16.0


@dataclass(frozen=True)
class GpuStep:
    """One load step of the GPU check: a served variant, a request size and a number of requests in flight.

    (Not :class:`benchmarks.compare_results.LoadStep`, a step of users of ``modelops bench --compare``.)
    """

    model: str
    role: str
    engine: str
    dynamic_batching: bool
    rows_per_request: int
    concurrency: int
    duration_s: float
    requests: int
    errors: int
    first_error: str
    requests_per_s: float
    rows_per_s: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    mean_batch: float | None
    mean_queue_ms: float | None
    mean_compute_ms: float | None
    gpu_utilization: float | None  # mean of nv_gpu_utilization samples in the window, 0..1
    gpu_utilization_max: float | None
    client_processes: int
    client_cpu_cores: float | None  # CPU cores the load generator used in the window
    triton_cpu_cores: float | None  # ... tritonserver itself (HTTP frontend, scheduler)
    stub_cpu_cores: float | None  # ... the backend's Python processes, all instances together


def percentiles(latencies_ms: np.ndarray) -> dict[str, float | None]:
    """p50, p90, p99 and max of the latencies (None when there are none)."""
    if latencies_ms.size == 0:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    p50, p90, p99 = np.percentile(latencies_ms, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "max_ms": float(latencies_ms.max())}


@dataclass(frozen=True)
class TargetResult:
    """One target of the issue, what was measured against it, and whether it was met."""

    name: str
    description: str
    target: float
    measured: float | None
    met: bool
    detail: str


def _best(steps: list[GpuStep], key: str) -> GpuStep | None:
    return max(steps, key=lambda s: float(getattr(s, key)), default=None)


def evaluate_targets(steps: list[GpuStep]) -> list[TargetResult]:
    """Check the issue's targets (set for one H100) against the steps that measure them."""
    batched = [s for s in steps if s.role == "batched" and s.errors == 0]
    single = [s for s in batched if s.rows_per_request == 1]
    results: list[TargetResult] = []

    within = [s for s in single if s.p99_ms is not None and s.p99_ms < SINGLE_ROW_P99_BUDGET_MS]
    best = _best(within, "requests_per_s")
    results.append(
        TargetResult(
            "single_row_throughput",
            f"single-row predictions/s through Triton with p99 < {SINGLE_ROW_P99_BUDGET_MS:g} ms",
            SINGLE_ROW_TARGET_RPS,
            best.requests_per_s if best else None,
            bool(best and best.requests_per_s >= SINGLE_ROW_TARGET_RPS),
            f"at {best.concurrency} in flight, p99 {best.p99_ms:.1f} ms" if best and best.p99_ms else "no step",
        )
    )

    multi = _best([s for s in batched if s.rows_per_request == MULTI_ROW_SIZE], "rows_per_s")
    results.append(
        TargetResult(
            "multi_row_throughput",
            f"rows/s with {MULTI_ROW_SIZE}-row requests",
            MULTI_ROW_TARGET_ROWS_PS,
            multi.rows_per_s if multi else None,
            bool(multi and multi.rows_per_s >= MULTI_ROW_TARGET_ROWS_PS),
            f"at {multi.concurrency} in flight, p99 {multi.p99_ms:.1f} ms" if multi and multi.p99_ms else "no step",
        )
    )

    def at(role: str) -> GpuStep | None:
        return next(
            (
                s
                for s in steps
                if s.role == role and s.rows_per_request == 1 and s.concurrency == BATCHING_SPEEDUP_CONCURRENCY
            ),
            None,
        )

    on, off = at("batched"), at("unbatched")
    ratio = on.requests_per_s / off.requests_per_s if on and off and off.requests_per_s > 0 else None
    results.append(
        TargetResult(
            "batching_speedup",
            f"dynamic batching on / off, single-row requests, {BATCHING_SPEEDUP_CONCURRENCY} in flight",
            BATCHING_SPEEDUP_TARGET,
            ratio,
            bool(ratio is not None and ratio >= BATCHING_SPEEDUP_TARGET),
            f"{on.requests_per_s:,.0f} vs {off.requests_per_s:,.0f} req/s" if on and off else "no step",
        )
    )

    saturated = max(single, key=lambda s: (s.concurrency, s.requests_per_s), default=None)
    mean_batch = saturated.mean_batch if saturated else None
    results.append(
        TargetResult(
            "saturation_batch",
            "mean executed batch size at saturation (Triton statistics API)",
            SATURATION_BATCH_TARGET,
            mean_batch,
            bool(mean_batch is not None and mean_batch >= SATURATION_BATCH_TARGET),
            f"single-row requests, {saturated.concurrency} in flight" if saturated else "no step",
        )
    )
    return results


def _fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def markdown(doc: dict[str, Any]) -> str:
    """A short markdown report of a result document (what ``gpu_check.py`` writes as JSON)."""
    device = doc["device"]
    lines = [
        f"# GPU check: {device['name']}",
        "",
        f"Mode `{doc['mode']}`, Triton {doc['triton_version']}, {doc['host']['cpus']} CPU cores, "
        f"load generator: {doc['client_processes']} processes, {doc['created_at']}.",
        f"Command: `{doc['command']}`",
        "",
        "| model | engine | batching | rows/req | in flight | req/s | rows/s | p50 ms | p99 ms "
        "| mean exec batch | GPU util | CPU cores client/triton/stubs | errors |",
        "| --- | --- | --- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |",
    ]
    for s in doc["steps"]:
        util = s["gpu_utilization"]
        lines.append(
            f"| {s['model']} | {s['engine_short']} | {'on' if s['dynamic_batching'] else 'off'} "
            f"| {s['rows_per_request']} | {s['concurrency']} | {s['requests_per_s']:,.0f} | {s['rows_per_s']:,.0f} "
            f"| {_fmt(s['p50_ms'], '.2f')} | {_fmt(s['p99_ms'], '.2f')} | {_fmt(s['mean_batch'], '.1f')} "
            f"| {_fmt(util * 100 if util is not None else None, '.0f')}{'%' if util is not None else ''} "
            f"| {_fmt(s['client_cpu_cores'], '.1f')}/{_fmt(s['triton_cpu_cores'], '.1f')}"
            f"/{_fmt(s['stub_cpu_cores'], '.1f')} | {s['errors']} |"
        )
    lines += ["", "| target | wanted | measured | met | where |", "| --- | --: | --: | --- | --- |"]
    for t in doc["targets"]:
        spec = ",.0f" if t["target"] >= 100 else ".1f"
        lines.append(
            f"| {t['description']} | {format(t['target'], spec)} | {_fmt(t['measured'], spec)} "
            f"| {'yes' if t['met'] else 'no'} | {t['detail']} |"
        )
    lines += [
        "",
        "| model | engine | reference rows max abs error | tolerance | ok |",
        "| --- | --- | --: | --: | --- |",
    ]
    for name, v in doc["verification"].items():
        lines.append(
            f"| {name} | {'; '.join(doc['engines'].get(name, ['?']))} | {_fmt(v['max_abs_error'], '.3g')} "
            f"| {v['tolerance']:.3g} | {'yes' if v['ok'] else 'NO'} |"
        )
    if doc.get("model_alone"):
        lines += [
            "",
            "Model alone, no Triton (host-to-device copy, forward, copy back):",
            "",
            "| engine | batch | rows/s | ms per batch |",
            "| --- | --: | --: | --: |",
        ]
        for r in doc["model_alone"]:
            lines.append(f"| {r['engine']} | {r['batch']} | {r['rows_per_s']:,.0f} | {r['ms_per_batch']:.3f} |")
    return "\n".join(lines) + "\n"
