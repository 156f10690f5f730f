"""Delayed ground truth: ``POST /feedback`` joins true outcomes to earlier predictions.

Every answered ``/predict`` is kept (request id, model, version, the predictions as packed
float32) in SQLite for ``feedback_retention_s``; the request path only enqueues it, a writer
thread inserts batches (WAL, ``synchronous=NORMAL``: no fsync per commit). When the outcome
of a request arrives, minutes or days later, its errors against the stored predictions are
added to the version's outcomes; the live quality metric (the one the version was trained and
gated on: ``rmse`` or ``mae``) is computed from the outcomes received in the last
``quality_window_s`` seconds when ``/metrics`` is scraped.

With ``feedback_db_path`` on a shared disk every worker process uses the same database, so
feedback may reach any worker and the live quality covers all of them. Without it each process
keeps its own temporary database. Feedback for a prediction made less than a second ago may not
be joinable yet (the writer batches); it is retried after a flush of this process' queue.
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.background import BackgroundWriter
from gateway.errors import DuplicateFeedback, InvalidInput, UnknownRequestId

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    outputs TEXT NOT NULL,
    rows INTEGER NOT NULL,
    predictions BLOB NOT NULL,
    feedback_at REAL
);
CREATE INDEX IF NOT EXISTS predictions_created ON predictions(created_at);
CREATE TABLE IF NOT EXISTS outcomes (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    received_at REAL NOT NULL,
    n INTEGER NOT NULL,
    sum_sq REAL NOT NULL,
    sum_abs REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outcomes_received ON outcomes(received_at);
"""


@dataclass(frozen=True)
class StoredPrediction:
    """What the request path hands over for one answered request."""

    request_id: str
    model: str
    version: int
    created_at: float
    outputs: tuple[str, ...]
    values: np.ndarray  # [rows, len(outputs)]


@dataclass(frozen=True)
class Joined:
    """Result of a successful join."""

    request_id: str
    model: str
    version: int
    outcomes: int


@dataclass(frozen=True)
class VersionQuality:
    """Errors of one version's outcomes inside the window."""

    model: str
    version: int
    n: int
    sum_sq: float
    sum_abs: float

    def value(self, metric: str) -> float:
        """``rmse`` or ``mae`` of the outcomes."""
        if self.n == 0:
            return math.nan
        return math.sqrt(self.sum_sq / self.n) if metric == "rmse" else self.sum_abs / self.n


_COLUMNS = 7
_ROWS_PER_INSERT = 500  # 3,500 parameters, well under SQLite's limit of 32,766


@functools.lru_cache(maxsize=64)
def _insert_sql(rows: int) -> str:
    """One INSERT statement of ``rows`` predictions."""
    one = "(" + ", ".join("?" * _COLUMNS) + ", NULL)"
    return (
        "INSERT OR REPLACE INTO predictions (request_id, model, version, created_at, outputs, rows, predictions, "
        "feedback_at) VALUES " + ", ".join([one] * rows)
    )


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


