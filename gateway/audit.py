"""The audit log: one JSON line per request, in a rotating file, written off the request path.

A line holds ``time`` (UTC, ISO 8601), ``request_id``, ``route``, ``model``, ``version``,
``alias``, ``run_id`` (the MLflow run of the version), ``status``, ``code``, ``latency_ms``,
``records``, ``flags`` and ``input_sha256`` (of the raw request body); the body itself only
with ``audit_log_payloads``. Headers are never written, so API keys never reach the file.

The request path enqueues a small tuple; hashing, serialising and writing happen on the
writer thread, which flushes the file after each batch but never fsyncs. The file rotates at
``audit_log_max_bytes`` into ``<name>.1`` ... ``<name>.<backups>``. With several worker
processes, put ``{pid}`` in the path to give each its own file (appends of whole lines from
several processes to one file also work on a local disk, but rotation then races).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from gateway.background import BackgroundWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditEntry:
    """What the request path knows about one request."""

    time: float
    request_id: str
    route: str
    model: str
    version: int | None
    alias: str | None
    run_id: str | None
    status: int
    code: str
    latency_s: float
    records: int
    flags: int
    body: bytes
    payload: Any = None  # the parsed body, only when payloads are logged


def audit_path(template: Path) -> Path:
    """The file for this process: ``{pid}`` in ``template`` is replaced by the process id."""
    return Path(str(template).replace("{pid}", str(os.getpid())))


class AuditLog(BackgroundWriter[AuditEntry]):
    """Rotating JSONL file of :class:`AuditEntry` lines."""

    name = "audit-log"

    def __init__(
        self, path: Path, *, max_bytes: int, backups: int, payloads: bool, queue_max_bytes: int | None = None
    ) -> None:
        """Args:
        path: the file (``{pid}`` replaced by the process id).
        max_bytes: the size at which the file rotates.
        backups: rotated files kept.
        payloads: also write the parsed request bodies.
        queue_max_bytes: the most bytes of request bodies waiting to be written (beyond it lines are
            dropped, counted); None = bounded by count only.
        """
        super().__init__(max_buffered_bytes=queue_max_bytes)
        self.path = audit_path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.payloads = payloads
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] | None = None
        self._size = 0

    def size_of(self, item: AuditEntry) -> int:
        """The raw body an entry holds until it is hashed (plus a line's worth of fields)."""
        return len(item.body) + 256

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self._file = self.path.open("ab")
            self._size = self._file.tell()
        return self._file

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.path.exists():
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))

    def write_batch(self, items: list[AuditEntry]) -> None:
        """Serialise and append ``items``, rotating when the file would pass ``max_bytes``."""
        fh = self._open()
        for entry in items:
            doc = self._document(entry)
            try:
                line = orjson.dumps(doc) + b"\n"
            except TypeError:  # a payload orjson cannot write (an integer over 64 bits)
                doc.pop("payload", None)
                line = orjson.dumps(doc) + b"\n"
            if self._size and self._size + len(line) > self.max_bytes:
                fh.flush()
                self._rotate()
                fh = self._open()
            fh.write(line)
            self._size += len(line)
        fh.flush()

    def _document(self, e: AuditEntry) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(e.time, UTC).isoformat(timespec="milliseconds"),
            "request_id": e.request_id,
            "route": e.route,
            "model": e.model,
            "version": e.version,
            "alias": e.alias,
            "run_id": e.run_id,
            "status": e.status,
            "code": e.code,
            "latency_ms": round(e.latency_s * 1000.0, 3),
            "records": e.records,
            "flags": e.flags,
            "input_sha256": hashlib.sha256(e.body).hexdigest(),
        }
        if self.payloads and e.payload is not None:
            doc["payload"] = e.payload
        return doc

    def release(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None
