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

    Each waiter's ``GenerationStats`` shows ``waiting`` and ``queue_ahead`` (requests before it); a
    waiter may need several slots (a beam search holds one per beam).
    """

    def __init__(self, slots: int):
        self.slots = slots
        self._free = slots
        self._changed = threading.Condition()
        self._line: deque[GenerationStats] = deque()
        self._needs: dict[int, int] = {}  # slots each waiter needs, by id() of its stats

    @property
    def waiting(self) -> int:
        with self._changed:
            return len(self._line)

    def join(self, stats: GenerationStats, slots: int = 1) -> None:
        """Take a place at the end of the line for ``slots`` slots."""
        if slots > self.slots:
            raise ValueError(f"a request for {slots} slots cannot run on {self.slots}; ask for at most {self.slots}")
        with self._changed:
            stats.waiting = True
            self._line.append(stats)
            self._needs[id(stats)] = slots
            self._renumber()

    def take(self) -> GenerationStats | None:
        """The first waiter, now holding its slots; None when no one waits or too few slots are free."""
        with self._changed:
            if not self._line or self._free < self._needs[id(self._line[0])]:
                return None
            stats = self._line.popleft()
            self._free -= self._needs.pop(id(stats))
            stats.waiting = False
            self._renumber()
            return stats

    def leave(self, stats: GenerationStats) -> None:
        """Leave the line without a slot (the caller gave up)."""
        with self._changed:
            for index, waiter in enumerate(self._line):
                if waiter is stats:
                    del self._line[index]
                    del self._needs[id(stats)]
                    break
            stats.waiting = False
            self._renumber()

    def release(self, slots: int = 1) -> None:
        """``slots`` slots are free again."""
        with self._changed:
            self._free += slots
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
                if self._line[0] is stats and self.take() is stats:
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
