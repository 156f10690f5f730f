"""The model alone, without Triton: how many rows per second the engines themselves can do.

Each iteration does what the backend's ``execute`` does with a gathered batch: copy the inputs
from host memory to the device, run the model, copy the outputs back. Set against the load
steps, this says whether the serving path (HTTP, Triton, the Python backend) or the model bounds
the throughput.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from modelspec.rows import reference_arrays

log = logging.getLogger(__name__)

BATCH_SIZES = (1, 64, 256, 1024)


def _inputs(version_dir: Path, rows: int) -> tuple[np.ndarray, np.ndarray]:
    ref = json.loads((version_dir / "reference.json").read_text())
    numeric, categorical = reference_arrays(ref)
    idx = np.arange(rows) % len(numeric)
    return np.ascontiguousarray(numeric[idx]), np.ascontiguousarray(categorical[idx])


def _time(run: Callable[[], Any], seconds: float) -> tuple[int, float]:
    for _ in range(5):
        run()
    n, start = 0, time.perf_counter()
    while True:
        run()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n, elapsed


def _torch_rows(version_dir: Path, use_cuda: bool, seconds: float) -> list[dict[str, Any]]:
    try:
        import torch
    except ImportError:
        return []
    if not (version_dir / "model.pt").is_file():
        return []
    device = torch.device("cuda:0" if use_cuda and torch.cuda.is_available() else "cpu")
    torch.set_num_threads(1)
    module = torch.jit.load(str(version_dir / "model.pt"), map_location=device).eval()
    rows = []
    for b in BATCH_SIZES:
        numeric, categorical = (torch.from_numpy(a) for a in _inputs(version_dir, b))

        def run(n: Any = numeric, c: Any = categorical) -> Any:
            with torch.inference_mode():
                return module(n.to(device), c.to(device)).to("cpu")

        iters, elapsed = _time(run, seconds)
        rows.append(_row(f"torch TorchScript on {device}", b, iters, elapsed))
    return rows


def _onnxruntime_rows(version_dir: Path, seconds: float) -> list[dict[str, Any]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(version_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    rows = []
    for b in BATCH_SIZES:
        numeric, categorical = _inputs(version_dir, b)
        feed = {names[0]: numeric, names[1]: categorical}

        def run(f: dict[str, np.ndarray] = feed) -> Any:
            return session.run(None, f)

        iters, elapsed = _time(run, seconds)
        rows.append(_row("onnxruntime CPU, 1 thread", b, iters, elapsed))
    return rows


def measure(version_dir: Path, use_cuda: bool, seconds: float = 0.5) -> list[dict[str, Any]]:
    """Rows/s of TorchScript (on CUDA when ``use_cuda``) and of onnxruntime on one CPU thread."""
    rows = _torch_rows(version_dir, use_cuda, seconds) + _onnxruntime_rows(version_dir, seconds)
    for r in rows:
        log.info(
            "model alone: %-40s batch %5d: %12.0f rows/s, %.3f ms per batch",
            r["engine"],
            r["batch"],
            r["rows_per_s"],
            r["ms_per_batch"],
        )
    return rows


def _row(engine: str, batch: int, iters: int, elapsed: float) -> dict[str, Any]:
    return {
        "engine": engine,
        "batch": batch,
        "rows_per_s": batch * iters / elapsed,
        "ms_per_batch": 1e3 * elapsed / iters,
    }
