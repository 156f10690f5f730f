"""HTTP/1.1 framing for every client of this project that speaks raw HTTP: requests out, responses in.

Out: :func:`request_bytes` (any request, headers as given), :func:`infer_prefix` and
:func:`infer_request` (a KServe v2 binary infer POST, its fixed part prepared once per model
version), :func:`get_request`.

In: :func:`parse_head` reads a response head (status line and headers) into a
:class:`ResponseHead`: status, ``Content-Length``, ``Inference-Header-Content-Length``,
``Transfer-Encoding: chunked`` (which overrides ``Content-Length``, RFC 9112), whether the
connection stays open (HTTP/1.1 unless ``Connection: close``, HTTP/1.0 only with
``Connection: keep-alive``), ``Content-Encoding``, and one more header a caller names.
:func:`read_response` reads a whole response from an ``asyncio.StreamReader``: interim ``1xx``
answers skipped, then the body by length, chunked (extensions and trailers dropped), none
(101, 204, 304), or up to the end of the connection (which then cannot be reused). Protocol
parsers (:mod:`benchmarks.gpu.loadgen`) call :func:`parse_head` on the bytes they buffered.

The head is read with one regular expression over its lower-cased copy, for the few headers
that matter, not split into a dictionary: on the development machine :func:`parse_head` takes
~1.4 us for a Triton answer's head (the gateway's former hand-written parser: 1.7 us), and the
asyncio load generator reads a whole gateway answer in ~3.0 us, as with its former reader.

Standard library only (load generators import it without numpy).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import quote

from tritonio.errors import BadResponse

if TYPE_CHECKING:
    from tritonio.codec import EncodedRequest

TERMINATOR = b"\r\n\r\n"
"""The end of a head."""
NO_BODY = (101, 204, 304)
"""Final statuses that never have a body (this package sends no HEAD requests)."""
_FRAMING = re.compile(
    rb"\r\n(content-length|inference-header-content-length|transfer-encoding|connection|content-encoding):([^\r\n]*)"
)
"""The headers that say how a body is framed and whether the connection stays, in a lower-cased head."""


class ResponseHead(NamedTuple):
    """What a response head says about the response."""

    status: int
    keep_alive: bool
    """Whether the connection can carry another request after this response."""
    content_length: int | None
    """None when absent, or when the body is chunked."""
    chunked: bool
    header_length: int | None
    """``Inference-Header-Content-Length``: the JSON header's length in a binary infer answer."""
    content_encoding: bytes | None
    """Lower-cased; None when absent."""
    extra: bytes | None = None
    """The value of the header the caller asked :func:`parse_head` for (as sent), or None."""

    @property
    def identity(self) -> bool:
        """Whether the body is not compressed (this package never asks for compression)."""
        return self.content_encoding is None or self.content_encoding == b"identity"


def parse_url(url: str) -> tuple[str, int, str]:
    """``host:port`` (an ``http://`` prefix and ``[v6]`` hosts accepted) -> (host, port, ``Host`` header value).

    Raises:
        ValueError: not ``host:port``, or ``https://`` (TLS is not supported).
    """
    if url.startswith("https://"):
        raise ValueError(f"Triton HTTP URL {url!r}: TLS is not supported; give host:port")
    netloc = url.removeprefix("http://").rstrip("/")
    host, sep, port = netloc.rpartition(":")
    if not sep or not port.isdigit() or not host or "/" in netloc:
        raise ValueError(f"Triton HTTP URL {url!r}: expected host:port")
    return host.strip("[]"), int(port), netloc


def request_bytes(method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes | None = None) -> bytes:
    """A complete request: request line, ``headers`` as given, ``Content-Length`` when there is a body, the body."""
    lines = [f"{method} {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers)]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def get_request(host: str, path: str) -> bytes:
    """A keep-alive ``GET`` of ``path``."""
    return b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path.encode("latin-1"), host.encode("latin-1"))


def model_path(model: str, version: int, action: str) -> str:
    """``/v2/models/<model>/versions/<version>/<action>``, the model name quoted (versions are always explicit)."""
    return f"/v2/models/{quote(model, safe='')}/versions/{version}/{action}"


