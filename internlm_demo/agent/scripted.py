r"""Replay a scripted agent session: canned model outputs stand in for the model, the tools run for real.

A script is a JSON file::

    {
      "family": "internlm",
      "delay_s": 0.02,
      "outputs": [
        "Thought: ...\nAction: PythonInterpreter\nAction Input: {\"command\": \"def solution():\\n    return 2**100\"}",
        "Thought: ...\nFinal Answer: ..."
      ]
    }

``outputs`` holds one model turn per entry, replayed in order across the whole conversation;
``family`` (internlm, internlm2 or internlm3, default internlm) says whose protocol they follow;
``delay_s`` (optional) pauses between streamed chunks so the stream can be watched.
Useful for demos without weights and for tests: everything but the model is real.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..models.families import FAMILIES, Family
from .completion import cut_at_stop_word

CHUNK_CHARS = 6  # streamed like a model: a few characters at a time


class ScriptError(ValueError):
    """A script file that cannot be replayed; the message says what to fix."""


class ScriptedModel:
    """Streams the next scripted output for each prompt and keeps every prompt it was given."""

    def __init__(self, outputs: Sequence[str], family: Family, delay_s: float = 0.0, source: str = "script"):
        self.outputs = list(outputs)
        self.family = family
        self.delay_s = delay_s
        self.source = source
        self.prompts: list[str] = []

    @classmethod
    def from_file(cls, path: str | Path) -> ScriptedModel:
        """Read a script; a missing or malformed file raises ScriptError naming the problem."""
        path = Path(path).expanduser()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ScriptError(f"cannot read the agent script {path}: {exc.strerror or exc}.") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ScriptError(f"the agent script {path} is not valid JSON ({exc}).") from exc
        if not isinstance(data, dict):
            raise ScriptError(f"the agent script {path} must hold a JSON object with an \"outputs\" list.")
        outputs = data.get("outputs")
        if not isinstance(outputs, list) or not outputs or not all(isinstance(o, str) for o in outputs):
            raise ScriptError(f"the agent script {path} needs \"outputs\": a non-empty list of strings.")
        families = {family.name: family for family in FAMILIES}
        family_name = data.get("family", "internlm")
        if family_name not in families:
            raise ScriptError(f"the agent script {path} names family {family_name!r}; use one of {', '.join(families)}.")
        delay = data.get("delay_s", 0.0)
        if not isinstance(delay, (int, float)) or not 0 <= delay <= 5:
            raise ScriptError(f"the agent script {path} has delay_s {delay!r}; use a number of seconds from 0 to 5.")
        return cls(outputs, families[family_name], float(delay), source=str(path))

    @property
    def calls(self) -> int:
        """How many outputs have been replayed."""
        return len(self.prompts)

    def rewind(self) -> None:
        """Start the script again from its first output."""
        self.prompts.clear()

    def stream_completion(self, prompt: str, stop_words: Sequence[str] = (), stop: threading.Event | None = None,
                          **generate_kwargs) -> Iterator[str]:
        """Yield the next output so far, a few characters at a time; generation settings are ignored."""
        if self.calls >= len(self.outputs):
            raise ScriptError(
                f"the scripted session has ended after {len(self.outputs)} model turns; press Clear to replay it."
            )
        output, _ = cut_at_stop_word(self.outputs[self.calls], stop_words)
        self.prompts.append(prompt)
        for end in range(CHUNK_CHARS, len(output) + CHUNK_CHARS, CHUNK_CHARS):
            if stop is not None and stop.is_set():
                return
            if self.delay_s:
                time.sleep(self.delay_s)
            yield output[:end]
