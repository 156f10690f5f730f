"""The comparison's targets file: the shipped one, its validation, and verdicts from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.compare_results import (
    TARGETS_FILE,
    CompareOptions,
    CompareOutcome,
    LoadStep,
    SweepPoint,
    VariantResult,
)
from benchmarks.compare_targets import MEASURES, TargetsError, judge_targets, load_targets
from benchmarks.gate import ServedModel
from benchmarks.stats import GeneratorHealth, WindowStats

_IDLE = GeneratorHealth(processes=1, max_process_cpu=0.2, machine_busy=0.5, cpus=2, saturated=False, note="ok")
_BUSY = GeneratorHealth(processes=1, max_process_cpu=1.0, machine_busy=1.0, cpus=2, saturated=True, note="busy")


def _stats(rps: float, p50: float, p95: float, rows: int = 1) -> WindowStats:
    return WindowStats(
        requests=int(rps * 5),
        failures=0,
        duration_s=5,
        throughput_rps=rps,
        predictions_per_s=rps * rows,
        error_ratio=0.0,
        mean_ms=p50,
        p50_ms=p50,
        p90_ms=p95,
        p95_ms=p95,
        p99_ms=p95,
        max_ms=p95,
    )


def _variant(name: str, steps: dict[int, tuple[float, float]], saturated_at: int = 0) -> VariantResult:
    return VariantResult(
        name,
        f"http://{name}",
        fixed=_stats(50, 2.0, 4.0),
        fixed_health=_IDLE,
        steps=[
            LoadStep(u, _stats(rps, p95 / 2, p95), _BUSY if u == saturated_at else _IDLE)
            for u, (rps, p95) in steps.items()
        ],
    )


def _outcome(tmp_path: Path, variants: dict[str, VariantResult], sweep: list[SweepPoint]) -> CompareOutcome:
    return CompareOutcome(
        served=ServedModel("m", 1, {}, "/predict"),
        variants=variants,
        sweep=sweep,
        agreement={},
        targets=[],
        options=CompareOptions("http://gw", "http://tr", "http://ml", tmp_path, p95_budget_ms=60),
        started_at="now",
        machine={},
        report_dir=tmp_path,
    )


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "targets.yaml"
    path.write_text(text)
    return path


def test_the_shipped_file_has_every_target_of_the_comparison_with_its_threshold() -> None:
    targets = {t.measure: t for t in load_targets(TARGETS_FILE).targets}
    assert set(targets) == set(MEASURES)
    wanted = {m: (t.comparison, t.wanted) for m, t in targets.items()}
    assert wanted == {
        "gateway_overhead_p50_one_user": ("<=", 2.0),
        "gateway_overhead_p50_paced": ("<=", 2.0),
        "gateway_over_triton_saturation": (">=", 0.7),
        "batching_speedup": (">=", 2.0),
        "gateway_over_mlflow_within_p95": (">=", 3.0),
        "sweep_linearity": (">=", 0.7),
    }


def test_verdicts_name_the_options_and_show_what_was_wanted(tmp_path: Path) -> None:
    outcome = _outcome(tmp_path, {}, [])
    verdicts = judge_targets(outcome)
    assert [(v.name, v.required, v.measured, v.met) for v in verdicts] == [
        ("gateway overhead over Triton, p50 at 1 request in flight", "<= +2 ms", "n/a", None),
        ("gateway overhead over Triton, p50 at 50 req/s paced", "<= +2 ms", "n/a", None),
        ("gateway / Triton throughput at saturation", ">= 0.70x", "n/a", None),
        ("dynamic batching on / off, 64 users", ">= 2.00x", "n/a", None),
        ("gateway / mlflow models serve, throughput at p95 <= 60 ms", ">= 3.00x", "n/a", None),
        (
            "rows/s grows ~linearly with records/request (efficiency = rows/s / (k x rows/s at 1))",
            ">= 0.70 up to 64",
            "n/a",
            None,
        ),
    ]


def test_bounds_and_misses_are_reported(tmp_path: Path) -> None:
    variants = {
        "gateway": _variant("gateway", {1: (500, 3), 64: (1000, 40)}),
        "triton": _variant("triton", {1: (800, 2), 64: (2800, 30)}, saturated_at=64),
        "triton_nobatch": _variant("triton_nobatch", {64: (2000, 80)}),
        "mlflow": _variant("mlflow", {1: (300, 75)}),  # never within p95 <= 60
    }
    sweep = [SweepPoint(1, _stats(1000, 5, 10), _IDLE), SweepPoint(64, _stats(500, 20, 40, rows=64), _IDLE)]
    verdicts = {v.name.split(",")[0]: v for v in judge_targets(_outcome(tmp_path, variants, sweep))}
    saturation = verdicts["gateway / Triton throughput at saturation"]
    assert saturation.measured == "0.36x (upper bound: load generator saturated on Triton)" and saturation.met is False
    batching = verdicts["dynamic batching on / off"]
    assert batching.measured == "1.40x (lower bound: load generator saturated on Triton)" and batching.met is False
    mlflow = verdicts["gateway / mlflow models serve"]
    assert mlflow.measured == "inf (mlflow never within budget)" and mlflow.met is True
    linear = next(v for v in verdicts.values() if v.name.startswith("rows/s"))
    assert linear.measured == "x1: 1.00, x64: 0.50" and linear.met is False


def test_another_file_changes_the_thresholds(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "targets:\n"
        "  - {measure: gateway_overhead_p50_one_user, description: 'overhead, {batching_users} users',"
        " comparison: '<=', wanted: 0.25}\n",
    )
    variants = {"gateway": _variant("gateway", {1: (500, 3)}), "triton": _variant("triton", {1: (800, 2)})}
    (verdict,) = judge_targets(_outcome(tmp_path, variants, []), load_targets(path))
    assert (verdict.name, verdict.required, verdict.measured, verdict.met) == (
        "overhead, 64 users",
        "<= +0.25 ms",
        "+0.50 ms",
        False,
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("targets: []\n", "targets: List should have at least 1 item"),
        ("targets:\n  - {measure: speed, description: x, comparison: '>=', wanted: 1}\n", "unknown measure 'speed'"),
        (
            "targets:\n  - {measure: batching_speedup, description: x, comparison: '>', wanted: 1}\n",
            "targets.0.comparison",
        ),
        ("targets:\n  - {measure: batching_speedup, description: x, comparison: '>=', wanted: .nan}\n", "wanted"),
        ("targets:\n  - {measure: batching_speedup, description: '{users}', comparison: '>=', wanted: 1}\n", "{users}"),
        ("targets:\n  - {measure: batching_speedup, comparison: '>=', wanted: 1}\n", "targets.0.description"),
        (
            "targets:\n  - {measure: batching_speedup, description: x, comparison: '>=', wanted: 1, unit: x}\n",
            "targets.0.unit: Extra inputs are not permitted",
        ),
        (
            "targets:\n"
            "  - {measure: batching_speedup, description: x, comparison: '>=', wanted: 1}\n"
            "  - {measure: batching_speedup, description: y, comparison: '>=', wanted: 2}\n",
            "'batching_speedup' has two targets",
        ),
        ("targets: [\n", "is not valid YAML"),
    ],
)
def test_an_invalid_file_is_rejected_naming_the_field(tmp_path: Path, text: str, says: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(TargetsError) as err:
        load_targets(path)
    assert str(path) in str(err.value) and says in str(err.value)


def test_a_missing_file_says_where_to_start(tmp_path: Path) -> None:
    with pytest.raises(TargetsError, match=r"no targets file at .*compare\.yaml"):
        load_targets(tmp_path / "nope.yaml")