def infer_prefix(host: str, model: str, version: int) -> bytes:
    """The fixed start of a binary infer POST to ``model`` ``version``, up to the value of the JSON header length."""
    return (
        b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\n"
        b"Inference-Header-Content-Length: "
        % (model_path(model, version, "infer").encode("latin-1"), host.encode("latin-1"))
    )


def infer_request(prefix: bytes, request: EncodedRequest) -> bytes:
    """The whole infer POST: ``prefix`` (:func:`infer_prefix`), the two lengths, the encoded body."""
    header = request.header
    lengths = b"%d\r\nContent-Length: %d\r\n\r\n" % (len(header), request.length)
    return b"".join((prefix, lengths, header, *request.tensors))


def parse_head(head: bytes, extra: bytes = b"") -> ResponseHead:
    """Read a response head (status line to the blank line included).

    Args:
        head: the head's bytes.
        extra: the lower-case name of one more header to return the value of (``extra``).

    Raises:
        BadResponse: not an HTTP/1.x status line, or a malformed length.
    """
    lower = head.lower()
    code = head[9:12]
    if not (lower.startswith(b"http/1.") and code.isdigit() and head[12:13] in (b" ", b"\r")):
        raise BadResponse(f"not an HTTP/1.x response: {head[:40]!r}")
    keep_alive = lower[5:8] == b"1.1"
    length = json_length = encoding = None
    chunked = False
    try:
        for name, value in _FRAMING.findall(lower):
            if name == b"content-length":
                length = int(value)
            elif name == b"inference-header-content-length":
                json_length = int(value)
            elif name == b"transfer-encoding":
                chunked = chunked or b"chunked" in value
            elif name == b"connection":
                keep_alive = b"close" not in value and (keep_alive or b"keep-alive" in value)
            else:
                encoding = value.strip()
    except ValueError:
        raise BadResponse(f"malformed response head: {head[:200]!r}") from None
    if chunked:
        length = None  # RFC 9112: Transfer-Encoding overrides Content-Length
    value = None
    if extra:
        start = lower.find(b"\r\n" + extra + b":")
        if start >= 0:
            start += len(extra) + 3
            value = head[start : lower.find(b"\r\n", start)].strip()
    return ResponseHead(int(code), keep_alive, length, chunked, json_length, encoding, value)


async def read_response(
    reader: asyncio.StreamReader, head: bytes | None = None, extra: bytes = b""
) -> tuple[ResponseHead, bytes]:
    """Read one whole response: its head (interim ``1xx`` answers skipped) and its body.

    Args:
        reader: the connection.
        head: the first head when the caller already read it (to tell a stale connection apart).
        extra: one more header to read the value of (:func:`parse_head`).

    Returns:
        The final head (``keep_alive`` False when the body ran to the end of the connection,
        and after ``101``) and the body.

    Raises:
        BadResponse: not HTTP/1.x as read here, a malformed chunk, or a head beyond the reader's limit.
        asyncio.IncompleteReadError: the connection ended in the middle (``partial`` is what came).
        OSError: the connection failed.
    """
    try:
        while True:
            if head is None:
                head = await reader.readuntil(TERMINATOR)
            parsed = parse_head(head, extra)
            status = parsed.status
            if status >= 200 or status == 101:
                break
            head = None  # an interim answer (100 Continue, 103 Early Hints): the final one follows
        if status in NO_BODY:
            return (parsed._replace(keep_alive=False) if status == 101 else parsed), b""
        if parsed.chunked:
            return parsed, await _read_chunked(reader)
        length = parsed.content_length
        if length is not None:
            return parsed, (await reader.readexactly(length) if length else b"")
        return parsed._replace(keep_alive=False), await reader.read()  # no framing: the body runs to EOF
    except asyncio.LimitOverrunError as exc:
        raise BadResponse("a response head or chunk line beyond the reader's limit") from exc


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A ``Transfer-Encoding: chunked`` body (chunk extensions and trailers dropped)."""
    parts: list[bytes] = []
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0], 16)
        except ValueError:
            raise BadResponse(f"bad chunk size line {line[:40]!r}") from None
        if size < 0:
            raise BadResponse(f"bad chunk size line {line[:40]!r}")
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # a trailer field
            return b"".join(parts)
        chunk = await reader.readexactly(size + 2)
        if chunk[-2:] != b"\r\n":
            raise BadResponse("chunk not followed by CRLF")
        parts.append(chunk[:-2])
