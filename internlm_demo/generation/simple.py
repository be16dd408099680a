"""Token-by-token generation with a KV cache, sampling as transformers' ``generate`` does."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import torch

from ..models.transformers_compat import CACHE_ARGUMENT, new_cache, reset_dynamic_rope
from .params import GenerationParams, GenerationStats
from .sampling import next_token


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
    cache = new_cache(model.config)
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
