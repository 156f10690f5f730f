#!/usr/bin/env python3
"""GPU check of the embedded serving stack: correct answers on the accelerator, and how fast.

It builds a model repository from the demo model (ONNX + TorchScript, parity-checked), starts
the ``tritonserver`` bundled in the ``nvidia-pytriton`` wheel with ``KIND_GPU`` instances (or
``KIND_CPU`` in CPU mode), checks every served variant against the CPU reference outputs, then
load-tests it over HTTP with binary tensors at several concurrencies, with dynamic batching on
and off and with single-row and 64-row requests. Per step it records throughput, p50/p99
latency, the mean executed batch size (Triton's statistics API) and ``nv_gpu_utilization``
(Triton's metrics), and it writes ``benchmarks/results/gpu-<device>.json`` and ``.md``.

Usage::

    # everything in one go (needs the registry extra: torch, onnx, pvlib, pydantic, tritonclient)
    python benchmarks/gpu_check.py all --device auto
    # or build the repository where the registry runs, and serve it on a bare GPU host
    python benchmarks/gpu_check.py prepare --device gpu --out .gpu_check
    python benchmarks/gpu_check.py run --prepared .gpu_check

``run`` needs only this repository's code, numpy, the ``nvidia-pytriton`` wheel and what serves
the model (onnxruntime; torch for the GPU path): no pydantic, tritonclient or MLflow. CPU mode
(``--device cpu``) runs the same code on an ordinary machine; ``--quick`` shortens it to a
smoke test (the test suite runs it so). Exit codes: 0 done, 1 wrong answers or failed requests
(or a missed target with ``--enforce-targets``), 2 the check could not run.

Why one module of ~500 lines: it is the one script a bare GPU host is given to run, read top to
bottom as the check's sequence (profiles, verification, load steps, the result document); the
parts with a life of their own are already in :mod:`benchmarks.gpu` (prepare, server, loadgen,
protocol, report, ceiling), and splitting the sequence would only spread one procedure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: make the project's packages importable
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.gpu import ceiling  # noqa: E402
from benchmarks.gpu.loadgen import LoadGenerator  # noqa: E402
from benchmarks.gpu.prepare import Variant, read_plan  # noqa: E402
from benchmarks.gpu.report import GpuStep, evaluate_targets, markdown, percentiles  # noqa: E402
from benchmarks.gpu.server import ModelLoadFailed, TritonServer, metric_values  # noqa: E402
from modelspec.rows import reference_arrays, tensor_names  # noqa: E402
from tritonio.blocking import BlockingTritonClient  # noqa: E402
from tritonio.codec import encode_request  # noqa: E402
from tritonio.errors import TritonError  # noqa: E402
from tritonio.http1 import infer_prefix, infer_request  # noqa: E402

log = logging.getLogger("gpu_check")

DEFAULT_RESULTS = REPO_ROOT / "benchmarks" / "results"
MULTI_ROWS = 64


@dataclass(frozen=True)
class Profile:
    """How long and at which concurrencies each role of variant is loaded."""

    warmup_s: float
    duration_s: float
    steps: dict[str, list[tuple[int, int]]]  # role -> [(rows per request, concurrency)]


PROFILES: dict[str, Profile] = {
    "gpu": Profile(
        warmup_s=1.0,
        duration_s=5.0,
        steps={
            "batched": [(1, 1), (1, 16), (1, 64), (1, 128), (1, 256), (MULTI_ROWS, 16), (MULTI_ROWS, 64)],
            "unbatched": [(1, 1), (1, 64), (1, 256), (MULTI_ROWS, 64)],
            "compare": [(1, 256), (MULTI_ROWS, 64)],
            "scaling": [(1, 256)],
        },
    ),
    "cpu": Profile(
        warmup_s=1.0,
        duration_s=3.0,
        steps={
            "batched": [(1, 1), (1, 16), (1, 64), (1, 256), (MULTI_ROWS, 16), (MULTI_ROWS, 64)],
            "unbatched": [(1, 1), (1, 64), (MULTI_ROWS, 64)],
            "compare": [(1, 64), (MULTI_ROWS, 16)],
            "scaling": [(1, 64)],
        },
    ),
    "quick": Profile(
        warmup_s=0.3,
        duration_s=1.0,
        steps={
            "batched": [(1, 1), (1, 16), (MULTI_ROWS, 8)],
            "unbatched": [(1, 16)],
            "compare": [(1, 16)],
            "scaling": [(1, 16)],
        },
    ),
}


class CheckFailed(RuntimeError):
    """The check could not run (no GPU where one was prepared for, Triton would not start)."""


def gpu_info() -> dict[str, str] | None:
    """Name, driver and memory of the first NVIDIA GPU (from nvidia-smi), or None without one."""
    try:
        proc = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        return None
    name, driver, memory = (part.strip() for part in lines[0].split(",")[:3])
    return {"name": name, "driver": driver, "memory": memory, "count": str(len(lines))}


def cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def slug(text: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def short_engine(descriptions: list[str]) -> str:
    """A table-sized name of an engine description the backend logged."""
    if not descriptions:
        return "?"
    d = descriptions[0]
    if d.startswith("torch"):
        m = re.search(r" on (\S+)", d)
        return f"torch {m.group(1) if m else ''}".strip()
    m = re.search(r"(\w+)ExecutionProvider", d)
    return f"onnxruntime {m.group(1) if m else ''}".strip()


def _reference(version_dir: Path) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], float, dict[str, Any]]:
    schema = json.loads((version_dir / "schema.json").read_text())
    ref = json.loads((version_dir / "reference.json").read_text())
    numeric, categorical = reference_arrays(ref)
    outputs = {k: np.asarray(v, dtype=np.float64) for k, v in ref["outputs"].items()}
    return numeric, categorical, outputs, float(ref["tolerance"]), schema


def verify(server: TritonServer, variant: Variant, version: int, version_dir: Path) -> dict[str, Any]:
    """Send the reference rows as one request and as concurrent single-row requests; compare.

    The concurrent single-row requests are batched together by Triton, so this also checks that
    the backend splits a batch back to the right requests. A NaN or infinite output fails the
    check whatever the tolerance.
    """
    numeric, categorical, expected, tolerance, schema = _reference(version_dir)
    names = tensor_names(schema)
    outputs = list(expected)

    def call(rows: slice) -> dict[str, np.ndarray]:
        with BlockingTritonClient(f"{server.host}:{server.http_port}", timeout_s=30) as client:
            return client.infer(variant.name, version, {names[0]: numeric[rows], names[1]: categorical[rows]}, outputs)

    worst = 0.0
    try:
        whole = call(slice(None))
        with ThreadPoolExecutor(max_workers=len(numeric)) as pool:
            singles = list(pool.map(call, [slice(i, i + 1) for i in range(len(numeric))]))
    except (TritonError, OSError) as exc:
        return {"ok": False, "max_abs_error": None, "tolerance": tolerance, "rows": len(numeric), "error": str(exc)}
    for name, want in expected.items():
        got_whole = whole[name].reshape(-1).astype(np.float64)
        got_single = np.concatenate([s[name].reshape(-1) for s in singles]).astype(np.float64)
        # Checked first: a NaN difference compares false, so max(worst, nan) would keep worst and pass.
        if not (np.isfinite(got_whole).all() and np.isfinite(got_single).all()):
            return {
                "ok": False,
                "max_abs_error": None,
                "tolerance": tolerance,
                "rows": len(numeric),
                "error": f"output {name!r} is not a finite number (NaN or infinity) on the reference rows: "
                "check the engine (an FP16 overflow, say)",
            }
        worst = max(worst, float(np.abs(got_whole - want).max()), float(np.abs(got_single - want).max()))
    return {"ok": worst <= tolerance, "max_abs_error": worst, "tolerance": tolerance, "rows": len(numeric)}


def payloads(version_dir: Path, model: str, version: int, rows: int, host: str, count: int = 16) -> list[bytes]:
    """``count`` distinct HTTP requests of ``rows`` rows each, drawn from the reference rows."""
    numeric, categorical, expected, _tol, schema = _reference(version_dir)
    names = tensor_names(schema)
    rng = np.random.default_rng(rows)
    prefix = infer_prefix(host, model, version)
    requests = []
    for _ in range(count):
        idx = rng.integers(0, len(numeric), size=rows)
        body = encode_request({names[0]: numeric[idx], names[1]: categorical[idx]}, list(expected))
        requests.append(infer_request(prefix, body))
    return requests


def run_step(
    server: TritonServer,
    loadgen: LoadGenerator,
    variant: Variant,
    engine: str,
    version: int,
    requests: list[bytes],
    rows: int,
    concurrency: int,
    profile: Profile,
) -> GpuStep:
    """One load step; samples Triton's statistics at the window's edges and its GPU metrics within."""
    step = loadgen.start(server.host, server.http_port, requests, concurrency, profile.warmup_s, profile.duration_s)
    time.sleep(max(0.0, step.window_start - time.time()))
    before = server.stats(variant.name, version)
    cpu_before = server.cpu_seconds()
    utilization: list[float] = []
    while time.time() < step.window_end - 0.25:
        values = metric_values(server.metrics(), "nv_gpu_utilization")
        if values:
            utilization.append(values[0])
        time.sleep(min(0.5, max(0.0, step.window_end - time.time())))
    time.sleep(max(0.0, step.window_end - time.time()))
    delta = server.stats(variant.name, version).since(before)
    cpu = {k: (v - cpu_before[k]) / profile.duration_s for k, v in server.cpu_seconds().items()}
    merged = step.result()
    latencies = np.frombuffer(merged.latencies_ms, dtype=np.float64)
    rps = merged.completed / profile.duration_s
    result = GpuStep(
        model=variant.name,
        role=variant.role,
        engine=engine,
        dynamic_batching=variant.dynamic_batching,
        rows_per_request=rows,
        concurrency=concurrency,
        duration_s=profile.duration_s,
        requests=merged.completed,
        errors=merged.errors,
        first_error=merged.first_error,
        requests_per_s=rps,
        rows_per_s=rps * rows,
        mean_batch=delta.mean_batch,
        mean_queue_ms=delta.mean_queue_ms,
        mean_compute_ms=delta.mean_compute_ms,
        gpu_utilization=float(np.mean(utilization)) if utilization else None,
        gpu_utilization_max=max(utilization) if utilization else None,
        client_processes=min(loadgen.processes, concurrency),
        client_cpu_cores=merged.cpu_s / profile.duration_s,
        triton_cpu_cores=cpu["tritonserver"],
        stub_cpu_cores=cpu["stubs"],
        **percentiles(latencies),
    )
    log.info(
        "%-22s rows=%-3d in flight=%-4d %9.0f req/s %10.0f rows/s p50 %7.2f ms p99 %7.2f ms batch %s "
        "cpu client/triton/stubs %.1f/%.1f/%.1f errors %d",
        variant.name,
        rows,
        concurrency,
        result.requests_per_s,
        result.rows_per_s,
        result.p50_ms or float("nan"),
        result.p99_ms or float("nan"),
        f"{result.mean_batch:.1f}" if result.mean_batch else "-",
        result.client_cpu_cores,
        result.triton_cpu_cores,
        result.stub_cpu_cores,
        result.errors,
    )
    if merged.first_error:
        log.warning("%s: first error: %s", variant.name, merged.first_error)
    return result


def run_check(prepared: Path, args: argparse.Namespace) -> int:
    """Serve a prepared repository, verify it, load-test it, and write the results."""
    started = time.monotonic()
    repository, plan, variants = read_plan(prepared)
    version = int(plan["version"])  # type: ignore[call-overload]
    device_kind = str(plan["device"])
    gpu = gpu_info()
    if device_kind == "gpu" and gpu is None:
        raise CheckFailed(f"{prepared} was prepared for a GPU, but nvidia-smi finds none here")
    device_name = gpu["name"] if device_kind == "gpu" and gpu else cpu_name()
    profile = PROFILES["quick" if args.quick else device_kind]
    # Leave most cores to Triton's HTTP threads and the backend's Python processes.
    cpus = os.cpu_count() or 2
    processes = args.client_processes or (max(1, min(6, cpus // 2 - 2)) if device_kind == "gpu" else 1)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    server = TritonServer(repository, work, extra_args=["--metrics-interval-ms=500", *args.triton_arg])
    loadgen: LoadGenerator | None = None
    steps: list[GpuStep] = []
    load_errors: dict[str, str] = {}
    skipped: list[str] = []
    verification: dict[str, dict[str, Any]] = {}
    try:
        try:
            server.start()
        except Exception as exc:  # ServiceFailed, TritonNotInstalled: say why, with Triton's own words
            raise CheckFailed(f"Triton did not start: {exc}\n{server.log_tail()}") from exc
        triton_version = server.server_version()

        def load(v: Variant) -> tuple[str, str | None]:
            try:
                server.load(v.name)
            except ModelLoadFailed as exc:
                return v.name, str(exc)
            return v.name, None

        with ThreadPoolExecutor(max_workers=len(variants)) as pool:
            for name, error in pool.map(load, variants):
                if error:
                    load_errors[name] = error
                    log.error("%s", error)
        engines = server.engines()
        served = [v for v in variants if v.name not in load_errors]
        for v in served:
            verification[v.name] = verify(server, v, version, repository / v.name / str(version))
            log.info("%s: %s, reference check %s", v.name, "; ".join(engines.get(v.name, ["?"])), verification[v.name])
        loadgen = LoadGenerator(processes)
        for v in served:
            version_dir = repository / v.name / str(version)
            cache: dict[int, list[bytes]] = {}
            for rows, concurrency in profile.steps.get(v.role, []):
                if args.max_seconds and time.monotonic() - started > args.max_seconds:
                    log.warning("skipping %s rows=%d in flight=%d: past --max-seconds", v.name, rows, concurrency)
                    skipped.append(f"{v.name} rows={rows} in flight={concurrency}")
                    continue
                if rows not in cache:
                    cache[rows] = payloads(version_dir, v.name, version, rows, f"{server.host}:{server.http_port}")
                engine = short_engine(engines.get(v.name, []))
                steps.append(run_step(server, loadgen, v, engine, version, cache[rows], rows, concurrency, profile))
    finally:
        if loadgen is not None:
            loadgen.close()
        server.stop()
        if args.triton_log and server.log_path.exists():
            shutil.copyfile(server.log_path, args.triton_log)
        shutil.rmtree(work, ignore_errors=True)

    model_alone: list[dict[str, Any]] = []
    try:  # after Triton is gone, so that it has the machine to itself
        model_alone = ceiling.measure(
            repository / variants[0].name / str(version), device_kind == "gpu", 0.2 if args.quick else 0.5
        )
    except Exception as exc:  # a diagnostic: its failure must not lose the load results
        log.warning("could not time the model alone: %s", exc)
    targets = evaluate_targets(steps)
    steps_doc = []
    for s in steps:
        d = asdict(s)
        d["engine_short"] = s.engine
        steps_doc.append(d)
    doc: dict[str, Any] = {
        "schema": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "benchmarks/gpu_check.py", *args.argv]),
        "mode": "quick" if args.quick else device_kind,
        "device": {"kind": device_kind, "name": device_name, **({"gpu": gpu} if gpu else {})},
        "host": {
            "cpus": os.cpu_count(),
            "cpu": cpu_name(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "triton_version": triton_version,
        "client_processes": processes,
        "profile": asdict(profile),
        "model": plan["model"],
        "variants": [asdict(v) for v in variants],
        "engines": engines,
        "load_errors": load_errors,
        "verification": verification,
        "steps": steps_doc,
        "model_alone": model_alone,
        "skipped_steps": skipped,
        "targets": [asdict(t) for t in targets],
        "targets_note": "set for one NVIDIA H100; informational in CPU mode",
        "wall_s": round(time.monotonic() - started, 1),
    }
    results_dir: Path = args.results_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = f"gpu-{slug(device_name) if device_kind == 'gpu' else 'cpu'}"
    (results_dir / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    table = markdown(doc)
    (results_dir / f"{stem}.md").write_text(table)
    log.info("results in %s/%s.{json,md}\n%s", results_dir, stem, table)

    failed_checks = [n for n, v in verification.items() if not v["ok"]]
    failed_requests = sum(s.errors for s in steps)
    if load_errors or failed_checks or failed_requests:
        log.error(
            "not loaded: %s; wrong answers: %s; failed requests: %d",
            list(load_errors) or "none",
            failed_checks or "none",
            failed_requests,
        )
        return 1
    missed = [t.name for t in targets if not t.met]
    if missed and args.enforce_targets:
        log.error("targets missed: %s", missed)
        return 1
    return 0


def prepare(args: argparse.Namespace, out: Path, device: Literal["cpu", "gpu"]) -> Path:
    """Build the repository (imports the registry's packages only here)."""
    from benchmarks.gpu.prepare import build_repository

    instances = args.instances or (4 if device == "gpu" else 1)
    max_batch = args.max_batch_size or (1024 if device == "gpu" else 256)
    return build_repository(
        out,
        device,
        instances=instances,
        max_batch_size=max_batch,
        max_queue_delay_us=args.queue_delay_us,
        epochs=args.epochs,
    )


def resolve_device(requested: str) -> Literal["cpu", "gpu"]:
    """``auto`` -> ``gpu`` when nvidia-smi finds a GPU, else ``cpu``."""
    if requested == "auto":
        return "gpu" if gpu_info() is not None else "cpu"
    return "gpu" if requested == "gpu" else "cpu"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)

    def prepare_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto", help="instance kind to serve on")
        p.add_argument("--epochs", type=int, default=60, help="training epochs of the demo model")
        p.add_argument("--instances", type=int, default=0, help="backend instances per model (0: 4 GPU, 1 CPU)")
        p.add_argument("--max-batch-size", type=int, default=0, help="Triton max_batch_size (0: 1024 GPU, 256 CPU)")
        p.add_argument("--queue-delay-us", type=int, default=None, help="dynamic batcher delay (default: project's)")

    def run_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS, help="where gpu-<device>.json/.md go")
        p.add_argument("--quick", action="store_true", help="a short smoke run (what the test suite does)")
        p.add_argument("--client-processes", type=int, default=0, help="load-generator processes (0: by host)")
        p.add_argument("--triton-log", type=Path, default=None, help="copy Triton's log here at the end")
        p.add_argument("--triton-arg", action="append", default=[], help="extra tritonserver flag (repeatable)")
        p.add_argument("--enforce-targets", action="store_true", help="exit 1 when a target is missed")
        p.add_argument("--max-seconds", type=float, default=0, help="start no load step after this (0: no limit)")

    p_prepare = sub.add_parser("prepare", help="train the demo model and build the model repository")
    prepare_options(p_prepare)
    p_prepare.add_argument("--out", type=Path, required=True, help="folder for repository/ and plan.json")
    p_run = sub.add_parser("run", help="serve a prepared repository, verify and load-test it")
    p_run.add_argument("--prepared", type=Path, required=True, help="a folder written by `prepare`")
    run_options(p_run)
    p_all = sub.add_parser("all", help="prepare into a temporary folder, then run")
    prepare_options(p_all)
    run_options(p_all)
    args = parser.parse_args(list(argv))
    args.argv = list(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "prepare":
            prepare(args, args.out, resolve_device(args.device))
            return 0
        if args.command == "run":
            return run_check(args.prepared, args)
        with tempfile.TemporaryDirectory(prefix="gpu-check-prepared-") as tmp:
            prepared = prepare(args, Path(tmp) / "prepared", resolve_device(args.device))
            return run_check(prepared, args)
    except CheckFailed as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
