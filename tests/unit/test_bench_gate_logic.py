"""Budgets, exact statistics, verdicts and load-generator health, in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.budget import BudgetError, Budgets, cost_per_1k, default_budgets_path, evaluate, load_budgets
from benchmarks.stats import Samples, generator_health, measurement_window, per_second, window_stats


def _samples(
    latencies_ms: list[float], ok: list[bool] | None = None, rows: int = 1, spacing_s: float = 0.01
) -> Samples:
    n = len(latencies_ms)
    starts = 1000.0 + np.arange(n) * spacing_s
    flags = np.ones(n) if ok is None else np.asarray(ok, dtype=float)
    return Samples.from_arrays(np.column_stack([starts, latencies_ms, flags]), test_start=1000.0, rows_per_request=rows)


def test_the_shipped_budgets_file_is_valid() -> None:
    budgets = load_budgets(default_budgets_path("solar_ghi"))
    assert budgets.model == "solar_ghi"
    assert budgets.latency_ms.p95 is not None and budgets.cost is not None


def test_a_bad_budgets_file_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text("model: m\nlatency_ms: {p95: -1}\n")
    with pytest.raises(BudgetError, match=r"latency_ms\.p95"):
        load_budgets(path)
    path.write_text("model: m\nlatncy_ms: {}\n")
    with pytest.raises(BudgetError, match="latncy_ms"):
        load_budgets(path)
    with pytest.raises(BudgetError, match="no budgets file"):
        load_budgets(tmp_path / "missing.yaml")


def test_percentiles_are_exact() -> None:
    latencies = [float(v) for v in range(1, 101)]  # 1..100 ms
    s = _samples(latencies)
    stats = window_stats(s, 0, 1e12)
    assert stats.requests == 100 and stats.failures == 0
    assert stats.p50_ms == pytest.approx(np.percentile(latencies, 50))
    assert stats.p99_ms == pytest.approx(np.percentile(latencies, 99))
    assert stats.max_ms == 100


def test_failures_count_in_the_error_ratio_not_in_latency() -> None:
    s = _samples([5.0, 5.0, 5.0, 1000.0], ok=[True, True, True, False], rows=4)
    stats = window_stats(s, 0, 1e12)
    assert stats.error_ratio == pytest.approx(0.25)
    assert stats.max_ms == 5.0
    assert stats.predictions_per_s == pytest.approx(stats.throughput_rps * 4)


def test_warmup_and_per_second_series() -> None:
    s = _samples([1.0] * 300, spacing_s=0.01)  # 100 req/s for 3 s
    t_from, t_to = measurement_window(s, warmup_s=1.0)
    stats = window_stats(s, t_from, t_to)
    assert stats.requests == pytest.approx(200, abs=2)
    assert stats.throughput_rps == pytest.approx(100, rel=0.05)
    series = per_second(s, s.test_start, t_to)
    assert [round(r["t"]) for r in series] == [0, 1, 2]
    assert all(r["rps"] == pytest.approx(100, rel=0.05) for r in series)


def test_cost_per_thousand_predictions() -> None:
    assert cost_per_1k(3.6, 1000) == pytest.approx(0.001)
    assert cost_per_1k(1.0, 0) == float("inf")


def test_verdicts_fail_on_an_impossible_budget_and_pass_on_a_generous_one() -> None:
    s = _samples([10.0] * 100)
    stats = window_stats(s, *measurement_window(s, 0))
    generous = Budgets.model_validate(
        {
            "model": "m",
            "latency_ms": {"p50": 100, "p95": 200, "p99": 400},
            "max_error_ratio": 0.01,
            "min_throughput_per_s": 1,
            "cost": {"price_per_hour": 1.0, "max_per_1k": 1.0},
        }
    )
    assert all(v.passed for v in evaluate(stats, generous))
    impossible = generous.model_copy(
        update={"latency_ms": generous.latency_ms.model_copy(update={"p50": 0.001}), "min_throughput_per_s": 1e9}
    )
    failed = {v.name for v in evaluate(stats, impossible) if not v.passed}
    assert failed == {"latency p50", "throughput"}
    assert any(not v.passed for v in evaluate(stats, generous, versions_answering=2))


def test_a_busy_load_generator_is_reported() -> None:
    trace = [[1000.0 + t, 0.95 * t] for t in range(10)]
    busy = generator_health([{"role": "local", "cpu_s": 9.5, "wall_s": 10, "cpu_trace": trace}], [])
    assert busy.saturated and "saturated" in busy.note
    # 2 CPUs for 1 s: 97% busy, the servers used half a core, Locust a tenth: the rest is other work
    trace = [(0.0, 10.0, 100.0, 0.0), (1.0, 204.0, 300.0, 50.0)]
    idle = generator_health([{"role": "worker", "cpu_s": 1, "wall_s": 10}], trace, ticks_per_s=100)
    assert not idle.saturated
    assert idle.machine_busy == pytest.approx(0.97)
    assert idle.server_cores == pytest.approx(0.5)
    assert idle.other_busy == pytest.approx(0.97 - 0.6 / 2)
    assert "compete for CPU" in idle.note and "other processes" in idle.note
    # within a window, only that window's CPU use counts
    stepped = [[1000.0 + t, 0.1 * t if t < 5 else 0.5 + 0.95 * (t - 5)] for t in range(11)]
    proc = {"role": "worker", "cpu_s": 5.25, "wall_s": 10, "cpu_trace": stepped}
    assert not generator_health([proc], [], (1000, 1005)).saturated
    assert generator_health([proc], [], (1005, 1010)).saturated


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux /proc")
def test_the_servers_under_test_are_found_by_their_port() -> None:
    import os
    import socket

    from benchmarks.machine import process_ticks, server_pids

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert os.getpid() in server_pids([port])
    assert server_pids([]) == []
    assert process_ticks([os.getpid()]) > 0
    assert process_ticks([2**22 + 7]) == 0  # a process that does not exist counts nothing
