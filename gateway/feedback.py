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

A request id stores one prediction: the first answered request that carries it. A later request
with the same ``X-Request-ID`` is answered as usual but its prediction is not stored, so repeating
an id never resets the one report of an outcome it takes, nor replaces another client's prediction;
its feedback is scored against that first prediction (send a fresh id per request to score each).
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
CREATE TABLE IF NOT EXISTS outcome_rollup (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    n INTEGER NOT NULL,
    sum_sq REAL NOT NULL,
    sum_abs REAL NOT NULL,
    PRIMARY KEY (model, version, bucket)
) WITHOUT ROWID;
"""

ROLLUP_BUCKET_S = 60
"""Width of a rollup bucket: the live quality reads whole buckets, and raw outcomes for the window's first one.

A constant, not a setting: every worker sharing a database must cut the same buckets.
"""

_BACKFILL_ROLLUP = f"""
INSERT INTO outcome_rollup (model, version, bucket, n, sum_sq, sum_abs)
SELECT model, version, CAST(received_at / {ROLLUP_BUCKET_S} AS INTEGER) * {ROLLUP_BUCKET_S}, SUM(n), SUM(sum_sq),
       SUM(sum_abs)
FROM outcomes GROUP BY 1, 2, 3
"""

_ADD_TO_ROLLUP = """
INSERT INTO outcome_rollup (model, version, bucket, n, sum_sq, sum_abs) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (model, version, bucket) DO UPDATE SET
    n = n + excluded.n, sum_sq = sum_sq + excluded.sum_sq, sum_abs = sum_abs + excluded.sum_abs
"""

_QUALITY = """
SELECT model, version, SUM(n), SUM(sum_sq), SUM(sum_abs) FROM (
    SELECT model, version, n, sum_sq, sum_abs FROM outcome_rollup WHERE bucket >= :first_bucket
    UNION ALL
    SELECT model, version, n, sum_sq, sum_abs FROM outcomes WHERE received_at >= :since AND received_at < :first_bucket
) GROUP BY model, version ORDER BY model, version
"""

OUTCOME_LIMIT = float(np.finfo(np.float32).max)
"""The largest outcome magnitude accepted: outputs are float32, and a bigger error would overflow the sum of squares."""


def _bucket(t: float) -> int:
    """Start of the rollup bucket holding time ``t`` (the same rounding as :data:`_BACKFILL_ROLLUP`)."""
    return int(t // ROLLUP_BUCKET_S) * ROLLUP_BUCKET_S


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
        "INSERT INTO predictions (request_id, model, version, created_at, outputs, rows, predictions, "
        "feedback_at) VALUES " + ", ".join([one] * rows) + " ON CONFLICT (request_id) DO NOTHING"
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
        self._backfill_rollup()
        self._reader = _connect(path)
        self._reader_lock = threading.Lock()

    def _backfill_rollup(self) -> None:
        """Build the rollup from the outcomes of a database written before it existed (once, by the first opener)."""
        with self._writer:
            self._writer.execute("BEGIN IMMEDIATE")
            empty = self._writer.execute("SELECT 1 FROM outcome_rollup LIMIT 1").fetchone() is None
            if empty and self._writer.execute("SELECT 1 FROM outcomes LIMIT 1").fetchone() is not None:
                self._writer.execute(_BACKFILL_ROLLUP)
                log.info("built the live-quality rollup from the stored outcomes of %s", self.path)

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
            # Only buckets wholly before the window: the one the window starts in is read from raw outcomes.
            self._writer.execute(
                "DELETE FROM outcome_rollup WHERE bucket + ? <= ?", (ROLLUP_BUCKET_S, now - self.window_s)
            )

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
        # A non-finite stored prediction (written before they were refused at serving time) has no error to
        # score: the outcome is accepted, those entries are left out (the answer's ``outcomes`` counts what
        # was scored), and the sums stay finite (SQLite stores NaN as NULL, which broke every later join).
        mask &= np.isfinite(predicted)
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
            if errors.size:
                sums = (int(errors.size), float(np.sum(errors**2)), float(np.sum(np.abs(errors))))
                self._reader.execute(
                    "INSERT INTO outcomes (model, version, received_at, n, sum_sq, sum_abs) VALUES (?, ?, ?, ?, ?, ?)",
                    (model, version, now, *sums),
                )
                self._reader.execute(_ADD_TO_ROLLUP, (model, version, _bucket(now), *sums))
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
        """Errors per version over the outcomes received within the window.

        Exact, and cheap whatever the number of outcomes (it runs at every ``/metrics`` scrape): the
        whole minutes of the window come from the rollup (one row per version and minute), only the
        minute the window starts in from the raw outcomes (a range of the ``received_at`` index).
        """
        since = time.time() - self.window_s
        first_bucket = _bucket(since) + ROLLUP_BUCKET_S
        with self._reader_lock:
            rows = self._reader.execute(_QUALITY, {"since": since, "first_bucket": first_bucket}).fetchall()
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
            # Bounded by float32, the type of the predictions: 1e200 is finite, but its square is not, and
            # one such outcome made the version's live quality infinite (hidden) for the whole window.
            if not (math.isfinite(number) and abs(number) <= OUTCOME_LIMIT):
                raise InvalidInput(
                    f"an outcome must be a finite number within the float32 range (at most {OUTCOME_LIMIT:.6g} in "
                    "magnitude): send the true value of the output in its unit",
                    field=f"{where}.{name}",
                )
            values[i, j], mask[i, j] = number, True
    if not mask.any():
        raise InvalidInput("no outcome given: at least one record needs a value", field="outcomes")
    return values, mask
