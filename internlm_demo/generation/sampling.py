"""The sampling rules every decoder uses: repetition penalty, temperature, top-k, top-p.

``next_token`` applies them to one row of logits on the host (the simple path, XComposer's decoder);
``penalize_repeats`` / ``filtered_probs`` / ``sample_filtered`` are the same rules over [B, V] tensors
with per-row parameters, for the engine.
"""

from __future__ import annotations

import torch

from .params import GenerationParams


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



def penalize_repeats(scores: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """The repetition penalty of ``generation.next_token`` over a [B, V] mask of ids already seen."""
    penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalized, scores)


def filtered_probs(scores: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor):
    """(probabilities in descending-score order, the order) after temperature, top-k and top-p.

    Same rules as ``generation.next_token``: top-k keeps every score ≥ the k-th largest (0 = off);
    top-p drops the tokens whose cumulative mass, summed from the smallest, stays ≤ 1 - top_p, never
    the most likely one. Parameters are [B, 1] tensors so one CUDA graph serves any setting.
    """
    ordered, order = (scores / temperature).sort(dim=-1, descending=True)
    vocab = scores.shape[-1]
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), vocab)
    ordered = ordered.masked_fill(ordered < ordered.gather(-1, k - 1), float("-inf"))
    mass_from_smallest = ordered.softmax(-1).flip(-1).cumsum(-1).flip(-1)
    drop = mass_from_smallest <= 1 - top_p
    drop[:, 0] = False
    return ordered.masked_fill(drop, float("-inf")).softmax(-1), order


def sample_filtered(scores, temperature, top_k, top_p, noise: torch.Tensor) -> torch.Tensor:
    """One id per row drawn from ``filtered_probs``; ``noise`` is Exp(1) per entry (argmax p/E ~ p)."""
    probs, order = filtered_probs(scores, temperature, top_k, top_p)
    return order.gather(-1, (probs / noise).argmax(-1, keepdim=True)).squeeze(-1)
