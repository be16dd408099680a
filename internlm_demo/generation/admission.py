"""Admission: requests wait in arrival order for a free generation slot, and know how many are ahead.

The engine has several slots and takes waiting requests as slots free up; the simple path has one
slot and callers block in ``turn``. Only the order of callers lives here, never their conversations.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from .params import GenerationStats

CANCEL_POLL_S = 0.05  # how often a blocked caller checks whether it was cancelled


class Admission:
    """A first-come-first-served line in front of ``slots`` generation slots.

    Each waiter's ``GenerationStats`` shows ``waiting`` and ``queue_ahead`` (requests before it).
    """

    def __init__(self, slots: int):
        self.slots = slots
        self._free = slots
        self._changed = threading.Condition()
        self._line: deque[GenerationStats] = deque()

    @property
    def waiting(self) -> int:
        with self._changed:
            return len(self._line)

    def join(self, stats: GenerationStats) -> None:
        """Take a place at the end of the line."""
        with self._changed:
            stats.waiting = True
            self._line.append(stats)
            self._renumber()

    def take(self) -> GenerationStats | None:
        """The first waiter, now holding a slot; None when no one waits or no slot is free."""
        with self._changed:
            if not self._line or self._free == 0:
                return None
            self._free -= 1
            stats = self._line.popleft()
            stats.waiting = False
            self._renumber()
            return stats

    def leave(self, stats: GenerationStats) -> None:
        """Leave the line without a slot (the caller gave up)."""
        with self._changed:
            for index, waiter in enumerate(self._line):
                if waiter is stats:
                    del self._line[index]
                    break
            stats.waiting = False
            self._renumber()

    def release(self) -> None:
        """A slot is free again."""
        with self._changed:
            self._free += 1
            self._changed.notify_all()

    def _renumber(self) -> None:
        for ahead, stats in enumerate(self._line):
            stats.queue_ahead = ahead
        self._changed.notify_all()

    @contextmanager
    def turn(self, stats: GenerationStats, cancel: threading.Event | None = None) -> Iterator[bool]:
        """Hold a slot for the ``with`` block; yields False when ``cancel`` was set while still waiting."""
        self.join(stats)
        granted = False
        with self._changed:
            while not granted:
                if cancel is not None and cancel.is_set():
                    break
                if self._line[0] is stats and self._free > 0:
                    self._free -= 1
                    self._line.popleft()
                    stats.waiting = False
                    self._renumber()
                    granted = True
                else:
                    self._changed.wait(CANCEL_POLL_S)
        if not granted:
            self.leave(stats)
        try:
            yield granted
        finally:
            if granted:
                self.release()
