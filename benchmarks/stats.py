"""Exact statistics of a load run, from every request's sample.

Locust's own percentiles come from rounded histogram buckets and its CSV misses the last second
(GROUND.md), so the load generator (the locustfile, or :mod:`benchmarks.asyncload`) keeps every
sample (start time, latency, success) and this module computes percentiles over them with numpy. A
request belongs to the second in which it completed; latency statistics cover successful requests,
and failures count in the error ratio.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 95, 99)


@dataclass
class Samples:
    """Every request of one load run, merged over the load generator's processes."""

    start: np.ndarray
    """Start of each request, seconds since the epoch."""
    latency_ms: np.ndarray
    ok: np.ndarray
    test_start: float
    """When the test started (epoch seconds), the origin of load steps."""
    rows_per_request: int = 1
    processes: list[dict[str, Any]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)

    @property
    def end(self) -> np.ndarray:
        """Completion time of each request, epoch seconds."""
        return np.asarray(self.start + self.latency_ms / 1000.0)

    @classmethod
    def from_arrays(cls, triples: np.ndarray, test_start: float, rows_per_request: int = 1) -> Samples:
        """Build from an ``[n, 3]`` array of (start epoch s, latency ms, ok 1/0), sorted by completion."""
        triples = np.asarray(triples, dtype=np.float64).reshape(-1, 3)
        order = np.argsort(triples[:, 0] + triples[:, 1] / 1000.0, kind="stable")
        triples = triples[order]
        return cls(
            start=triples[:, 0].copy(),
            latency_ms=triples[:, 1].copy(),
            ok=triples[:, 2] > 0.5,
            test_start=test_start,
            rows_per_request=rows_per_request,
        )


@dataclass(frozen=True)
class WindowStats:
    """What happened between two instants of a run."""

    requests: int
    failures: int
    duration_s: float
    throughput_rps: float
    """Successful requests per second."""
    predictions_per_s: float
    """Successful records per second (requests x records per request)."""
    error_ratio: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def window_stats(samples: Samples, t_from: float, t_to: float) -> WindowStats:
    """Statistics of the requests that completed in ``[t_from, t_to)`` (epoch seconds)."""
    end = samples.end
    mask = (end >= t_from) & (end < t_to)
    latency = samples.latency_ms[mask]
    ok = samples.ok[mask]
    good = latency[ok]
    duration = max(t_to - t_from, 1e-9)
    requests = int(mask.sum())
    failures = int((~ok).sum())
    if good.size:
        p50, p90, p95, p99 = (float(v) for v in np.percentile(good, PERCENTILES))
        mean, worst = float(good.mean()), float(good.max())
    else:
        p50 = p90 = p95 = p99 = mean = worst = float("nan")
    return WindowStats(
        requests=requests,
        failures=failures,
        duration_s=duration,
        throughput_rps=good.size / duration,
        predictions_per_s=good.size * samples.rows_per_request / duration,
        error_ratio=failures / requests if requests else 0.0,
        mean_ms=mean,
        p50_ms=p50,
        p90_ms=p90,
        p95_ms=p95,
        p99_ms=p99,
        max_ms=worst,
    )


def median_stats(runs: list[WindowStats]) -> WindowStats:
    """Field-wise median of repeated measurements (counts are summed); one run is returned as it is."""
    if len(runs) == 1:
        return runs[0]
    fields = {k: float(np.median([getattr(r, k) for r in runs])) for k in WindowStats.__dataclass_fields__}
    fields["requests"] = sum(r.requests for r in runs)
    fields["failures"] = sum(r.failures for r in runs)
    return WindowStats(**fields)  # type: ignore[arg-type]


def measurement_window(samples: Samples, warmup_s: float) -> tuple[float, float]:
    """``(from, to)`` epoch seconds: after the warm-up, up to the last completion."""
    if samples.start.size == 0:
        return samples.test_start, samples.test_start
    t_from = samples.test_start + warmup_s
    t_to = float(samples.end.max()) + 1e-6
    return t_from, max(t_to, t_from)


def per_second(samples: Samples, t_from: float, t_to: float) -> list[dict[str, float]]:
    """One row per whole second of the window: throughput, errors and latency percentiles.

    ``t`` is seconds since the test started; percentiles are NaN in a second without successes.
    """
    rows: list[dict[str, float]] = []
    end = samples.end
    start = t_from
    while start + 0.5 <= t_to:
        stop = min(start + 1.0, t_to)
        mask = (end >= start) & (end < stop)
        ok = samples.ok[mask]
        good = samples.latency_ms[mask][ok]
        width = stop - start
        p50, p95, p99 = (float(v) for v in np.percentile(good, (50, 95, 99))) if good.size else (np.nan,) * 3
        rows.append(
            {
                "t": round(start - samples.test_start, 3),
                "rps": good.size / width,
                "predictions_per_s": good.size * samples.rows_per_request / width,
                "errors_per_s": int((~ok).sum()) / width,
                "p50_ms": p50,
                "p95_ms": p95,
                "p99_ms": p99,
            }
        )
        start = stop
    return rows


