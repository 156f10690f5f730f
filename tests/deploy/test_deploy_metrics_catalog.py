"""deploy/metrics_catalog.yaml: well-formed, and true to what Triton 2.51 really exports.

The Triton fixtures are scrapes of the real server (the tritonserver 2.51 of the pytriton wheel,
the release of the NGC 24.10 image): one on a CPU host with a model loaded, one on an H100 with
DCGM. The gateway and sync entries are checked against live scrapes by the integration tests.
"""

from __future__ import annotations

import re

from deploy_support import FIXTURES, load_catalog, parse_exposition

TYPES = {"counter", "gauge", "histogram", "summary"}
SOURCES = {"gateway", "triton", "sync", "prometheus"}
NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
PREFIX = {"gateway": "modelops_gateway_", "sync": "modelops_sync_", "triton": "nv_"}


def test_catalog_entries_are_well_formed() -> None:
    catalog = load_catalog()
    names = [e.name for e in catalog.entries]
    assert len(names) == len(set(names)), "a metric is listed twice"
    for entry in catalog.entries:
        assert NAME.match(entry.name), entry.name
        assert entry.type in TYPES, f"{entry.name}: type {entry.type!r}"
        assert entry.source in SOURCES, f"{entry.name}: source {entry.source!r}"
        assert entry.name.startswith(PREFIX.get(entry.source, "")), f"{entry.name} does not match its source"
        assert entry.help, f"{entry.name}: say what it measures (help)"
        assert len(set(entry.labels)) == len(entry.labels), f"{entry.name}: duplicate label"
        assert not set(entry.labels) & set(catalog.target_labels), f"{entry.name}: lists a target label"
        if entry.type == "counter" and entry.source in {"gateway", "sync"}:
            assert entry.name.endswith("_total"), f"{entry.name}: prometheus-client counters end in _total"
        if entry.gpu_only:
            assert entry.source == "triton", f"{entry.name}: only Triton has GPU-only metrics"


def _check_against_scrape(fixture: str, gpu_only: bool) -> None:
    scraped = parse_exposition(FIXTURES / fixture)
    for entry in load_catalog().entries:
        if entry.source != "triton" or entry.gpu_only != gpu_only:
            continue
        assert entry.name in scraped, f"Triton 2.51 does not export {entry.name} ({fixture})"
        kind, labels = scraped[entry.name]
        assert kind == entry.type, f"{entry.name}: Triton says {kind}, the catalog {entry.type}"
        assert labels == set(entry.labels), f"{entry.name}: Triton labels {sorted(labels)}, catalog {entry.labels}"


def test_triton_entries_match_a_real_cpu_scrape() -> None:
    _check_against_scrape("triton-2.51-cpu.metrics", gpu_only=False)


def test_gpu_only_entries_match_a_real_h100_scrape() -> None:
    _check_against_scrape("triton-2.51-h100.metrics", gpu_only=True)


def test_gpu_only_metrics_are_absent_on_a_cpu_host() -> None:
    scraped = parse_exposition(FIXTURES / "triton-2.51-cpu.metrics")
    for entry in load_catalog().entries:
        if entry.gpu_only:
            assert entry.name not in scraped, f"{entry.name} is exported on CPU hosts: drop gpu_only"
