"""tritonio.http1: requests out byte for byte, response heads read, whole responses from a stream.

The stream tests read what the load generators and the pooled client read: a body by length,
chunked (extensions and trailers), none, or to the end of the connection; interim answers skipped.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tritonio import http1
from tritonio.codec import encode_request
from tritonio.errors import BadResponse


def _read(data: bytes, version_header: bytes = b"x-model-version") -> tuple[tuple[int, bool, bytes | None], bytes]:
    """Read one response from ``data``; return (status, reusable, version header) and what is left in the stream."""

    async def go() -> tuple[tuple[int, bool, bytes | None], bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        head, _body = await http1.read_response(reader, extra=version_header)
        return (head.status, head.keep_alive, head.extra), await reader.read()

    return asyncio.run(go())


def _body(data: bytes, limit: int = 2**16) -> bytes:
    async def go() -> bytes:
        reader = asyncio.StreamReader(limit=limit)
        reader.feed_data(data)
        reader.feed_eof()
        return (await http1.read_response(reader))[1]

    return asyncio.run(go())


# --- whole responses from a stream (the load generators' and the pooled client's reader) ---------


def test_read_response_by_length_keep_alive_and_version() -> None:
    got, rest = _read(b"HTTP/1.1 200 OK\r\nX-Model-Version: 7\r\nContent-Length: 2\r\n\r\nokNEXT")
    assert got == (200, True, b"7") and rest == b"NEXT"
    assert _read(b"HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n")[0] == (503, True, None)
    assert _read(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")[0][1] is False
    assert _read(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")[0][1] is False
    assert _read(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n")[0][1] is True


def test_read_response_chunked_with_extensions_and_trailers() -> None:
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;a=b\r\nWiki\r\n5\r\npedia\r\n0\r\nT: 1\r\n\r\nNEXT"
    got, rest = _read(data)
    assert got == (200, True, None) and rest == b"NEXT"
    assert _body(data) == b"Wikipedia"
    with pytest.raises(asyncio.IncompleteReadError):
        _read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWi")
    with pytest.raises(BadResponse):
        _read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    with pytest.raises(BadResponse):
        _read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY0\r\n\r\n")  # no CRLF after the data
    # Transfer-Encoding wins over Content-Length (RFC 9112)
    both = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    assert _body(both) == b"ok"


def test_read_response_interim_close_delimited_and_garbage() -> None:
    got, rest = _read(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxNEXT")
    assert got == (200, True, None) and rest == b"NEXT"
    got, rest = _read(b"HTTP/1.1 200 OK\r\n\r\nthe body runs to the end")
    assert got == (200, False, None) and rest == b""
    assert _body(b"HTTP/1.1 200 OK\r\n\r\nthe body runs to the end") == b"the body runs to the end"
    assert _read(b"HTTP/1.1 204 No Content\r\n\r\nNEXT") == ((204, True, None), b"NEXT")
    assert _read(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\nNEXT") == ((101, False, None), b"NEXT")
    with pytest.raises(BadResponse):
        _read(b"SSH-2.0-OpenSSH\r\n\r\n")
    with pytest.raises(asyncio.IncompleteReadError):
        _read(b"HTTP/1.1 20")


def test_a_head_the_caller_read_and_a_head_beyond_the_limit() -> None:
    async def go() -> tuple[http1.ResponseHead, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(b"okNEXT")
        return await http1.read_response(reader, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")

    head, body = asyncio.run(go())
    assert (head.status, body) == (200, b"ok")
    with pytest.raises(BadResponse, match="limit"):
        _body(b"HTTP/1.1 200 OK\r\nX-Long: " + b"x" * 4096 + b"\r\n\r\n", limit=1024)


# --- response heads -----------------------------------------------------------------------------


def test_a_triton_head_gives_both_lengths() -> None:
    head = http1.parse_head(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        b"Inference-Header-Content-Length: 150\r\nContent-Length: 154\r\n\r\n"
    )
    assert head == http1.ResponseHead(200, True, 154, False, 150, None, None)
    assert head.identity


def test_head_names_are_case_insensitive_and_the_extra_value_keeps_its_case() -> None:
    head = http1.parse_head(
        b"HTTP/1.1 404 Not Found\r\nCONTENT-LENGTH:  3 \r\nX-Model-Version:  V7 \r\n\r\n", b"x-model-version"
    )
    assert (head.status, head.content_length, head.extra) == (404, 3, b"V7")
    assert http1.parse_head(b"HTTP/1.1 200 OK\r\n\r\n", b"x-model-version").extra is None


def test_content_encoding_is_reported() -> None:
    gzip = http1.parse_head(b"HTTP/1.1 200 OK\r\nContent-Encoding: GZIP\r\nContent-Length: 0\r\n\r\n")
    assert gzip.content_encoding == b"gzip" and not gzip.identity
    assert http1.parse_head(b"HTTP/1.1 200 OK\r\nContent-Encoding: identity\r\n\r\n").identity


@pytest.mark.parametrize(
    "head",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 2\r\n\r\n",
        b"HTTP/1.1 2xx OK\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nInference-Header-Content-Length: x\r\n\r\n",
    ],
)
def test_malformed_heads_are_bad_responses(head: bytes) -> None:
    with pytest.raises(BadResponse):
        http1.parse_head(head)


# --- requests out -------------------------------------------------------------------------------


def test_request_bytes_are_the_headers_given_and_the_length() -> None:
    raw = http1.request_bytes("POST", "/p", [("Host", "h:1"), ("X-A", "b")], b"abc")
    assert raw == b"POST /p HTTP/1.1\r\nHost: h:1\r\nX-A: b\r\nContent-Length: 3\r\n\r\nabc"
    assert http1.request_bytes("GET", "/", [("Host", "h")]) == b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    assert http1.get_request("h:1", "/v2/health/ready") == b"GET /v2/health/ready HTTP/1.1\r\nHost: h:1\r\n\r\n"


def test_an_infer_request_on_the_wire() -> None:
    numeric = np.array([[1.5, np.nan], [3.0, 4.0]], dtype=np.float32)
    categorical = np.array([[2], [0]], dtype=np.int64)
    request = encode_request({"numeric": numeric, "categorical": categorical}, ["y"])
    raw = http1.infer_request(http1.infer_prefix("h:1", "m", 3), request)
    assert raw.startswith(b"POST /v2/models/m/versions/3/infer HTTP/1.1\r\nHost: h:1\r\n")
    assert f"Inference-Header-Content-Length: {request.header_length}\r\n".encode() in raw
    assert f"\r\nContent-Length: {request.length}\r\n\r\n".encode() in raw
    assert raw.endswith(request.body()) and raw.index(b"\r\n\r\n") + 4 + request.length == len(raw)
    assert http1.model_path("a model/x", 2, "ready") == "/v2/models/a%20model%2Fx/versions/2/ready"


@pytest.mark.parametrize(
    ("url", "host", "port", "authority"),
    [
        ("triton:8000", "triton", 8000, "triton:8000"),
        ("http://10.0.0.1:9000/", "10.0.0.1", 9000, "10.0.0.1:9000"),
        ("[::1]:8000", "::1", 8000, "[::1]:8000"),
    ],
)
def test_urls(url: str, host: str, port: int, authority: str) -> None:
    assert http1.parse_url(url) == (host, port, authority)


@pytest.mark.parametrize("url", ["triton", "https://triton:8443", "triton:http", "triton:8000/v2"])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="Triton HTTP URL"):
        http1.parse_url(url)
