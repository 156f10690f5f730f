"""The files every load-generating process leaves for the driver, in one place.

Each process of either load generator (:mod:`benchmarks.locustfile`, :mod:`benchmarks.asyncload`)
writes ``samples-<pid>.bin`` (flat float64 triples: start epoch s, latency ms, 1.0 ok / 0.0
failed) and ``process-<pid>.json`` (pid, role, its own facts, the sample count);
:func:`benchmarks.loadrun.run_load` merges them. Standard library only: the locustfile imports it.
"""

from __future__ import annotations

import json
import os
from array import array
from pathlib import Path
from typing import Any

SAMPLES_GLOB = "samples-*.bin"
PROCESS_GLOB = "process-*.json"


def write_process_files(out: Path, role: str, samples: array, facts: dict[str, Any]) -> dict[str, Any]:
    """Write this process's samples and ``facts`` under ``out``; return the JSON document written."""
    pid = os.getpid()
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"samples-{pid}.bin").open("wb") as fh:
        samples.tofile(fh)
    meta = {"pid": pid, "role": role, **facts, "samples": len(samples) // 3}
    (out / f"process-{pid}.json").write_text(json.dumps(meta))
    return meta