@dataclass(frozen=True)
class GeneratorHealth:
    """Whether the load generator, not the system under test, limited the run; and who used the CPUs."""

    processes: int
    max_process_cpu: float
    """Busiest sending process: CPU seconds / wall seconds (1.0 = one core)."""
    machine_busy: float | None
    """Share of all CPUs busy during the run (every process on the machine), from /proc/stat."""
    cpus: int
    saturated: bool
    note: str
    server_cores: float | None = None
    """Cores the servers under test used (their processes and children), when they could be found."""
    generator_cores: float = 0.0
    """Cores all load-generator processes used together."""
    other_busy: float | None = None
    """Share of all CPUs busy with work that is neither the servers under test nor the load generator."""

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def worst_health(healths: list[GeneratorHealth]) -> GeneratorHealth:
    """The repeat where the load generator or the machine was busiest."""
    return max(healths, key=lambda h: (h.saturated, h.max_process_cpu, h.machine_busy or 0.0))


GENERATOR_SATURATED = 0.85
"""A sending process above this share of one core is the bottleneck of the run."""
MACHINE_SATURATED = 0.95
OTHER_LOAD_NOTED = 0.15
"""Work of other processes above this share of the machine is mentioned next to the numbers."""

MachineTrace = list[tuple[float, float, float, float]]
"""``(epoch s, busy ticks, total ticks, server ticks)`` readings of /proc, about twice a second."""


def _trace_share(trace: list[list[float]] | list[tuple[float, float]], t_from: float, t_to: float) -> float | None:
    """CPU seconds per wall second of one process between two instants, from its ``(epoch, cpu s)`` trace."""
    points = [p for p in trace if t_from - 0.5 <= p[0] <= t_to + 0.5]
    if len(points) < 2 or points[-1][0] - points[0][0] < 0.5:
        return None
    return float((points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0]))


def machine_usage(
    trace: MachineTrace, t_from: float, t_to: float, ticks_per_s: float = 100.0
) -> tuple[float | None, float | None, float | None]:
    """``(share of all CPUs busy, cores used by the servers, CPUs)`` between two instants."""
    points = [p for p in trace if t_from - 0.5 <= p[0] <= t_to + 0.5]
    if len(points) < 2 or points[-1][2] <= points[0][2] or points[-1][0] <= points[0][0]:
        return None, None, None
    first, last = points[0], points[-1]
    wall = last[0] - first[0]
    busy = (last[1] - first[1]) / (last[2] - first[2])
    server = (last[3] - first[3]) / ticks_per_s / wall if last[3] or first[3] else None
    cpus = (last[2] - first[2]) / ticks_per_s / wall
    return busy, server, cpus


def generator_health(
    processes: list[dict[str, Any]],
    machine_trace: MachineTrace,
    window: tuple[float, float] | None = None,
    ticks_per_s: float = 100.0,
) -> GeneratorHealth:
    """Judge the load generator from each of its processes' CPU use (and the machine's) in ``window``.

    Without a window, or without a CPU trace, the whole run counts.
    """
    shares: dict[int, tuple[str, float]] = {}
    for p in processes:
        share = _trace_share(p.get("cpu_trace") or [], *window) if window else None
        if share is None and p.get("wall_s"):
            share = p["cpu_s"] / p["wall_s"]
        if share is not None:
            shares[int(p.get("pid", len(shares)))] = (str(p.get("role")), share)
    senders = [share for role, share in shares.values() if role != "master"]
    worst = max(senders, default=0.0)
    generator = sum(share for _, share in shares.values())
    busy, server, cpus_seen = machine_usage(machine_trace, *(window or (-math.inf, math.inf)), ticks_per_s)
    other = None
    if busy is not None and server is not None and cpus_seen:
        other = max(0.0, busy - (server + generator) / cpus_seen)
    saturated = worst >= GENERATOR_SATURATED
    cpus = os.cpu_count() or 1
    notes: list[str] = []
    if saturated:
        notes.append(
            f"load generator saturated: a sending process used {worst:.0%} of a core; results are a lower "
            "bound on what the server can do (add --workers, use --load-engine asyncio, or load from elsewhere)"
        )
    if busy is not None and busy >= MACHINE_SATURATED:
        notes.append(
            f"the machine's {cpus} CPUs were {busy:.0%} busy: the load generator and the servers compete for CPU"
        )
    if other is not None and other >= OTHER_LOAD_NOTED:
        notes.append(f"other processes kept {other:.0%} of the machine busy during the measurement")
    return GeneratorHealth(
        processes=len(senders),
        max_process_cpu=worst,
        machine_busy=busy,
        cpus=cpus,
        saturated=saturated,
        note="; ".join(notes) or "load generator not saturated",
        server_cores=server,
        generator_cores=generator,
        other_busy=other,
    )
