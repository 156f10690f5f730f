"""A bounded buffer drained by one thread: how the audit log and the feedback store stay off the
request path.

The request path only appends to a :class:`collections.deque` (``submit`` takes no lock, wakes
nobody and does no I/O). The writer thread sleeps ``interval_s`` (0.1 s), then takes everything
that accumulated and hands it to :meth:`BackgroundWriter.write_batch` in one go: one SQLite
transaction or one file write per interval instead of one per request. Waking the thread per item
(what a ``queue.Queue`` does) cost the event loop more than the writing itself: every wake-up is a
GIL hand-over in the middle of request handling. ``flush`` wakes the thread at once.

When the buffer is full (``capacity`` items, or ``max_buffered_bytes`` of what :meth:`BackgroundWriter.size_of`
counts, e.g. the request bodies the audit log holds until it hashes them) the item is dropped and
counted rather than slowing requests down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_BATCH = 5000
"""Most items handed to one ``write_batch`` call."""


class _Flush:
    def __init__(self) -> None:
        self.done = threading.Event()


class _Stop:
    pass


class BackgroundWriter(Generic[T]):
    """Base of the writers: subclasses implement :meth:`write_batch` (and may override :meth:`tick`)."""

    name = "writer"
    tick_s = 60.0
    interval_s = 0.1
    """How long items wait to be written at most (plus the time of the write before them)."""

    def __init__(self, capacity: int = 100_000, max_buffered_bytes: int | None = None) -> None:
        """Args:
        capacity: the most items buffered.
        max_buffered_bytes: the most bytes buffered, as :meth:`size_of` counts them; None = no bound.
        """
        self.capacity = capacity
        self.max_buffered_bytes = max_buffered_bytes
        # Two counters with one writer each (the submitting thread, the writer thread): no lock, no lost update.
        self._bytes_in = 0
        self._bytes_out = 0
        self._buffer: deque[T | _Flush | _Stop] = deque()
        self._wake = threading.Event()
        self.dropped = 0
        self._last_drop_log = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the writer thread."""
        self._thread = threading.Thread(target=self._run, name=f"modelops-{self.name}", daemon=True)
        self._thread.start()

    @property
    def buffered_bytes(self) -> int:
        """Bytes buffered, as :meth:`size_of` counts them."""
        return self._bytes_in - self._bytes_out

    def size_of(self, item: T) -> int:
        """The bytes ``item`` holds while buffered (counted against ``max_buffered_bytes``); 0 unless overridden."""
        return 0

    def submit(self, item: T) -> None:
        """Buffer ``item`` without blocking; drop it (counted, logged at most once a minute) when full."""
        if self.max_buffered_bytes is None:
            if len(self._buffer) < self.capacity:
                self._buffer.append(item)  # deque.append is atomic: no lock needed
                return
        else:
            size = self.size_of(item)
            if len(self._buffer) < self.capacity and self._bytes_in - self._bytes_out + size <= self.max_buffered_bytes:
                self._bytes_in += size
                self._buffer.append(item)
                return
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_drop_log > 60:
            self._last_drop_log = now
            log.warning("%s buffer full: %d items dropped so far", self.name, self.dropped)

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until everything submitted before the call is written; False on timeout."""
        if self._thread is None or not self._thread.is_alive():
            return False
        marker = _Flush()
        self._buffer.append(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is buffered, stop the thread and release resources."""
        if self._thread is not None and self._thread.is_alive():
            self._buffer.append(_Stop())
            self._wake.set()
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("%s: the writer did not stop within %.0f s; the last items may be lost", self.name, timeout)
        self._thread = None
        self.release()

    def write_batch(self, items: list[T]) -> None:
        """Write ``items`` (runs on the writer thread)."""
        raise NotImplementedError

    def tick(self) -> None:
        """Periodic housekeeping on the writer thread, every ``tick_s`` seconds."""

    def release(self) -> None:
        """Close files or connections after the thread stopped."""

    def _drain(self) -> tuple[list[T], list[_Flush], bool]:
        items: list[T] = []
        markers: list[_Flush] = []
        stop = False
        popleft = self._buffer.popleft
        while len(items) < _BATCH:
            try:
                entry = popleft()
            except IndexError:
                break
            if isinstance(entry, _Stop):
                stop = True
            elif isinstance(entry, _Flush):
                markers.append(entry)
                break  # write what came before the marker, then answer it
            else:
                items.append(entry)
        if self.max_buffered_bytes is not None and items:
            self._bytes_out += sum(self.size_of(item) for item in items)
        return items, markers, stop

    def _run(self) -> None:
        next_tick = time.monotonic() + self.tick_s
        stop = False
        more = False
        while True:
            if not more:
                # Let the buffer fill for an interval rather than writing each item as it comes.
                self._wake.wait(self.interval_s)
                self._wake.clear()
            items, markers, stopping = self._drain()
            stop = stop or stopping
            if items:
                try:
                    self.write_batch(items)
                except Exception:
                    log.exception("%s: writing %d items failed; they are lost", self.name, len(items))
            for marker in markers:
                marker.done.set()
            if stop and not self._buffer:
                return
            more = stop or bool(markers) or len(items) >= _BATCH
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + self.tick_s
                try:
                    self.tick()
                except Exception:
                    log.exception("%s: housekeeping failed", self.name)
