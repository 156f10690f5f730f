"""Render the Kubernetes PrometheusRule from the rule file that docker-compose's Prometheus loads.

Both deployments must alert on the same rules, and Kustomize cannot read files outside ``k8s/``,
so the PrometheusRule is generated, committed, and checked by ``tests/deploy`` to match:

    python deploy/prometheus/render_prometheusrule.py          # rewrite it
    python deploy/prometheus/render_prometheusrule.py --check  # exit 1 when it is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = ROOT / "deploy" / "prometheus" / "rules" / "modelops.rules.yml"
OUTPUT_FILE = ROOT / "k8s" / "base" / "monitoring" / "prometheusrule.yaml"
HEADER = (
    "# GENERATED from deploy/prometheus/rules/modelops.rules.yml by\n"
    "# `python deploy/prometheus/render_prometheusrule.py`; edit the rule file, not this one.\n"
)


class _BlockDumper(yaml.SafeDumper):  # type: ignore[misc]  # PyYAML ships no type hints
    """A YAML dumper that writes multi-line strings (PromQL) as literal blocks."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_representer)


def prometheus_rule(rules: dict[str, Any]) -> dict[str, Any]:
    """The PrometheusRule object carrying the ``groups`` of a Prometheus rule file."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "modelops", "labels": {"app.kubernetes.io/component": "monitoring"}},
        "spec": {"groups": rules["groups"]},
    }


def render(rules_file: Path = RULES_FILE) -> str:
    """The text of the generated PrometheusRule manifest."""
    rules = yaml.safe_load(rules_file.read_text())
    body: str = yaml.dump(prometheus_rule(rules), Dumper=_BlockDumper, sort_keys=False, width=120)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    """Write the manifest, or with ``--check`` report whether the committed one is current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 when the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT_FILE.read_text() if OUTPUT_FILE.exists() else ""
        if current != text:
            sys.stderr.write(f"{OUTPUT_FILE.relative_to(ROOT)} is stale: run {Path(__file__).name}\n")
            return 1
        return 0
    OUTPUT_FILE.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT_FILE.write_text(text)
    sys.stdout.write(f"wrote {OUTPUT_FILE.relative_to(ROOT)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
