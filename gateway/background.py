"""A bounded queue drained by one thread: how the audit log and the feedback store stay off the
request path.

The request path only enqueues (``submit`` never blocks and never does I/O); the thread takes
whatever has accumulated and hands it to :meth:`BackgroundWriter.write_batch` in one go. When the
queue is full the item is dropped and counted rather than slowing requests down.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_BATCH = 1000


class _Flush:
    def __init__(self) -> None:
        self.done = threading.Event()


class _Stop:
    pass


class BackgroundWriter(Generic[T]):
    """Base of the writers: subclasses implement :meth:`write_batch` (and may override :meth:`tick`)."""

    name = "writer"
    tick_s = 60.0

    def __init__(self, capacity: int = 100_000) -> None:
        self._queue: queue.Queue[T | _Flush | _Stop] = queue.Queue(maxsize=capacity)
        self.dropped = 0
        self._last_drop_log = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the writer thread."""
        self._thread = threading.Thread(target=self._run, name=f"modelops-{self.name}", daemon=True)
        self._thread.start()

    def submit(self, item: T) -> None:
        """Enqueue ``item`` without blocking; drop it (counted, logged at most once a minute) when full."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_drop_log > 60:
                self._last_drop_log = now
                log.warning("%s queue full: %d items dropped so far", self.name, self.dropped)

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until everything submitted before the call is written; False on timeout."""
        if self._thread is None or not self._thread.is_alive():
            return False
        marker = _Flush()
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        return marker.done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, stop the thread and release resources."""
        if self._thread is not None and self._thread.is_alive():
            try:
                self._queue.put(_Stop(), timeout=timeout)
            except queue.Full:
                log.warning("%s: queue full at shutdown; the last items are lost", self.name)
            self._thread.join(timeout)
        self._thread = None
        self.release()

    def write_batch(self, items: list[T]) -> None:
        """Write ``items`` (runs on the writer thread)."""
        raise NotImplementedError

    def tick(self) -> None:
        """Periodic housekeeping on the writer thread, every ``tick_s`` seconds."""

    def release(self) -> None:
        """Close files or connections after the thread stopped."""

    def _run(self) -> None:
        next_tick = time.monotonic() + self.tick_s
        stop = False
        while not stop:
            try:
                first = self._queue.get(timeout=max(0.05, min(1.0, next_tick - time.monotonic())))
            except queue.Empty:
                first = None
            pending: list[T | _Flush | _Stop] = [] if first is None else [first]
            while len(pending) < _BATCH:
                try:
                    pending.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            items: list[T] = []
            markers: list[_Flush] = []
            for entry in pending:
                if isinstance(entry, _Stop):
                    stop = True
                elif isinstance(entry, _Flush):
                    markers.append(entry)
                else:
                    items.append(entry)
            if items:
                try:
                    self.write_batch(items)
                except Exception:
                    log.exception("%s: writing %d items failed; they are lost", self.name, len(items))
            for marker in markers:
                marker.done.set()
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + self.tick_s
                try:
                    self.tick()
                except Exception:
                    log.exception("%s: housekeeping failed", self.name)
