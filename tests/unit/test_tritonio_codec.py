"""tritonio.codec: every datatype there and back, BYTES, layouts and byte orders, the JSON fallback,
answers it refuses, and the package importing on a host without tritonclient, pydantic or orjson."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tritonio import codec
from tritonio.errors import BadResponse, MissingOutput

REPO_ROOT = Path(__file__).resolve().parents[2]

NUMERIC = {
    "BOOL": np.array([[True, False], [False, True]]),
    "UINT8": np.array([[0, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 2**64 - 1]], dtype=np.uint64),
    "INT8": np.array([[-128, 127]], dtype=np.int8),
    "INT16": np.array([[-(2**15), 2**15 - 1]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 2**63 - 1], [2**40, 7]], dtype=np.int64),
    "FP16": np.array([[0.5, -np.inf, 65504.0]], dtype=np.float16),
    "FP32": np.array([[1.5, np.nan, -0.0], [3e38, 1e-40, 7.0]], dtype=np.float32),
    "FP64": np.array([[np.pi, np.nan, 1e308]], dtype=np.float64),
}


@pytest.fixture(params=["orjson", "stdlib json"])
def json_library(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test with orjson, and with the standard library's json (a host without orjson)."""
    previous = codec.use_orjson(request.param == "orjson")
    try:
        yield request.param
    finally:
        codec.use_orjson(previous)


