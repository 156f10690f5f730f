"""tritonclient's KServe v2 helpers against :mod:`tritonio.codec`: microseconds per encode and decode.

The question it answers (issue 11): use ``tritonclient.http.InferenceServerClient``'s static
``generate_request_body`` / ``parse_response_body`` for the binary tensor body, or keep a codec
of our own? It times both on the demo model's request shapes (numeric ``[n, 11]`` FP32 with
missing values, categorical ``[n, 1]`` INT64, one output ``[n, 1]`` FP32), for ``n`` = 1 and 64:

- encode: from numpy arrays to the body bytes (tritonclient: ``InferInput`` +
  ``set_data_from_numpy`` + ``InferRequestedOutput`` + ``generate_request_body``; tritonio:
  ``encode_request(...).body()``);
- decode: from a binary response body to the output array (tritonclient:
  ``parse_response_body`` + ``as_numpy``; tritonio: ``decode_response``);

and tritonio again with the standard library's json instead of orjson (what a bare GPU host
without orjson gets). CPU time per call (``time.process_time``, so other processes on a shared
machine count less), the median of ``--repeats`` repeats of ``--number`` calls::

    python -m benchmarks.codec_bench            # logs the table; --json FILE writes the figures
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from tritonio import codec

log = logging.getLogger("benchmarks.codec_bench")

OUTPUT = "ghi_wm2"
NUMERIC_FEATURES = 11


def demo_tensors(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The demo model's inputs for ``rows`` rows: numeric FP32 (some NaN), categorical INT64."""
    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=(rows, NUMERIC_FEATURES)).astype(np.float32)
    numeric[::3, 2] = np.nan
    categorical = rng.integers(0, 4, size=(rows, 1)).astype(np.int64)
    return numeric, categorical


def demo_response(rows: int) -> tuple[bytes, int]:
    """A binary infer response as Triton sends it for ``rows`` rows: body and JSON header length."""
    values = np.linspace(0.0, 900.0, rows, dtype=np.float32).reshape(rows, 1)
    header = {
        "id": "bench-1",
        "model_name": "solar_ghi",
        "model_version": "1",
        "outputs": [
            {"name": OUTPUT, "datatype": "FP32", "shape": [rows, 1], "parameters": {"binary_data_size": 4 * rows}}
        ],
    }
    head = json.dumps(header).encode()
    return head + values.tobytes(), len(head)


def per_call_us(fn: Callable[[], object], number: int, repeats: int) -> float:
    """Median CPU microseconds per call of ``fn`` over ``repeats`` runs of ``number`` calls."""
    fn()  # warm: imports, caches
    runs = []
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(number):
            fn()
        runs.append((time.process_time() - started) / number * 1e6)
    return statistics.median(runs)


def tritonclient_calls(rows: int) -> dict[str, Callable[[], object]]:
    """Encode and decode with tritonclient's static helpers."""
    import tritonclient.http as httpclient

    numeric, categorical = demo_tensors(rows)
    body, header_length = demo_response(rows)
    client = httpclient.InferenceServerClient

    def encode() -> object:
        inputs = [
            httpclient.InferInput("numeric", list(numeric.shape), "FP32"),
            httpclient.InferInput("categorical", list(categorical.shape), "INT64"),
        ]
        inputs[0].set_data_from_numpy(numeric, binary_data=True)
        inputs[1].set_data_from_numpy(categorical, binary_data=True)
        outputs = [httpclient.InferRequestedOutput(OUTPUT, binary_data=True)]
        return client.generate_request_body(inputs, outputs=outputs, request_id="bench-1")

    def decode() -> object:
        return client.parse_response_body(body, header_length=header_length).as_numpy(OUTPUT)

    return {"encode": encode, "decode": decode}


