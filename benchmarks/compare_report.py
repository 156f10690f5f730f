"""The reports of ``modelops bench --compare``: terminal, Markdown, HTML and JSON.

Every report shows the same tables, built once here from a
:class:`~benchmarks.compare_results.CompareOutcome`: the ratios of every variant to the gateway
(:func:`comparison_rows`), the targets (:func:`target_rows`), the records-per-request sweep
(:func:`sweep_rows`) and where the load generator or the machine limited a measurement
(:func:`generator_notes`). :func:`terminal_report` prints them, :func:`write_reports` writes
``compare.json`` (:func:`to_document`), ``compare.md`` (:func:`markdown_report`) and
``compare.html`` (with the latency-against-throughput plot and every step) to the report folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.compare_results import (
    VARIANTS,
    CompareOutcome,
    Measure,
    VariantResult,
    measure_of,
    ratio,
    sweep_efficiency,
)
from benchmarks.report import curve_plot, fmt, html_page, html_table, markdown_table, text_table, write_json


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

    def saturation(r: VariantResult) -> float | None:
        return r.saturation_rps

    def within(r: VariantResult) -> float | None:
        return r.rps_within(opts.p95_budget_ms, opts.max_error_ratio)

    def at_users(r: VariantResult) -> float | None:
        return r.rps_at(opts.batching_users)

    def cpu(r: VariantResult) -> float | None:
        return r.cpu_per_request

    def one_user_p50(r: VariantResult) -> float | None:
        return r.one_user_p50

    def fixed_p50(r: VariantResult) -> float | None:
        return r.fixed_p50

    def fixed_p95(r: VariantResult) -> float | None:
        return r.fixed_p95

    columns: list[tuple[Measure, str, int]] = [
        (saturation, "req/s", 0),
        (within, "req/s", 0),
        (at_users, "req/s", 0),
        (cpu, "ms", 3),
        (one_user_p50, "ms", 2),
        (fixed_p50, "ms", 2),
        (fixed_p95, "ms", 2),
    ]
    for name, r in outcome.variants.items():
        if r.error:
            rows.append([name, f"not measured: {r.error[:60]}", *([""] * (len(head) - 2))])
            continue
        row = [name]
        for measure, unit, digits in columns:
            value, base = measure_of(r, measure), measure_of(gw, measure)
            times = ratio(value, base)
            if value is None:
                row.append("-")
            else:
                # ">=": the load generator was saturated there, so the server can do at least this
                bound = ">=" if unit == "req/s" and r.limited_by_generator(value) else ""
                shown = f"{bound}{fmt(value, digits)} {unit}"
                row.append(f"{times:.2f}x ({shown})" if times is not None else shown)
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
        "targets": [t.as_dict() for t in outcome.targets],
        "generator_notes": generator_notes(outcome),
    }


def write_reports(outcome: CompareOutcome, command: str) -> dict[str, Path]:
    """``compare.json``, ``compare.md`` and ``compare.html`` in the report folder."""
    d = outcome.report_dir
    paths = {"json": d / "compare.json", "md": d / "compare.md", "html": d / "compare.html"}
    write_json(paths["json"], {**to_document(outcome), "command": command})
    paths["md"].write_text(markdown_report(outcome, command))
    paths["html"].write_text(html_report(outcome, command))
    return paths


def html_report(outcome: CompareOutcome, command: str) -> str:
    """The comparison as a self-contained HTML page (tables, the latency curve, every step)."""
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
    return html_page(f"Serving paths compared: {outcome.served.name} v{outcome.served.version}", sections)


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
