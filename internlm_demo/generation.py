"""Token-by-token generation with a KV cache, sampling as transformers' ``generate`` does."""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, LlamaForCausalLM

# transformers renamed ``past_key_values`` to ``cache`` in 5.2x; accept either generation.
CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


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


def next_token(logits: torch.Tensor, seen_ids: torch.Tensor, params: GenerationParams, generator) -> int:
    """Pick the next id from last-position logits: repetition penalty, temperature, top-k, top-p."""
    logits = logits.float()
    if params.repetition_penalty != 1.0 and seen_ids.numel():
        scores = logits.gather(0, seen_ids)
        scores = torch.where(scores < 0, scores * params.repetition_penalty, scores / params.repetition_penalty)
        logits = logits.scatter(0, seen_ids, scores)
    if not params.do_sample or params.temperature <= 0:
        return int(logits.argmax())
    logits = logits / params.temperature
    if params.top_k and params.top_k > 0:
        kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative <= (1 - params.top_p)
        drop[-1] = False
        logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def reset_dynamic_rope(model) -> None:
    """Forget frequencies a dynamic-NTK rope rescaled for an earlier, longer sequence.

    transformers (like the original code) keeps them, so a reply would depend on what the
    model generated before; each generation starts as on a freshly loaded model instead.
    """
    rotary = model.model.rotary_emb
    if "dynamic" in str(rotary.rope_type) and rotary.max_seq_len_cached != rotary.original_max_seq_len:
        rotary.register_buffer("inv_freq", rotary.original_inv_freq.clone(), persistent=False)
        rotary.max_seq_len_cached = rotary.original_max_seq_len


def generate_ids(
    model,
    prompt_ids: list[int],
    params: GenerationParams,
    stop_ids: set[int],
    stats: GenerationStats | None = None,
    stop: threading.Event | None = None,
) -> Iterator[int]:
    """Yield new token ids one at a time; a stop id ends generation and is not yielded."""
    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens = len(prompt_ids)
    device = model.get_input_embeddings().weight.device
    generator = torch.Generator(device="cpu")
    if params.seed is not None:
        generator.manual_seed(params.seed)
    else:
        generator.seed()
    reset_dynamic_rope(model)
    seen = torch.tensor(prompt_ids, dtype=torch.long)
    inputs = seen.unsqueeze(0).to(device)
    cache = DynamicCache(config=model.config)
    position = 0
    start = time.perf_counter()
    stats.finish_reason = "length"
    with torch.inference_mode():
        for _ in range(params.max_new_tokens):
            if stop is not None and stop.is_set():
                stats.finish_reason = "stopped"
                break
            length = inputs.shape[1]
            positions = torch.arange(position, position + length, device=device).unsqueeze(0)
            logits = model(input_ids=inputs, position_ids=positions, use_cache=True, **{CACHE_ARGUMENT: cache}).logits
            position += length
            token = next_token(logits[0, -1].cpu(), seen, params, generator)
            if not stats.record(token, stop_ids, start):
                break
            yield token
            seen = torch.cat([seen, torch.tensor([token])])
            inputs = torch.tensor([[token]], device=device)
    stats.duration_s = time.perf_counter() - start