def tritonio_calls(rows: int) -> dict[str, Callable[[], object]]:
    """Encode and decode with :mod:`tritonio.codec`."""
    numeric, categorical = demo_tensors(rows)
    body, header_length = demo_response(rows)
    inputs = {"numeric": numeric, "categorical": categorical}

    def encode() -> object:
        return codec.encode_request(inputs, [OUTPUT], request_id="bench-1").body()

    def decode() -> object:
        return codec.decode_response(body, header_length, [OUTPUT])[OUTPUT]

    return {"encode": encode, "decode": decode}


def check_agreement(rows: int) -> None:
    """Both codecs write the same tensors after equivalent headers, and read the same response.

    Raises:
        AssertionError: they disagree (the timing would compare different work).
    """
    import tritonclient.http as httpclient

    numeric, categorical = demo_tensors(rows)
    theirs = (
        httpclient.InferInput("numeric", list(numeric.shape), "FP32"),
        httpclient.InferInput("categorical", list(categorical.shape), "INT64"),
    )
    theirs[0].set_data_from_numpy(numeric)
    theirs[1].set_data_from_numpy(categorical)
    body, length = httpclient.InferenceServerClient.generate_request_body(list(theirs))
    ours = codec.encode_request({"numeric": numeric, "categorical": categorical})
    for raw, json_length in ((body, length), (ours.body(), ours.header_length)):
        header = json.loads(raw[:json_length])
        assert [i["name"] for i in header["inputs"]] == ["numeric", "categorical"]
        assert raw[json_length:] == numeric.tobytes() + categorical.tobytes()
    response, header_length = demo_response(rows)
    parsed = httpclient.InferenceServerClient.parse_response_body(response, header_length=header_length)
    decoded = codec.decode_response(response, header_length, [OUTPUT])
    np.testing.assert_array_equal(decoded[OUTPUT], parsed.as_numpy(OUTPUT))


def measure(rows_list: Sequence[int], number: int, repeats: int) -> list[dict[str, Any]]:
    """One row per (call, rows): microseconds per call of each codec."""
    figures: list[dict[str, Any]] = []
    for rows in rows_list:
        check_agreement(rows)
        theirs = tritonclient_calls(rows)
        ours = tritonio_calls(rows)
        for call in ("encode", "decode"):
            tc = per_call_us(theirs[call], number, repeats)
            ti = per_call_us(ours[call], number, repeats)
            previous = codec.use_orjson(False)
            try:
                stdlib = per_call_us(ours[call], number, repeats)
            finally:
                codec.use_orjson(previous)
            figures.append(
                {
                    "call": call,
                    "rows": rows,
                    "tritonclient_us": tc,
                    "tritonio_us": ti,
                    "tritonio_stdlib_json_us": stdlib,
                }
            )
    return figures


def machine() -> dict[str, str]:
    """Where the figures were measured: CPU, core count, the versions that matter."""
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("orjson", "tritonclient"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
    return {"cpu": cpu, "cpus": str(os.cpu_count()), **versions}


def table(figures: Sequence[dict[str, Any]]) -> str:
    """The figures as a markdown table."""
    lines = [
        "| call | rows | tritonclient (us) | tritonio (us) | ratio | tritonio, stdlib json (us) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for f in figures:
        ratio = f["tritonclient_us"] / f["tritonio_us"]
        lines.append(
            f"| {f['call']} | {f['rows']} | {f['tritonclient_us']:.1f} | {f['tritonio_us']:.1f} | {ratio:.1f}x "
            f"| {f['tritonio_stdlib_json_us']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.codec_bench``: measure, log the table, optionally write JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.codec_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64], help="rows per request (default: 1 64)")
    parser.add_argument("--number", type=int, default=2000, help="calls per repeat")
    parser.add_argument("--repeats", type=int, default=7, help="repeats (the median is kept)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    figures = measure(args.rows, args.number, args.repeats)
    where = machine()
    log.info("codec microseconds per call (median of %d x %d calls, CPU time) on %s", args.repeats, args.number, where)
    log.info("%s", table(figures))
    if args.json:
        args.json.write_text(json.dumps({"machine": where, "figures": figures}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
