"""``modelops bench``: load-test the gateway's public contract and hold the result against the budgets.

One run: find out from the gateway which version serves the model and what its records look like
(``GET /models``), generate valid records from that schema, load the gateway's predict route with
Locust (or ``--load-engine asyncio``) for the budgeted time, compute exact statistics after the
warm-up, compare them with the model's budgets file, write ``summary.json`` and ``report.html``, and
(unless told not to) record the outcome on the MLflow model version that answered. A broken budget
makes the command exit 1, so a release pipeline can stop on it.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from benchmarks.budget import Budgets, Verdict, cost_per_1k, evaluate
from benchmarks.loadrun import HttpTarget, Load, LoadEngine, run_load
from benchmarks.payloads import chunk, fields_from_record_schema, gateway_request, generate_records
from benchmarks.report import cpu_account, run_report_html, verdict_table, write_json
from benchmarks.stats import measurement_window, per_second, window_stats

log = logging.getLogger(__name__)

REQUEST_POOL = 256
"""Distinct request bodies the load cycles through."""
VERSION_HEADER = "x-model-version"
GATE_LOAD_ENGINE: LoadEngine = "locust"
"""The release gate's load generator unless ``--load-engine`` says otherwise."""


class BenchError(RuntimeError):
    """The benchmark cannot run (gateway unreachable, model not served); exit code 2."""


@dataclass(frozen=True)
class ServedModel:
    """What the gateway says it serves for one model."""

    name: str
    version: int
    record_schema: dict[str, Any]
    predict_path: str


@dataclass
class GateOutcome:
    """The result of one gated run."""

    summary: dict[str, Any]
    verdicts: list[Verdict]
    report_dir: Path
    files: list[Path] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether every budget held."""
        return all(v.passed for v in self.verdicts)


def discover(gateway_url: str, model: str | None, timeout_s: float = 10.0) -> ServedModel:
    """Ask the gateway which version of ``model`` (default: its default model) is champion, and its fields.

    Raises:
        BenchError: the gateway does not answer, or does not serve the model.
    """
    try:
        resp = httpx.get(f"{gateway_url}/models", timeout=timeout_s)
        resp.raise_for_status()
        doc = resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise BenchError(f"the gateway at {gateway_url} did not list its models ({exc}); is the stack up?") from exc
    default = doc.get("default")
    name = model or default
    entry = doc.get("models", {}).get(name or "")
    if not name or entry is None:
        served = ", ".join(sorted(doc.get("models", {}))) or "none"
        raise BenchError(f"the gateway does not serve model {name!r} (it serves: {served})")
    if entry.get("champion") is None or "fields" not in entry:
        raise BenchError(f"model {name!r} has no champion serving yet; promote a version first")
    path = "/predict" if name == default else f"/models/{name}/predict"
    return ServedModel(name, int(entry["champion"]), entry["fields"], path)


def gateway_target(
    gateway_url: str, served: ServedModel, records_per_request: int, seed: int, server_ports: tuple[int, ...] = ()
) -> HttpTarget:
    """The gateway's predict route with bodies of ``records_per_request`` generated records."""
    fields = fields_from_record_schema(served.record_schema)
    records = generate_records(fields, REQUEST_POOL * records_per_request, seed)
    requests = [gateway_request(batch) for batch in chunk(records, records_per_request)]
    return HttpTarget("gateway", gateway_url, served.predict_path, requests, VERSION_HEADER, server_ports)


def preflight(target: HttpTarget, timeout_s: float = 30.0) -> None:
    """Send one request before loading, so a broken contract fails fast with the gateway's own words.

    Raises:
        BenchError: the request is not answered with 200.
    """
    first = target.requests[0]
    try:
        resp = httpx.post(target.base_url + target.path, content=first.body, headers=first.headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise BenchError(f"{target.name} at {target.base_url} did not answer: {exc}") from exc
    if resp.status_code != 200:
        raise BenchError(f"{target.name} answered {resp.status_code} to a generated record: {resp.text[:300]}")


def machine_facts() -> dict[str, Any]:
    """What the numbers were measured on."""
    load1, load5, _ = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "loadavg_before": [round(load1, 2), round(load5, 2)],
    }


