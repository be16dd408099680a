"""What a generation is asked for (GenerationParams) and what it did (GenerationStats)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


@dataclass
class GenerationParams:
    """Sampling settings; the defaults are the original ``chat()`` defaults."""

    max_new_tokens: int = 1024
    do_sample: bool = True
    temperature: float = 0.8
    top_p: float = 0.8
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        problems = []
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0:
            problems.append(f"max_new_tokens must be a whole number ≥ 0, got {self.max_new_tokens!r}")
        if not _number(self.temperature) or self.temperature < 0:
            problems.append(f"temperature must be ≥ 0 (0 picks greedily), got {self.temperature!r}")
        if not _number(self.top_p) or not 0 <= self.top_p <= 1:
            problems.append(f"top_p must be between 0 and 1 (0 keeps only the most likely token), got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            problems.append(f"top_k must be a whole number ≥ 0 (0 turns it off), got {self.top_k!r}")
        if not _number(self.repetition_penalty) or self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be > 0 (1 turns it off), got {self.repetition_penalty!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            problems.append(f"seed must be a whole number or None, got {self.seed!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_kwargs(cls, defaults: dict, overrides: dict) -> GenerationParams:
        """Merge family defaults with caller kwargs; unknown keys are refused by name."""
        merged = {**defaults, **{k: v for k, v in overrides.items() if v is not None}}
        unknown = set(merged) - set(cls.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown generation arguments: {', '.join(sorted(unknown))}")
        return cls(**merged)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class GenerationStats:
    """What one generation did; filled in while it runs."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    time_to_first_token_s: float = 0.0
    duration_s: float = 0.0
    finish_reason: str = ""  # "stop", "length", "stopped" (by the caller) or "error"
    output_ids: list[int] = field(default_factory=list)
    stop_id: int | None = None  # the stop id that ended the reply (it is not in output_ids)
    waiting: bool = False  # in line for a generation slot
    queue_ahead: int = 0  # requests before this one in that line

    def record(self, token: int, stop_ids: set[int], started: float) -> bool:
        """Account for one picked token; False when it is a stop id (it ends the reply and is not kept)."""
        now = time.perf_counter()
        if self.new_tokens == 0:
            self.time_to_first_token_s = now - started
        self.duration_s = now - started
        if token in stop_ids:
            self.finish_reason = "stop"
            self.stop_id = token
            return False
        self.new_tokens += 1
        self.output_ids.append(token)
        return True

    @property
    def tokens_per_s(self) -> float:
        decode_time = self.duration_s - self.time_to_first_token_s
        return (self.new_tokens - 1) / decode_time if self.new_tokens > 1 and decode_time > 0 else 0.0
