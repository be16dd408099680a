"""The sampling rules every decoder uses: repetition penalty, temperature, top-k, top-p.

Edge values, the same on every path: temperature 0 (or below ``MIN_TEMPERATURE``, where dividing by
it overflows) picks greedily; top-p 0 keeps only the most likely token; top-k 0 or ≥ the vocabulary
is off; a repetition penalty of 1 is off and one ≤ 0 is refused by ``GenerationParams``.

``next_token`` applies them to one row of logits on the host (the simple path, XComposer's decoder),
``warp_scores`` is transformers' warper chain that both use; ``penalize_repeats`` / ``filtered_probs`` /
``sample_filtered`` are the same rules over [B, V] tensors with per-row parameters, for the engine.
"""

from __future__ import annotations

import torch

from .params import GenerationParams

MIN_TEMPERATURE = 1e-5


def samples(params: GenerationParams) -> bool:
    """Whether ``params`` draw at random (else every pick is the most likely token)."""
    return params.do_sample and params.temperature >= MIN_TEMPERATURE


def warp_scores(scores: torch.Tensor, temperature: float, top_k: int, top_p: float,
                min_tokens_to_keep: int = 1) -> torch.Tensor:
    """transformers' sampling warpers in their order over the last dimension: temperature, top-k, top-p.

    top-k keeps every score ≥ the k-th largest; top-p drops the tokens whose cumulative probability,
    summed from the smallest, stays ≤ 1 - top_p; neither drops the ``min_tokens_to_keep`` most likely.
    """
    if temperature != 1.0:
        scores = scores / temperature
    if top_k:
        k = min(max(top_k, min_tokens_to_keep), scores.shape[-1])
        kth = torch.topk(scores, k).values[..., -1, None]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(scores, descending=False)
        drop = ordered.softmax(-1).cumsum(-1) <= (1 - top_p)
        drop[..., -min_tokens_to_keep:] = False
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return scores


def next_token(logits: torch.Tensor, seen_ids: torch.Tensor, params: GenerationParams, generator) -> int:
    """Pick the next id from last-position logits: repetition penalty, temperature, top-k, top-p."""
    logits = logits.float()
    if params.repetition_penalty != 1.0 and seen_ids.numel():
        scores = logits.gather(0, seen_ids)
        scores = torch.where(scores < 0, scores * params.repetition_penalty, scores / params.repetition_penalty)
        logits = logits.scatter(0, seen_ids, scores)
    if not samples(params):
        return int(logits.argmax())
    probs = warp_scores(logits, params.temperature, params.top_k, params.top_p).softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def penalize_repeats(scores: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """The repetition penalty of ``next_token`` over a [B, V] mask of ids already seen."""
    penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalized, scores)


def filtered_probs(scores: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor):
    """(probabilities in descending-score order, the order) after temperature, top-k and top-p.

    The rules of ``warp_scores``; parameters are [B, 1] tensors so one CUDA graph serves any setting.
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
