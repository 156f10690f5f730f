"""KServe v2 inference over HTTP with Triton's binary tensor extension, without tritonclient.

A request body is a JSON header followed by the raw bytes of each input; the header's length
travels in the ``Inference-Header-Content-Length`` HTTP header. Binary tensors skip JSON
number formatting on both sides, which is most of the per-request cost of the JSON protocol.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"
_DATATYPES: dict[np.dtype[Any], str] = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float64): "FP64",
}
_DTYPES: dict[str, np.dtype[Any]] = {v: k for k, v in _DATATYPES.items()}


class InferenceFailed(RuntimeError):
    """Triton answered an inference request with an error; the message is Triton's."""


@dataclass(frozen=True)
class InferBody:
    """An encoded inference request body and the length of its JSON header."""

    body: bytes
    header_length: int


def encode_request(inputs: dict[str, np.ndarray], outputs: list[str]) -> InferBody:
    """Encode ``inputs`` (name -> array) asking for ``outputs`` as binary tensors."""
    arrays = {name: np.ascontiguousarray(arr) for name, arr in inputs.items()}
    header = {
        "inputs": [
            {
                "name": name,
                "shape": list(arr.shape),
                "datatype": _DATATYPES[arr.dtype],
                "parameters": {"binary_data_size": arr.nbytes},
            }
            for name, arr in arrays.items()
        ],
        "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in outputs],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return InferBody(body=head + b"".join(arr.tobytes() for arr in arrays.values()), header_length=len(head))


def infer_path(model: str, version: int) -> str:
    """The URL path of an inference on one version (versions are always addressed explicitly)."""
    return f"/v2/models/{model}/versions/{version}/infer"


def http_request(host: str, path: str, request: InferBody) -> bytes:
    """A complete HTTP/1.1 keep-alive POST carrying ``request``, ready to write to a socket."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
        f"{HEADER_LENGTH}: {request.header_length}\r\nContent-Length: {len(request.body)}\r\n\r\n"
    )
    return head.encode() + request.body


def decode_response(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    """Decode an inference response (binary outputs when ``header_length`` is set, else JSON)."""
    if header_length is None:
        doc = json.loads(body)
        return {
            out["name"]: np.asarray(out["data"], dtype=_DTYPES[out["datatype"]]).reshape(out["shape"])
            for out in doc["outputs"]
        }
    doc = json.loads(body[:header_length])
    offset = header_length
    arrays: dict[str, np.ndarray] = {}
    for out in doc["outputs"]:
        size = int(out["parameters"]["binary_data_size"])
        dtype = _DTYPES[out["datatype"]]
        flat = np.frombuffer(body, dtype=dtype, count=size // dtype.itemsize, offset=offset)
        arrays[out["name"]] = flat.reshape(out["shape"])
        offset += size
    return arrays


def infer(
    base_url: str, model: str, version: int, inputs: dict[str, np.ndarray], outputs: list[str]
) -> dict[str, np.ndarray]:
    """One blocking inference through ``urllib`` (for checks, not for load).

    Raises:
        InferenceFailed: Triton returned an error status; the message carries its error text.
    """
    request = encode_request(inputs, outputs)
    req = urllib.request.Request(
        base_url + infer_path(model, version),
        data=request.body,
        method="POST",
        headers={"Content-Type": "application/octet-stream", HEADER_LENGTH: str(request.header_length)},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = resp.read()
            length = resp.headers.get(HEADER_LENGTH)
    except urllib.error.HTTPError as exc:
        raise InferenceFailed(f"{model} v{version}: HTTP {exc.code}: {exc.read().decode(errors='replace')}") from exc
    return decode_response(body, int(length) if length is not None else None)