def run_gate(
    *,
    gateway_url: str,
    budgets: Budgets,
    budgets_path: Path | None,
    report_dir: Path,
    model: str | None = None,
    processes: int = 1,
    seed: int = 0,
    triton_url: str | None = None,
    load_engine: LoadEngine = GATE_LOAD_ENGINE,
) -> GateOutcome:
    """Load the gateway as ``budgets.load`` says and judge the result against ``budgets``.

    ``triton_url`` (when Triton runs on this machine) lets the report split the CPU use between
    the servers, the load generator and other work. ``load_engine`` picks the load generator
    (:data:`benchmarks.loadrun.ENGINES`); the summary says which one it was.

    Raises:
        BenchError: the gateway is not reachable or does not serve the model.
        benchmarks.loadrun.LoadRunFailed: the load generator failed.
    """
    spec = budgets.load
    served = discover(gateway_url, model or budgets.model)
    if served.name != budgets.model:
        log.warning("budgets file is for %r, the run loads %r", budgets.model, served.name)
    ports = tuple(urlsplit(u).port or 0 for u in (gateway_url, triton_url or ""))
    target = gateway_target(gateway_url, served, spec.records_per_request, seed, ports)
    preflight(target)
    started = datetime.now(UTC)
    load = Load(
        users=spec.users,
        duration_s=spec.duration_s,
        spawn_rate=spec.spawn_rate,
        processes=processes,
        engine=load_engine,
    )
    result = run_load(target, load, report_dir / load_engine)
    samples = result.samples
    t_from, t_to = measurement_window(samples, spec.warmup_s)
    stats = window_stats(samples, t_from, t_to)
    versions = dict(samples.versions)
    answered = max(versions, key=lambda v: versions[v]) if versions else str(served.version)
    version = int(answered) if answered.isdigit() else served.version
    if len(versions) > 1:
        log.warning("several versions answered during the run: %s", versions)
    verdicts = evaluate(stats, budgets, versions_answering=max(1, len(versions)))
    health = result.health_in(t_from, t_to)
    passed = all(v.passed for v in verdicts)
    cost = None
    if budgets.cost is not None:
        cost = {
            "price_per_hour": budgets.cost.price_per_hour,
            "currency": budgets.cost.currency,
            "hardware": budgets.cost.hardware,
            "per_1k": cost_per_1k(budgets.cost.price_per_hour, stats.predictions_per_s),
            "predictions_per_s": stats.predictions_per_s,
        }
    summary: dict[str, Any] = {
        "kind": "modelops.loadtest",
        "model": served.name,
        "version": version,
        "versions_answering": versions,
        "target": f"{gateway_url}{served.predict_path}",
        "started_at": started.isoformat(timespec="seconds"),
        "started_epoch": int(started.timestamp()),
        "machine": machine_facts(),
        "load": {**spec.model_dump(), "processes": processes, "seed": seed, "engine": load_engine},
        "budgets_file": str(budgets_path) if budgets_path else None,
        "budgets": budgets.model_dump(mode="json"),
        "result": stats.as_dict(),
        "cost": cost,
        "generator": health.as_dict(),
        "server_cpu_ms_per_request": (
            health.server_cores / stats.throughput_rps * 1000.0
            if health.server_cores is not None and stats.throughput_rps > 0
            else None
        ),
        "errors": dict(samples.errors),
        "verdicts": [v.as_dict() for v in verdicts],
        "passed": passed,
        "failed_budgets": [v.name for v in verdicts if not v.passed],
        "series": per_second(samples, samples.test_start, t_to),
    }
    report_dir.mkdir(parents=True, exist_ok=True)
    summary_path = report_dir / "summary.json"
    html_path = report_dir / "report.html"
    write_json(summary_path, summary)
    html_path.write_text(run_report_html(summary, verdicts))
    log.info("report: %s", html_path)
    return GateOutcome(summary, verdicts, report_dir, [html_path, summary_path])


def apply_overrides(budgets: Budgets, **overrides: Any) -> Budgets:
    """``budgets`` with the load fields given on the command line replaced (None = keep)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if not given:
        return budgets
    return budgets.model_copy(update={"load": budgets.load.model_copy(update=given)})


def verdict_text(outcome: GateOutcome) -> str:
    """The terminal verdict: the table, the run's facts, and the generator's health."""
    s = outcome.summary
    r = s["result"]
    lines = [
        f"load test of {s['model']} v{s['version']} at {s['target']}: {'PASSED' if outcome.passed else 'FAILED'}",
        f"{s['load']['users']} users, {s['load']['duration_s']:g} s, {s['load']['records_per_request']} record(s)"
        f"/request; {r['requests']:,} requests measured, {r['throughput_rps']:.0f} req/s; load generator "
        f"{s['load'].get('engine', 'locust')} ({s['load']['processes']} process(es))",
        "",
        verdict_table(outcome.verdicts),
        "",
        f"CPU: {cpu_account(s)}",
        f"report: {outcome.report_dir / 'report.html'}",
    ]
    return "\n".join(lines)


def default_report_dir(root: Path, model: str | None) -> Path:
    """``<root>/<model>-<UTC timestamp>``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return root / f"{model or 'model'}-{stamp}"
