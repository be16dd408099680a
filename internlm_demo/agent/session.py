"""One user's agent conversation as plain data: what the UI keeps between reruns."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .loop import ANSWER, STOPPED, Step, final_answer, turns_of
from .protocol import PastExchange


@dataclass
class Exchange:
    """A question and the steps the agent took for it."""

    query: str
    steps: list[Step] = field(default_factory=list)
    finished: bool = False

    @property
    def answer(self) -> str | None:
        return final_answer(self.steps)

    @property
    def answered(self) -> bool:
        """Finished with the model's own final answer (not stopped, failed or out of turns)."""
        return self.finished and bool(self.steps) and self.steps[-1].kind == ANSWER


class AgentConversation:
    """The exchanges of one conversation, and the stop switch of the run in progress."""

    def __init__(self):
        self.exchanges: list[Exchange] = []
        self.stop_event = threading.Event()

    def history(self) -> list[PastExchange]:
        """Earlier answered exchanges with their model turns and tool outputs, as the model sees them."""
        return [PastExchange(e.query, tuple(turns_of(e.steps))) for e in self.exchanges if e.answered]

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

    @property
    def running(self) -> bool:
        return bool(self.exchanges) and not self.exchanges[-1].finished

    def stop(self) -> None:
        """Stop the run in progress; an exchange left unfinished is marked as stopped."""
        self.stop_event.set()
        if self.running:
            last = self.exchanges[-1]
            turn = last.steps[-1].turn if last.steps else 1
            last.steps = [*last.steps, Step(STOPPED, "Stopped.", turn)]
            last.finished = True

    def clear(self) -> None:
        self.stop()
        self.exchanges.clear()