def split(body: bytes, header_length: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A request body's JSON header and each input's raw bytes, read without the codec."""
    header = json.loads(body[:header_length])
    offset, raw = header_length, {}
    for spec in header["inputs"]:
        size = spec["parameters"]["binary_data_size"]
        raw[spec["name"]] = body[offset : offset + size]
        offset += size
    assert offset == len(body), "bytes after the last input"
    return header, raw


def answer(outputs: dict[str, tuple[str, list[int], bytes]]) -> tuple[bytes, int]:
    """A binary infer response (name -> datatype, shape, raw bytes): body and JSON header length."""
    specs = [
        {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(raw)}}
        for name, (datatype, shape, raw) in outputs.items()
    ]
    head = json.dumps({"model_name": "m", "model_version": "1", "outputs": specs}).encode()
    return head + b"".join(raw for _datatype, _shape, raw in outputs.values()), len(head)


# --- there and back -----------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", list(NUMERIC))
def test_every_numeric_datatype_goes_there_and_back(json_library: str, datatype: str) -> None:
    array = NUMERIC[datatype]
    request = codec.encode_request({"t": array}, ["t"])
    header, raw = split(request.body(), request.header_length)
    assert request.length == len(request.body())
    assert header["inputs"] == [
        {
            "name": "t",
            "shape": list(array.shape),
            "datatype": datatype,
            "parameters": {"binary_data_size": array.nbytes},
        }
    ]
    assert raw["t"] == array.astype(array.dtype.newbyteorder("<")).tobytes()
    body, length = answer({"t": (datatype, list(array.shape), raw["t"])})
    (decoded,) = codec.decode_response(body, length).values()
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)
    # the same values as JSON data (what Triton sends when binary outputs are not asked for; JSON has no NaN)
    finite = np.where(np.isfinite(array), array, 0).astype(array.dtype) if array.dtype.kind == "f" else array
    document = {"outputs": [{"name": "t", "datatype": datatype, "shape": list(array.shape), "data": []}]}
    document["outputs"][0]["data"] = finite.ravel().tolist()
    from_json = codec.decode_response(json.dumps(document).encode(), None)["t"]
    assert from_json.dtype == array.dtype
    np.testing.assert_array_equal(from_json, finite)


def test_bytes_elements_are_length_prefixed_and_come_back_as_bytes(json_library: str) -> None:
    array = np.array([[b"a", b""], [b"\x00\xffraw", "héllo"]], dtype=object)
    request = codec.encode_request({"s": array}, ["s"])
    header, raw = split(request.body(), request.header_length)
    assert header["inputs"][0]["datatype"] == "BYTES"
    expected = b"".join(struct.pack("<I", len(b)) + b for b in [b"a", b"", b"\x00\xffraw", "héllo".encode()])
    assert raw["s"] == expected
    body, length = answer({"s": ("BYTES", [2, 2], raw["s"])})
    decoded = codec.decode_response(body, length)["s"]
    assert decoded.dtype == object and decoded.shape == (2, 2)
    assert decoded.tolist() == [[b"a", b""], [b"\x00\xffraw", "héllo".encode()]]
    # numpy's fixed-width string arrays and other objects too
    assert codec.encode_tensor(np.array(["ab", "c"]))[1] == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"
    assert codec.encode_tensor(np.array([b"xy"]))[1] == struct.pack("<I", 2) + b"xy"
    assert codec.encode_tensor(np.array([7, None], dtype=object))[1] == b"\x01\x00\x00\x007\x04\x00\x00\x00None"
    assert codec.encode_tensor(np.array([], dtype=object)) == ("BYTES", b"", 0)
    # BYTES as JSON data: strings, as tritonclient gives them
    document = {"outputs": [{"name": "s", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}]}
    assert codec.decode_response(json.dumps(document).encode(), None)["s"].tolist() == ["a", "b"]


def test_bytes_serialization_matches_tritonclient() -> None:
    utils = pytest.importorskip("tritonclient.utils")
    array = np.array([[b"one", b""], [b"\x00three", b"4"]], dtype=object)
    assert codec.serialize_bytes(array) == utils.serialize_byte_tensor(array).item()
    assert codec.deserialize_bytes(codec.serialize_bytes(array)).tolist() == (
        utils.deserialize_bytes_tensor(utils.serialize_byte_tensor(array).item()).tolist()
    )


def test_non_contiguous_and_big_endian_inputs_go_in_row_major_little_endian_order() -> None:
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    transposed = base.T  # column-major view
    strided = base[::2, 1::2]
    big = np.arange(6, dtype=">i8").reshape(2, 3)
    fortran_big = np.asfortranarray(np.arange(6, dtype=">f8").reshape(3, 2))
    inputs = {"t": transposed, "s": strided, "b": big, "f": fortran_big}
    request = codec.encode_request(inputs, ["y"])
    header, raw = split(request.body(), request.header_length)
    assert [i["datatype"] for i in header["inputs"]] == ["FP32", "FP32", "INT64", "FP64"]
    assert [i["shape"] for i in header["inputs"]] == [[6, 4], [2, 3], [2, 3], [3, 2]]
    assert raw["t"] == np.ascontiguousarray(transposed).tobytes()
    assert raw["s"] == np.ascontiguousarray(strided).tobytes()
    assert raw["b"] == np.arange(6, dtype="<i8").tobytes()
    assert raw["f"] == np.arange(6, dtype="<f8").tobytes()


def test_bf16_is_sent_from_ml_dtypes_and_received_as_float32() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    values = np.array([[1.0, -2.5, 3.140625]], dtype=ml_dtypes.bfloat16)
    datatype, data, size = codec.encode_tensor(values)
    assert (datatype, size) == ("BF16", 6)
    body, length = answer({"h": ("BF16", [1, 3], bytes(data))})
    decoded = codec.decode_response(body, length)["h"]
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, [[1.0, -2.5, 3.140625]])


def test_datatypes_without_a_triton_type_are_refused() -> None:
    with pytest.raises(TypeError, match="no Triton datatype"):
        codec.encode_request({"c": np.array([1 + 2j])})
    assert codec.datatype_of(np.dtype(">u2")) == "UINT16"


# --- the request header -------------------------------------------------------------------------


def test_header_asks_for_outputs_binary_or_json_and_carries_the_request_id(json_library: str) -> None:
    x = np.zeros((1, 2), np.float32)
    header = json.loads(codec.encode_request({"x": x}, ["y", "z"], request_id="req-1").header)
    assert header["id"] == "req-1"
    assert header["outputs"] == [
        {"name": "y", "parameters": {"binary_data": True}},
        {"name": "z", "parameters": {"binary_data": True}},
    ]
    as_json = json.loads(codec.encode_request({"x": x}, ["y"], binary_outputs=False).header)
    assert as_json["outputs"] == [{"name": "y", "parameters": {"binary_data": False}}] and "id" not in as_json
    every = json.loads(codec.encode_request({"x": x}).header)
    assert "outputs" not in every and every["parameters"] == {"binary_data_output": True}


def test_tensor_bytes_are_those_tritonclient_sends() -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    numeric = np.array([[1.5, np.nan], [3.0, 4.0]], dtype=np.float32)
    categorical = np.array([[2], [0]], dtype=np.int64)
    inputs = [httpclient.InferInput("n", [2, 2], "FP32"), httpclient.InferInput("c", [2, 1], "INT64")]
    inputs[0].set_data_from_numpy(numeric)
    inputs[1].set_data_from_numpy(categorical)
    theirs, their_length = httpclient.InferenceServerClient.generate_request_body(inputs)
    ours = codec.encode_request({"n": numeric, "c": categorical})
    assert ours.body()[ours.header_length :] == theirs[their_length:]
    assert json.loads(ours.header)["inputs"] == json.loads(theirs[:their_length])["inputs"]


# --- decoding -----------------------------------------------------------------------------------


def test_outputs_named_come_in_that_order_and_a_missing_one_is_named() -> None:
    body, length = answer({"a": ("FP32", [1], b"\x00\x00\x80?"), "b": ("INT32", [1], b"\x07\x00\x00\x00")})
    assert list(codec.decode_response(body, length, ["b", "a"])) == ["b", "a"]
    assert list(codec.decode_response(body, length, ["a"])) == ["a"]
    with pytest.raises(MissingOutput) as caught:
        codec.decode_response(body, length, ["a", "c"])
    assert caught.value.name == "c"


@pytest.mark.parametrize(
    ("body", "length"),
    [
        (b"not json", None),
        (b"not json", 8),
        (
            b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}]}',
            None,
        ),
        (b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}]}', 99),
        answer({"y": ("FP32", [2], b"\x00" * 4)}),  # the shape says 2, the bytes hold 1
        answer({"y": ("FP32", [1], b"\x00" * 3)}),  # no whole FP32
        answer({"y": ("COMPLEX", [1], b"\x00" * 8)}),
        answer({"y": ("BYTES", [1], b"\x05\x00\x00\x00ab")}),  # an element beyond its tensor
        answer({"y": ("BYTES", [1], b"\x05\x00")}),  # a truncated length
        (b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [2], "data": ["a", "b"]}]}', None),
        (b'{"outputs": [{"datatype": "FP32", "shape": [1], "data": [1.0]}]}', None),
        (b"[1, 2]", None),
    ],
)
def test_unreadable_bodies_are_bad_responses(body: bytes, length: int | None) -> None:
    with pytest.raises(BadResponse):
        codec.decode_response(body, length, ["y"])


def test_binary_body_bytes_after_the_header_are_shared_not_copied() -> None:
    body, length = answer({"y": ("FP32", [2, 1], np.array([7.5, -1.25], dtype="<f4").tobytes())})
    decoded = codec.decode_response(body, length)["y"]
    assert not decoded.flags.writeable and decoded.base is not None
    np.testing.assert_array_equal(decoded, [[7.5], [-1.25]])


def test_error_message_is_tritons_error_or_the_text() -> None:
    assert codec.error_message(b'{"error": "unknown model"}') == "unknown model"
    assert codec.error_message(b"plain text \xff") == "plain text \ufffd"
    assert codec.error_message(b"[1]") == ""


# --- a bare GPU host ----------------------------------------------------------------------------


def test_tritonio_and_the_gpu_check_run_without_tritonclient_pydantic_or_orjson() -> None:
    # The GPU check's ``run`` step runs on a host with numpy, the pytriton wheel and onnxruntime only.
    code = textwrap.dedent(
        f"""
        import importlib.abc, sys

        BLOCKED = ("tritonclient", "pydantic", "pydantic_settings", "orjson", "gevent", "grpc")

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is blocked (not installed on a bare GPU host)")
                return None

        sys.meta_path.insert(0, Block())
        sys.path.insert(0, {str(REPO_ROOT)!r})
        import numpy as np
        import tritonio.codec, tritonio.http1, tritonio.blocking, tritonio.aio, tritonio.errors
        from tritonio import codec, http1
        # and everything the GPU check's ``run`` step imports (the script itself, by path)
        import importlib.util, modelspec.rows, modelspec.layout, servers.tritonserver, servers.processes
        spec = importlib.util.spec_from_file_location("gpu_check", {str(REPO_ROOT / "benchmarks" / "gpu_check.py")!r})
        sys.modules["gpu_check"] = gpu_check = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(gpu_check)

        request = codec.encode_request({{"x": np.ones((2, 3), np.float32)}}, ["y"], request_id="r")
        raw = http1.infer_request(http1.infer_prefix("h:1", "m", 1), request)
        assert raw.startswith(b"POST /v2/models/m/versions/1/infer HTTP/1.1\\r\\n"), raw[:60]
        head = codec.dumps({{"outputs": [{{"name": "y", "datatype": "FP32", "shape": [1],
                                          "parameters": {{"binary_data_size": 4}}}}]}})
        out = codec.decode_response(head + np.float32(2.5).tobytes(), len(head), ["y"])
        assert out["y"].tolist() == [2.5]
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
