"""Reports of a load run: the JSON summary, the verdict table, and a self-contained HTML page.

The HTML page embeds its plots as SVG (matplotlib, Agg backend): latency percentiles per second
against the budget, throughput per second, and errors per second; for a comparison, latency
against throughput for every variant. Nothing is fetched from the network when it is opened.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.budget import Verdict

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1100px; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.pass { color: #1a7f37; font-weight: 600; } .fail { color: #cf222e; font-weight: 600; }
.note { background: #fff8c5; padding: .5rem; border-left: 4px solid #d4a72c; }
code { background: #f6f8fa; padding: 0 .2rem; }
"""


def jsonable(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by None, so the JSON is standard."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` as indented standard JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(doc), indent=2) + "\n")


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for a table cell ("-" when missing)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if 0 < abs(value) < 0.01:
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def verdict_table(verdicts: Sequence[Verdict]) -> str:
    """Plain-text table of verdicts, for the terminal."""
    rows = [("budget", "limit", "measured", "", "verdict")]
    for v in verdicts:
        digits = 4 if v.name in ("error ratio",) or v.unit in ("USD", "EUR") else 1
        rows.append(
            (
                v.name,
                f"{v.comparison} {fmt(v.limit, digits)}",
                fmt(v.measured, digits),
                v.unit,
                "PASS" if v.passed else "FAIL",
            )
        )
    return text_table(rows)


def text_table(rows: Sequence[Sequence[str]]) -> str:
    """Align rows of cells into columns; the first row is the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    """The same rows as a Markdown table."""
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join(" --- " for _ in rows[0]) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def html_table(rows: Sequence[Sequence[str]], classes: Sequence[str] | None = None) -> str:
    """An HTML table; the first row is the header, ``classes`` style each body row's last cell."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = []
    for i, row in enumerate(rows[1:]):
        cls = classes[i] if classes else ""
        cells = "".join(f"<td>{html.escape(c)}</td>" for c in row[:-1])
        last = f'<td class="{cls}">{html.escape(row[-1])}</td>' if cls else f"<td>{html.escape(row[-1])}</td>"
        body.append(f"<tr>{cells}{last}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return text[text.find("<svg") :]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def run_plots(series: Sequence[dict[str, float]], budgets: dict[str, float | None], warmup_s: float = 0.0) -> list[str]:
    """SVG plots of one run: latency percentiles vs budgets, throughput, errors (per second).

    The warm-up, which no statistic includes, is shaded.
    """
    if not series:
        return []
    plt = _pyplot()
    t = [row["t"] for row in series]
    figures: list[str] = []

    fig, ax = plt.subplots(figsize=(9, 3.4))
    colors = {"p50": "tab:blue", "p95": "tab:orange", "p99": "tab:red"}
    for label, color in colors.items():
        ax.plot(t, [row[f"{label}_ms"] for row in series], label=label, color=color)
        limit = budgets.get(label)
        if limit is not None:
            ax.axhline(limit, color=color, linestyle="--", linewidth=1, label=f"{label} budget")
    if warmup_s:
        ax.axvspan(0, warmup_s, color="grey", alpha=0.15, label="warm-up (not counted)")
    ax.set(title="Latency per second", xlabel="seconds since start", ylabel="ms")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, ncol=2)
    figures.append(_svg(fig))

    fig, ax = plt.subplots(figsize=(9, 3.0))
    ax.plot(t, [row["rps"] for row in series], label="requests/s", color="tab:green")
    if any(row["predictions_per_s"] != row["rps"] for row in series):
        ax.plot(t, [row["predictions_per_s"] for row in series], label="predictions/s", color="tab:purple")
    minimum = budgets.get("throughput")
    if minimum is not None:
        ax.axhline(minimum, color="tab:purple", linestyle="--", linewidth=1, label="minimum predictions/s")
    if warmup_s:
        ax.axvspan(0, warmup_s, color="grey", alpha=0.15)
    ax.set(title="Throughput per second (successful)", xlabel="seconds since start", ylabel="per second")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    figures.append(_svg(fig))

    fig, ax = plt.subplots(figsize=(9, 2.4))
    ax.bar(t, [row["errors_per_s"] for row in series], width=0.9, color="tab:red")
    ax.set(title="Failed requests per second", xlabel="seconds since start", ylabel="per second")
    ax.grid(alpha=0.3)
    figures.append(_svg(fig))
    return figures


def curve_plot(curves: dict[str, list[dict[str, float]]], p95_budget: float | None) -> str:
    """SVG of p95 latency against throughput, one line per variant (points are load steps)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    for name, steps in curves.items():
        xs = [s["throughput_rps"] for s in steps]
        ys = [s["p95_ms"] for s in steps]
        ax.plot(xs, ys, marker="o", label=name)
        for s in steps:
            ax.annotate(str(int(s["users"])), (s["throughput_rps"], s["p95_ms"]), fontsize=7, alpha=0.7)
    if p95_budget is not None:
        ax.axhline(p95_budget, color="black", linestyle="--", linewidth=1, label="p95 budget")
    ax.set(title="p95 latency vs throughput (labels: concurrent users)", xlabel="requests/s", ylabel="p95 ms")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _svg(fig)


def html_page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """A self-contained HTML page from ``(heading, html body)`` sections."""
    parts = [f"<h2>{html.escape(h)}</h2>\n{body}" if h else body for h, body in sections]
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def cpu_account(summary: dict[str, Any]) -> str:
    """Who used the CPUs during a gated run, in one sentence."""
    gen = summary["generator"]
    engine = summary.get("load", {}).get("engine", "locust")
    parts = [gen["note"]]
    parts.append(f"busiest {engine} process {gen['max_process_cpu']:.0%} of a core")
    if gen.get("machine_busy") is not None:
        parts.append(f"machine {gen['machine_busy']:.0%} busy")
    if gen.get("server_cores") is not None:
        per_request = summary.get("server_cpu_ms_per_request")
        extra = f", {per_request:.3f} ms CPU per request" if per_request else ""
        parts.append(f"servers under test {gen['server_cores']:.2f} cores{extra}")
    if gen.get("other_busy") is not None:
        parts.append(f"other processes {gen['other_busy']:.0%} of the machine")
    return "; ".join(parts)


def run_report_html(summary: dict[str, Any], verdicts: Sequence[Verdict]) -> str:
    """The HTML report of one gated run (``modelops bench``)."""
    result = summary["result"]
    load = summary["load"]
    budgets = summary.get("budgets", {})
    latency = budgets.get("latency_ms", {})
    passed = all(v.passed for v in verdicts)
    verdict_rows = [["budget", "limit", "measured", "unit", "verdict"]]
    verdict_rows += [
        [v.name, f"{v.comparison} {fmt(v.limit, 4)}", fmt(v.measured, 4), v.unit, "PASS" if v.passed else "FAIL"]
        for v in verdicts
    ]
    status = '<p class="pass">PASSED</p>' if passed else '<p class="fail">FAILED</p>'
    facts = [
        ["", "value"],
        ["model", f"{summary['model']} version {summary.get('version', '?')}"],
        ["target", summary["target"]],
        ["started", summary["started_at"]],
        [
            "load",
            f"{load['users']} users, {load['duration_s']:g} s ({load['warmup_s']:g} s warm-up left out), "
            f"{load['records_per_request']} record(s)/request",
        ],
        [
            "load generator",
            f"{load.get('engine', 'locust')}, {load['processes']} sending process(es) on this machine",
        ],
        ["requests measured", f"{result['requests']:,} ({result['failures']:,} failed)"],
        ["throughput", f"{fmt(result['throughput_rps'])} req/s, {fmt(result['predictions_per_s'])} predictions/s"],
        [
            "latency (exact, ms)",
            " / ".join(fmt(result[f"{p}_ms"], 2) for p in ("p50", "p90", "p95", "p99", "max"))
            + "  (p50 / p90 / p95 / p99 / max)",
        ],
    ]
    cost = summary.get("cost")
    if cost:
        facts.append(
            [
                "cost",
                f"{fmt(cost['per_1k'], 6)} {cost['currency']} per 1,000 predictions at "
                f"{cost['price_per_hour']:g} {cost['currency']}/h ({cost.get('hardware') or 'node'})",
            ]
        )
    machine = summary.get("machine", {})
    facts.append(["machine", f"{machine.get('cpus', '?')} CPUs, {machine.get('platform', '')}"])
    gen = summary["generator"]
    note_class = "note" if gen["saturated"] or (gen.get("machine_busy") or 0) >= 0.95 else ""
    generator = f'<p class="{note_class}">{html.escape(cpu_account(summary))}</p>'
    plots = run_plots(
        summary.get("series", []),
        {
            "p50": latency.get("p50"),
            "p95": latency.get("p95"),
            "p99": latency.get("p99"),
            "throughput": budgets.get("min_throughput_per_s"),
        },
        float(load.get("warmup_s", 0.0)),
    )
    errors = summary.get("errors") or {}
    error_html = (
        html_table([["failure", "count"], *[[k, str(v)] for k, v in errors.items()]]) if errors else "<p>none</p>"
    )
    sections = [
        ("Verdict", status + html_table(verdict_rows, ["pass" if v.passed else "fail" for v in verdicts])),
        ("Run", html_table(facts) + generator),
        ("Over time", "\n".join(plots)),
        ("Failures", error_html),
    ]
    return html_page(f"Load test: {summary['model']} v{summary.get('version', '?')}", sections)
