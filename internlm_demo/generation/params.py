"""What a generation is asked for (GenerationParams) and what it did (GenerationStats)."""

from __future__ import annotations

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

    @classmethod
    def from_kwargs(cls, defaults: dict, overrides: dict) -> GenerationParams:
        """Merge family defaults with caller kwargs; unknown keys are refused by name."""
        merged = {**defaults, **{k: v for k, v in overrides.items() if v is not None}}
        unknown = set(merged) - set(cls.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown generation arguments: {', '.join(sorted(unknown))}")
        return cls(**merged)


@dataclass
class GenerationStats:
    """What one generation did; filled in while it runs."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    time_to_first_token_s: float = 0.0
    duration_s: float = 0.0
    finish_reason: str = ""  # "stop", "length", "stopped" (by the caller) or "error"
    output_ids: list[int] = field(default_factory=list)

    def record(self, token: int, stop_ids: set[int], started: float) -> bool:
        """Account for one picked token; False when it is a stop id (it ends the reply and is not kept)."""
        now = time.perf_counter()
        if self.new_tokens == 0:
            self.time_to_first_token_s = now - started
        self.duration_s = now - started
        if token in stop_ids:
            self.finish_reason = "stop"
            return False
        self.new_tokens += 1
        self.output_ids.append(token)
        return True

    @property
    def tokens_per_s(self) -> float:
        decode_time = self.duration_s - self.time_to_first_token_s
        return (self.new_tokens - 1) / decode_time if self.new_tokens > 1 and decode_time > 0 else 0.0
