"""A small blocking Triton client on the standard library's ``http.client``: control traffic and checks.

Readiness, model loading, the repository index, server metadata, statistics and inference with binary tensors
(:mod:`tritonio.codec`) over one keep-alive connection. For the sync controller
(:mod:`deployer.triton_control`), the GPU check and tests: rare calls, where the request path
uses :mod:`tritonio.aio`. Failures are :mod:`tritonio.errors`. A client holds one connection,
so it serves one thread at a time; make one per thread.

Needs numpy and the standard library only (the GPU check runs it on a bare GPU host).
"""

from __future__ import annotations

import http.client
import logging
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote

import numpy as np

from tritonio.codec import HEADER_LENGTH, decode_response, encode_request, error_message, loads
from tritonio.errors import BadResponse, DeadlineExceeded, Refused, Unavailable
from tritonio.http1 import model_path, parse_url

log = logging.getLogger(__name__)

_BROKEN = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, http.client.IncompleteRead)
"""The connection broke: on a reused keep-alive connection, Triton may have closed it while idle."""


class BlockingTritonClient:
    """Blocking calls to one Triton over one keep-alive HTTP/1.1 connection (opened on first use).

    A reused connection that breaks before the answer (Triton closed it while idle, e.g. after a
    restart) is retried once on a new one: every call here is idempotent.
    """

    def __init__(self, url: str, timeout_s: float = 120.0) -> None:
        """Args:
        url: Triton's HTTP endpoint, ``host:port`` (an ``http://`` prefix is accepted).
        timeout_s: deadline of connecting and of each read or write.

        Raises:
            ValueError: ``url`` is not ``host:port``.
        """
        self.url = url
        self.timeout_s = timeout_s
        self.host, self.port, _authority = parse_url(url)
        self._conn: http.client.HTTPConnection | None = None

    def __enter__(self) -> BlockingTritonClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def server_ready(self) -> bool:
        """Whether Triton answers ``GET /v2/health/ready`` with 200; False when it cannot be reached."""
        return self._ok("/v2/health/ready")

    def model_ready(self, model: str, version: int) -> bool:
        """Whether ``model`` ``version`` is loaded and ready."""
        return self._ok(model_path(model, version, "ready"))

    def load_model(self, model: str) -> None:
        """Ask Triton to (re)load ``model`` from its repository; returns when Triton has done so.

        Raises:
            Refused: Triton could not load it (its message says why).
            Unavailable, DeadlineExceeded, BadResponse: as every call.
        """
        status, _length, body = self._call("POST", f"/v2/repository/models/{quote(model, safe='')}/load", b"")
        if status != 200:
            raise Refused(status, error_message(body))

    def repository_index(self) -> list[dict[str, Any]]:
        """The repository index: one entry (``name``, ``version``, ``state``, ``reason``) per model version.

        Raises:
            Refused, Unavailable, DeadlineExceeded, BadResponse: as every call.
        """
        index = self._json("POST", "/v2/repository/index", b"")
        if not isinstance(index, list) or not all(isinstance(entry, dict) for entry in index):
            raise BadResponse("the repository index is not a list of models")
        return index

    def server_metadata(self) -> dict[str, Any]:
        """``GET /v2``: the server's name, version and extensions.

        Raises:
            Refused, Unavailable, DeadlineExceeded, BadResponse: as every call.
        """
        return self._get_object("/v2")

    def model_statistics(self, model: str, version: int) -> dict[str, Any]:
        """``GET /v2/models/<model>/versions/<version>/stats``: Triton's counters of one version.

        Raises:
            Refused, Unavailable, DeadlineExceeded, BadResponse: as every call.
        """
        return self._get_object(model_path(model, version, "stats"))

    def infer(
        self,
        model: str,
        version: int,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] = (),
        *,
        request_id: str = "",
    ) -> dict[str, np.ndarray]:
        """One inference with binary tensors; the outputs named (none named: every output).

        Raises:
            Refused: Triton refused or failed the request.
            MissingOutput: a named output is not in the answer.
            Unavailable, DeadlineExceeded, BadResponse: as every call.
        """
        request = encode_request(inputs, outputs, request_id=request_id)
        headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(request.header_length)}
        status, length, body = self._call("POST", model_path(model, version, "infer"), request.body(), headers)
        if status != 200:
            raise Refused(status, error_message(body))
        return decode_response(body, length, list(outputs) if outputs else None)

    # -- internals -------------------------------------------------------------------------------
    def _get_object(self, path: str) -> dict[str, Any]:
        document = self._json("GET", path)
        if not isinstance(document, dict):
            raise BadResponse(f"the answer to GET {path} is not a JSON object")
        return document

    def _json(self, method: str, path: str, body: bytes | None = None) -> Any:
        """The JSON document of a 200 answer; Refused for any other status, BadResponse when unreadable."""
        status, _length, answer = self._call(method, path, body)
        if status != 200:
            raise Refused(status, error_message(answer))
        try:
            return loads(answer)
        except ValueError as exc:
            raise BadResponse(f"unreadable answer to {method} {path}: {exc}") from exc

    def _ok(self, path: str) -> bool:
        try:
            status, _length, _body = self._call("GET", path)
        except (Unavailable, DeadlineExceeded, BadResponse) as exc:
            log.debug("Triton at %s: GET %s failed: %s", self.url, path, exc)
            return False
        return status == 200

    def _call(
        self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, int | None, bytes]:
        """One request; (status, ``Inference-Header-Content-Length`` or None, body)."""
        for attempt in (1, 2):
            reused = self._conn is not None
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            conn = self._conn
            try:
                conn.request(method, path, body=body, headers=dict(headers or {}))
                response = conn.getresponse()
                data = response.read()
            except TimeoutError as exc:
                self.close()
                raise DeadlineExceeded(self.timeout_s) from exc
            except _BROKEN as exc:  # RemoteDisconnected is a ConnectionResetError
                self.close()
                if reused and attempt == 1:
                    log.debug("a kept-alive connection to Triton at %s broke (%r); retrying", self.url, exc)
                    continue
                raise Unavailable(f"the connection to Triton at {self.url} broke: {exc!r}") from exc
            except OSError as exc:
                self.close()
                raise Unavailable(f"cannot reach Triton at {self.url}: {exc}") from exc
            except http.client.HTTPException as exc:
                self.close()
                raise BadResponse(f"Triton at {self.url} answered something that is not HTTP/1.1: {exc!r}") from exc
            if response.will_close:
                self.close()
            encoding = response.getheader("Content-Encoding")
            if encoding is not None and encoding.strip().lower() != "identity":
                raise BadResponse("compressed response (the client never asks for compression)")
            value = response.getheader(HEADER_LENGTH)
            length = None
            if value is not None:
                try:
                    length = int(value)
                except ValueError:
                    raise BadResponse(f"bad {HEADER_LENGTH}: {value[:20]!r}") from None
            return response.status, length, data
        raise AssertionError("unreachable")  # the loop returns or raises