class FeedbackStore(BackgroundWriter[StoredPrediction]):
    """SQLite store of predictions awaiting their outcome, and of the outcomes received."""

    name = "feedback-store"
    tick_s = 60.0

    def __init__(self, path: Path | None, *, retention_s: float, window_s: float) -> None:
        super().__init__()
        self._tmpdir: str | None = None
        if path is None:
            self._tmpdir = tempfile.mkdtemp(prefix="modelops-feedback-")
            path = Path(self._tmpdir) / "feedback.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.retention_s = retention_s
        self.window_s = window_s
        self._writer = _connect(path)
        self._writer.executescript(_SCHEMA)
        self._reader = _connect(path)
        self._reader_lock = threading.Lock()

    def submit(self, item: StoredPrediction) -> None:
        """Buffer a prediction for the writer; one with a NaN or infinite value is never stored.

        The request path answers such a prediction 502 before it gets here
        (:func:`gateway.inference.finite`); were one stored, the errors of its feedback would be NaN,
        which no quality sum survives. Its feedback answers ``unknown_request_id``.
        """
        if not np.isfinite(item.values).all():
            log.error("not storing the prediction of %s v%s: it is not finite", item.model, item.version)
            return
        super().submit(item)

    # -- writer thread ---------------------------------------------------------------------------
    def write_batch(self, items: list[StoredPrediction]) -> None:
        """Insert a batch of predictions in one transaction."""
        values: list[Any] = []
        for p in items:
            values += (
                p.request_id,
                p.model,
                p.version,
                p.created_at,
                ",".join(p.outputs),
                int(p.values.shape[0]),
                np.ascontiguousarray(p.values, dtype=np.float32).tobytes(),
            )
        # Many rows per statement: sqlite3 lets go of the GIL around every statement it steps, and
        # one hand-over per row (``executemany``) cost the event loop more than the inserts.
        with self._writer:
            self._writer.execute("BEGIN")
            for start in range(0, len(items), _ROWS_PER_INSERT):
                chunk = values[start * _COLUMNS : (start + _ROWS_PER_INSERT) * _COLUMNS]
                self._writer.execute(_insert_sql(len(chunk) // _COLUMNS), chunk)

    def tick(self) -> None:
        """Forget predictions past retention and outcomes past the quality window."""
        now = time.time()
        with self._writer:
            self._writer.execute("BEGIN")
            self._writer.execute("DELETE FROM predictions WHERE created_at < ?", (now - self.retention_s,))
            self._writer.execute("DELETE FROM outcomes WHERE received_at < ?", (now - self.window_s,))

    def release(self) -> None:
        """Close the connections (and remove the temporary database)."""
        self._writer.close()
        self._reader.close()
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    # -- feedback (called from a worker thread of the event loop) --------------------------------
    def join(self, request_id: str, outcomes: Any) -> Joined:
        """Join ``outcomes`` (one entry per record of the original request) to the stored prediction.

        Raises:
            UnknownRequestId: no prediction with this id (never made, or past retention).
            DuplicateFeedback: the outcome of this request was already received.
            InvalidInput: ``outcomes`` does not match the original request's records and outputs.
        """
        row = self._fetch(request_id)
        if row is None:
            self.flush(timeout=2.0)  # it may still be queued in this process
            row = self._fetch(request_id)
        if row is None:
            raise UnknownRequestId(
                "no prediction with this request_id: it was never answered here or is older than the retention period",
                field="request_id",
            )
        model, version, outputs_csv, rows, blob, feedback_at = row
        if feedback_at is not None:
            raise DuplicateFeedback("the outcome of this request was already received", field="request_id")
        outputs = outputs_csv.split(",")
        predicted = np.frombuffer(blob, dtype=np.float32).reshape(rows, len(outputs)).astype(np.float64)
        truth, mask = parse_outcomes(outcomes, rows, outputs)
        errors = (truth - predicted)[mask]
        now = time.time()
        with self._reader_lock, self._reader:
            self._reader.execute("BEGIN IMMEDIATE")
            updated = self._reader.execute(
                "UPDATE predictions SET feedback_at = ? WHERE request_id = ? AND feedback_at IS NULL",
                (now, request_id),
            ).rowcount
            if updated != 1:
                raise DuplicateFeedback("the outcome of this request was already received", field="request_id")
            self._reader.execute(
                "INSERT INTO outcomes (model, version, received_at, n, sum_sq, sum_abs) VALUES (?, ?, ?, ?, ?, ?)",
                (model, version, now, int(errors.size), float(np.sum(errors**2)), float(np.sum(np.abs(errors)))),
            )
        return Joined(request_id=request_id, model=model, version=int(version), outcomes=int(errors.size))

    def join_shadow(self, key: str, outcomes: Any) -> Joined | None:
        """Join the outcome to the challenger's shadow prediction stored under ``key``, if there is one."""
        if self._fetch(key) is None:
            return None
        try:
            return self.join(key, outcomes)
        except (UnknownRequestId, DuplicateFeedback, InvalidInput):
            return None

    def _fetch(self, request_id: str) -> tuple[Any, ...] | None:
        with self._reader_lock:
            row = self._reader.execute(
                "SELECT model, version, outputs, rows, predictions, feedback_at FROM predictions WHERE request_id = ?",
                (request_id,),
            ).fetchone()
        return tuple(row) if row is not None else None

    def quality(self) -> list[VersionQuality]:
        """Errors per version over the outcomes received within the window."""
        since = time.time() - self.window_s
        with self._reader_lock:
            rows = self._reader.execute(
                "SELECT model, version, SUM(n), SUM(sum_sq), SUM(sum_abs) FROM outcomes WHERE received_at >= ? "
                "GROUP BY model, version ORDER BY model, version",
                (since,),
            ).fetchall()
        return [VersionQuality(m, int(v), int(n or 0), float(sq or 0.0), float(ab or 0.0)) for m, v, n, sq, ab in rows]


def parse_outcomes(outcomes: Any, rows: int, outputs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Check ``outcomes`` against the original request; return ``(values, mask)`` of shape ``[rows, outputs]``.

    ``outcomes`` is a list with one entry per record sent: an object of true output values (a
    subset of the outputs), or null when the outcome of that record is not known.
    """
    if not isinstance(outcomes, list):
        raise InvalidInput("outcomes must be a list with one entry per record of the request", field="outcomes")
    if len(outcomes) != rows:
        raise InvalidInput(
            f"the request had {rows} record(s): send exactly one outcome entry (or null) per record",
            field="outcomes",
        )
    values = np.zeros((rows, len(outputs)), dtype=np.float64)
    mask = np.zeros((rows, len(outputs)), dtype=bool)
    index = {name: j for j, name in enumerate(outputs)}
    for i, entry in enumerate(outcomes):
        if entry is None:
            continue
        where = f"outcomes[{i}]"
        if not isinstance(entry, dict):
            raise InvalidInput("each outcome is an object of output values, or null", field=where)
        for name, value in entry.items():
            j = index.get(name)
            if j is None:
                raise InvalidInput(f"unknown output; the outputs are: {', '.join(outputs)}", field=where)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidInput("an outcome must be a number", field=f"{where}.{name}")
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if not math.isfinite(number):
                raise InvalidInput("an outcome must be a finite number", field=f"{where}.{name}")
            values[i, j], mask[i, j] = number, True
    if not mask.any():
        raise InvalidInput("no outcome given: at least one record needs a value", field="outcomes")
    return values, mask
