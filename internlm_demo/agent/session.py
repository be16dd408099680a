"""One user's agent conversation as plain data: what the UI keeps between reruns."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .loop import STOPPED, Step, final_answer


@dataclass
class Exchange:
    """A question and the steps the agent took for it."""

    query: str
    steps: list[Step] = field(default_factory=list)
    finished: bool = False

    @property
    def answer(self) -> str | None:
        return final_answer(self.steps)


class AgentConversation:
    """The exchanges of one conversation, and the stop switch of the run in progress."""

    def __init__(self):
        self.exchanges: list[Exchange] = []
        self.stop_event = threading.Event()

    def history(self) -> list[tuple[str, str]]:
        """Earlier (question, final answer) pairs, as the model sees them; unanswered ones are left out."""
        return [(e.query, e.answer) for e in self.exchanges if e.finished and e.answer is not None]

    def begin(self, query: str) -> threading.Event:
        """Start an exchange; returns the event that stops it."""
        self.stop()
        self.stop_event = threading.Event()
        self.exchanges.append(Exchange(query))
        return self.stop_event

    def record(self, steps: list[Step]) -> None:
        """Keep the steps so far, so a run cut short by a rerun still shows what it did."""
        if self.exchanges and not self.exchanges[-1].finished:
            self.exchanges[-1].steps = steps

    def finish(self) -> None:
        if self.exchanges:
            self.exchanges[-1].finished = True

    def stop(self) -> None:
        """Stop the run in progress; an exchange left unfinished is marked as stopped."""
        self.stop_event.set()
        if self.exchanges and not self.exchanges[-1].finished:
            last = self.exchanges[-1]
            turn = last.steps[-1].turn if last.steps else 1
            last.steps = [*last.steps, Step(STOPPED, "Stopped.", turn)]
            last.finished = True

    def clear(self) -> None:
        self.stop()
        self.exchanges.clear()
