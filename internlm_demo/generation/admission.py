"""One first-come-first-served queue for GPU work, shared by every session of the process.

Only the order of callers is shared here; a caller's conversation never enters the queue.
"""

from __future__ import annotations

import functools
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

CANCEL_POLL_S = 0.05  # how often a waiting caller checks whether it was cancelled


class GpuQueue:
    """A fair FIFO lock: callers get the GPU in arrival order and can learn how many are ahead."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._line: deque[object] = deque()  # the first ticket holds the GPU

    def __len__(self) -> int:
        with self._changed:
            return len(self._line)

    def join(self) -> object:
        """Take a place at the end of the line; returns the ticket to wait on and release."""
        ticket = object()
        with self._changed:
            self._line.append(ticket)
        return ticket

    def ahead(self, ticket: object) -> int:
        """How many callers are before ``ticket`` (the one using the GPU included)."""
        with self._changed:
            return self._line.index(ticket)

    def wait(self, ticket: object, cancel: threading.Event | None = None,
             on_wait: Callable[[int], None] | None = None) -> bool:
        """Block until ``ticket`` is first; False (and the ticket leaves the line) if ``cancel`` is set first.

        ``on_wait(n)`` is called with the number of callers ahead whenever that number changes.
        """
        reported = None
        with self._changed:
            while (ahead := self._line.index(ticket)) > 0:
                if cancel is not None and cancel.is_set():
                    self._remove(ticket)
                    return False
                if ahead != reported and on_wait is not None:
                    on_wait(ahead)
                reported = ahead
                self._changed.wait(CANCEL_POLL_S if cancel is not None else None)
        return True

    def release(self, ticket: object) -> None:
        """Leave the line, letting the next caller in."""
        with self._changed:
            self._remove(ticket)

    def _remove(self, ticket: object) -> None:
        if ticket in self._line:
            self._line.remove(ticket)
            self._changed.notify_all()

    @contextmanager
    def turn(self, cancel: threading.Event | None = None,
             on_wait: Callable[[int], None] | None = None) -> Iterator[bool]:
        """Hold the GPU for the ``with`` block; yields False when cancelled while still waiting."""
        ticket = self.join()
        try:
            yield self.wait(ticket, cancel, on_wait)
        finally:
            self.release(ticket)


@functools.cache
def process_queue() -> GpuQueue:
    """The one queue of this process, used by every app session and by the OpenAI-compatible server."""
    return GpuQueue()
