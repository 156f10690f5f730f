"""``modelops bench`` end to end against a stand-in gateway (real Locust process), and the comparison logic.

The stand-in answers ``GET /models`` with a record schema and ``POST /predict`` with 200 (or
503 when told to fail), so the whole gate (payloads, Locust, statistics, budgets, reports, exit
code) runs without Triton or MLflow. The real stack is exercised in tests/integration.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmarks.cli import add_bench_parser, main
from benchmarks.compare_report import comparison_rows, markdown_report, to_document
from benchmarks.compare_results import CompareOptions, CompareOutcome, LoadStep, SweepPoint, VariantResult
from benchmarks.compare_targets import judge_targets
from benchmarks.gate import ServedModel
from benchmarks.loadrun import ENGINES, HttpTarget, Load, run_load
from benchmarks.payloads import PreparedRequest
from benchmarks.peers import config_without_batching
from benchmarks.stats import GeneratorHealth, WindowStats
from modelspec import ModelSchema, NumericFeature, OutputSpec, Routing, ServingOptions
from modelspec.repository import render_config, validate_config

SCHEMA = ModelSchema(
    model_name="stand_in",
    features=[NumericFeature(name="x", minimum=0, maximum=1, example=0.5)],
    outputs=[OutputSpec(name="y")],
)


class _StandIn(BaseHTTPRequestHandler):
    fail_every = 0  # answer 503 to every n-th predict (0 = never)
    count = 0

    def log_message(self, *_args: object) -> None:
        pass

    def _send(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-model-version", "3")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        fields = SCHEMA.record_json_schema()
        self._send(200, {"models": {"stand_in": {"champion": 3, "fields": fields}}, "default": "stand_in"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).count += 1
        if self.fail_every and type(self).count % self.fail_every == 0:
            self._send(503, {"error": {"code": "overloaded"}})
        else:
            self._send(200, {"predictions": [{"y": 1.0}]})


@pytest.fixture
def stand_in() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _StandIn.fail_every, _StandIn.count = 0, 0
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _budgets(tmp_path: Path, **latency: float) -> Path:
    path = tmp_path / "budgets.yaml"
    lat = ", ".join(f"{k}: {v}" for k, v in latency.items())
    path.write_text(
        "model: stand_in\n"
        f"latency_ms: {{{lat}}}\n"
        "max_error_ratio: 0.5\n"
        "cost: {price_per_hour: 1.0, currency: USD, max_per_1k: 1.0}\n"
    )
    return path


def test_a_locust_run_keeps_every_sample_and_counts_failures(stand_in: str, tmp_path: Path) -> None:
    _StandIn.fail_every = 10
    body = PreparedRequest(b'{"x": 0.5}', {"Content-Type": "application/json"}, 1)
    target = HttpTarget("stand-in", stand_in, "/predict", [body], "x-model-version")
    result = run_load(target, Load(users=2, duration_s=2), tmp_path)
    samples = result.samples
    assert samples.start.size > 20
    assert 0.05 < 1 - samples.ok.mean() < 0.15
    assert set(samples.versions) == {"3"}
    assert any("503" in e for e in samples.errors)
    assert result.health.processes == 1


def test_the_gate_passes_on_a_generous_budget_and_fails_on_an_impossible_one(stand_in: str, tmp_path: Path) -> None:
    common = ["bench", "--gateway-url", stand_in, "--no-record", "--users", "2", "--duration", "2", "--warmup", "0"]
    generous = main([*common, "--budgets", str(_budgets(tmp_path, p95=5000)), "--report-dir", str(tmp_path / "ok")])
    assert generous == 0
    summary = json.loads((tmp_path / "ok" / "summary.json").read_text())
    assert summary["passed"] and summary["version"] == 3 and summary["result"]["requests"] > 10
    assert summary["cost"]["per_1k"] > 0
    report = (tmp_path / "ok" / "report.html").read_text()
    assert "PASSED" in report and report.count("<svg") == 3

    impossible = main([*common, "--budgets", str(_budgets(tmp_path, p50=0.0001)), "--report-dir", str(tmp_path / "no")])
    assert impossible == 1
    summary = json.loads((tmp_path / "no" / "summary.json").read_text())
    assert summary["failed_budgets"] == ["latency p50"]


def test_the_gate_runs_with_the_asyncio_engine_and_says_so(stand_in: str, tmp_path: Path) -> None:
    budgets = _budgets(tmp_path, p95=5000)
    args = ["bench", "--gateway-url", stand_in, "--no-record", "--users", "2", "--duration", "2", "--warmup", "0"]
    code = main([*args, "--budgets", str(budgets), "--report-dir", str(tmp_path / "r"), "--load-engine", "asyncio"])
    assert code == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["load"]["engine"] == "asyncio" and summary["result"]["requests"] > 10
    assert summary["result"]["failures"] == 0  # the stand-in speaks HTTP/1.0 and closes every connection
    assert (tmp_path / "r" / "asyncio" / "asyncload.log").is_file() and not (tmp_path / "r" / "locust").exists()
    report = (tmp_path / "r" / "report.html").read_text()
    assert "asyncio, 1 sending process(es)" in report and "busiest asyncio process" in report


def test_an_unreachable_gateway_is_exit_code_2(tmp_path: Path) -> None:
    code = main(["bench", "--gateway-url", "http://127.0.0.1:9", "--no-record", "--report-dir", str(tmp_path)])
    assert code == 2


def test_the_sub_command_has_the_documented_options() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["bench", "--compare", "--no-record", "--workers", "2", "--steps", "1,8", "--variants", "gateway,mlflow"]
    )
    assert args.compare and not args.record and args.workers == 2
    assert args.steps == (1, 8) and args.variants == ("gateway", "mlflow")
    assert args.load_engine is None  # the gate's and the comparison's own defaults apply
    for engine in ENGINES:
        assert parser.parse_args(["bench", "--load-engine", engine]).load_engine == engine
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--load-engine", "wrk"])
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--variants", "nginx"])


def test_batching_off_config_keeps_everything_else(tmp_path: Path) -> None:
    served = ServingOptions(instance_count=2, ort_threads=3, max_batch_size=128, max_queue_delay_us=900)
    Routing(model_name="stand_in", champion=3, challenger=2, serving=served).write(tmp_path / "stand_in")
    text = config_without_batching(tmp_path, "stand_in", SCHEMA, 3)
    validate_config(text, expected_name="stand_in")
    assert "dynamic_batching" not in text
    assert "versions: [ 3 ]" in text
    assert "count: 2" in text and 'key: "ort_threads" value: { string_value: "3" }' in text
    assert "max_batch_size: 128" in text and 'key: "onnx_file"' in text
    assert text == render_config("stand_in", [SCHEMA], [3], served.model_copy(update={"dynamic_batching": False}))


def test_batching_off_config_falls_back_to_the_rendered_defaults(tmp_path: Path) -> None:
    default = render_config("stand_in", [SCHEMA], [3], ServingOptions(dynamic_batching=False))
    assert config_without_batching(None, "stand_in", SCHEMA, 3) == default
    assert config_without_batching(tmp_path, "stand_in", SCHEMA, 3) == default  # never served here
    Routing(model_name="stand_in", champion=3).write(tmp_path / "stand_in")  # written before serving was recorded
    assert config_without_batching(tmp_path, "stand_in", SCHEMA, 3) == default
    (tmp_path / "stand_in" / "routing.json").write_text("{not json")
    assert config_without_batching(tmp_path, "stand_in", SCHEMA, 3) == default


def _stats(rps: float, p50: float, p95: float, errors: float = 0.0, rows: int = 1) -> WindowStats:
    return WindowStats(
        requests=int(rps * 5),
        failures=0,
        duration_s=5,
        throughput_rps=rps,
        predictions_per_s=rps * rows,
        error_ratio=errors,
        mean_ms=p50,
        p50_ms=p50,
        p90_ms=p95,
        p95_ms=p95,
        p99_ms=p95,
        max_ms=p95,
    )


_IDLE = GeneratorHealth(processes=1, max_process_cpu=0.2, machine_busy=0.5, cpus=2, saturated=False, note="ok")


def _variant(name: str, fixed_p50: float, steps: dict[int, tuple[float, float]]) -> VariantResult:
    return VariantResult(
        name,
        f"http://{name}",
        fixed=_stats(50, fixed_p50, fixed_p50 * 2),
        fixed_health=_IDLE,
        steps=[LoadStep(u, _stats(rps, p95 / 2, p95), _IDLE) for u, (rps, p95) in steps.items()],
    )


def test_targets_are_judged_from_the_measurements(tmp_path: Path) -> None:
    variants = {
        "gateway": _variant("gateway", 3.0, {1: (500, 3), 64: (2000, 40), 128: (2100, 90)}),
        "triton": _variant("triton", 1.5, {1: (800, 2), 64: (2800, 30), 128: (2900, 70)}),
        "triton_nobatch": _variant("triton_nobatch", 1.4, {1: (900, 2), 64: (1000, 80)}),
        "mlflow": _variant("mlflow", 4.0, {1: (300, 5), 64: (600, 150)}),
    }
    sweep = [
        SweepPoint(1, _stats(1000, 5, 10), _IDLE),
        SweepPoint(64, _stats(900, 20, 40, rows=64), _IDLE),
    ]
    outcome = CompareOutcome(
        served=ServedModel("m", 1, {}, "/predict"),
        variants=variants,
        sweep=sweep,
        agreement={"gateway": 0.0, "triton": 1e-7},
        targets=[],
        options=CompareOptions("http://gw", "http://tr", "http://ml", tmp_path, p95_budget_ms=60),
        started_at="now",
        machine={"cpus": 2},
        report_dir=tmp_path,
    )
    judged = judge_targets(outcome)
    targets = {t.name.split(",")[0]: t for t in judged}
    overheads = [t for t in judged if t.name.startswith("gateway overhead")]
    assert [t.measured for t in overheads] == ["+0.50 ms", "+1.50 ms"]  # 1 user: 1.5 vs 1.0; paced: 3.0 vs 1.5
    assert all(t.met for t in overheads)
    assert targets["gateway / Triton throughput at saturation"].met is True  # 2100 / 2900
    assert targets["dynamic batching on / off"].met is True  # 2800 / 1000 at 64 users
    assert targets["gateway / mlflow models serve"].met is True  # 2000 / 300 within p95 <= 60
    linear = next(t for t in targets.values() if t.name.startswith("rows/s"))
    assert linear.met is True  # 57,600 rows/s vs 64 x 1000
    outcome.targets = judged
    rows = comparison_rows(outcome)
    assert rows[1][0] == "gateway" and rows[1][1].startswith("1.00x")
    assert rows[2][1].startswith("1.38x")  # triton saturation 2900 / 2100
    assert "| variant |" in markdown_report(outcome, "modelops bench --compare")
    assert "load generator asyncio (1 sending process(es))" in markdown_report(outcome, "modelops bench --compare")
    outcome.options = dataclasses.replace(outcome.options, load_engine="locust", processes=2)
    assert "load generator locust (2 sending process(es))" in markdown_report(outcome, "modelops bench --compare")
    assert to_document(outcome)["load_generator"] == {"engine": "locust", "processes": 2}
