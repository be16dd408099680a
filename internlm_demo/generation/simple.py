"""Token-by-token generation with a KV cache, sampling as transformers' ``generate`` does."""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Iterator

import torch
from transformers import DynamicCache, LlamaForCausalLM

from .params import GenerationParams, GenerationStats
from .sampling import next_token

# transformers renamed ``past_key_values`` to ``cache`` in 5.2x; accept either generation.
CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


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
