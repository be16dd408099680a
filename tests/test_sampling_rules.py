"""The sampling rules against transformers' own warpers and against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from internlm_demo.generation.params import GenerationParams
from internlm_demo.generation.sampling import (
    MIN_TEMPERATURE,
    filtered_probs,
    next_token,
    penalize_repeats,
    sample_filtered,
    samples,
    warp_scores,
)

INF = float("inf")


def transformers_warp(scores: torch.Tensor, temperature: float, top_k: int, top_p: float, keep: int = 1):
    """transformers' warper chain in generate()'s order, each warper only when generate() would add it."""
    ids = torch.zeros(scores.shape[0], 1, dtype=torch.long)
    if temperature != 1.0:
        scores = TemperatureLogitsWarper(temperature)(ids, scores)
    if top_k:
        scores = TopKLogitsWarper(top_k, min_tokens_to_keep=keep)(ids, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p, min_tokens_to_keep=keep)(ids, scores)
    return scores


SETTINGS = [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 3, 1.0), (1.0, 5, 1.0), (1.0, 0, 0.6), (0.5, 4, 0.9),
            (2.0, 7, 0.3), (1.0, 50, 0.95), (0.9, 1, 0.5), (1.0, 0, 0.0)]


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), SETTINGS)
@pytest.mark.parametrize("keep", [1, 2])
def test_warp_scores_equals_transformers_warpers(temperature, top_k, top_p, keep):
    scores = torch.randn(3, 20, generator=torch.Generator().manual_seed(11)) * 2
    ours = warp_scores(scores, temperature, top_k, top_p, min_tokens_to_keep=keep)
    theirs = transformers_warp(scores, temperature, top_k, top_p, keep)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    assert torch.allclose(ours[~torch.isinf(ours)], theirs[~torch.isinf(theirs)])


def test_warp_scores_by_hand():
    scores = torch.tensor([1.0, 3.0, 2.0, 3.0])
    assert torch.equal(warp_scores(scores, 2.0, 0, 1.0), torch.tensor([0.5, 1.5, 1.0, 1.5]))
    # top-k keeps every score ≥ the k-th largest: both 3s at k=2, and the 2 as well at k=3
    assert torch.equal(warp_scores(scores, 1.0, 2, 1.0), torch.tensor([-INF, 3.0, -INF, 3.0]))
    assert torch.equal(warp_scores(scores, 1.0, 3, 1.0), torch.tensor([-INF, 3.0, 2.0, 3.0]))
    assert torch.equal(warp_scores(scores, 1.0, 9, 1.0), scores)  # k past the vocabulary keeps everything
    # min_tokens_to_keep wins over a smaller k
    assert torch.isfinite(warp_scores(torch.tensor([1.0, 2.0, 3.0]), 1.0, 1, 1.0, min_tokens_to_keep=2)).sum() == 2


def test_top_p_drops_the_tail_whose_mass_is_at_most_one_minus_top_p():
    # uniform over 4: probabilities 0.25 exactly, cumulative from the smallest 0.25, 0.5, 0.75, 1.0
    uniform = torch.zeros(4)
    assert torch.isfinite(warp_scores(uniform, 1.0, 0, 0.5)).sum() == 2  # 0.25 and 0.5 are ≤ 0.5: dropped
    assert torch.isfinite(warp_scores(uniform, 1.0, 0, 0.51)).sum() == 3
    assert torch.isfinite(warp_scores(uniform, 1.0, 0, 0.0)).sum() == 1  # top-p 0 keeps the most likely only
    # probabilities 0.05, 0.15, 0.3, 0.5: top-p 0.75 drops the two smallest (0.2 ≤ 0.25 < 0.5)
    probs = torch.tensor([0.3, 0.05, 0.5, 0.15])
    kept = torch.isfinite(warp_scores(probs.log(), 1.0, 0, 0.75))
    assert kept.tolist() == [True, False, True, False]
    assert torch.isfinite(warp_scores(probs.log(), 1.0, 0, 0.0, min_tokens_to_keep=2)).tolist() == [True, False,
                                                                                                     True, False]


def test_samples_only_with_do_sample_and_a_temperature_of_at_least_the_minimum():
    assert samples(GenerationParams(do_sample=True, temperature=MIN_TEMPERATURE))
    assert samples(GenerationParams(do_sample=True, temperature=0.7))
    assert not samples(GenerationParams(do_sample=True, temperature=MIN_TEMPERATURE / 2))
    assert not samples(GenerationParams(do_sample=True, temperature=0.0))
    assert not samples(GenerationParams(do_sample=False, temperature=0.7))
    assert 1e-7 < MIN_TEMPERATURE < 1e-3  # dividing a float32 logit by it stays finite, and 1e-3 still samples


GREEDY = GenerationParams(do_sample=False)


@pytest.mark.parametrize(("logits", "seen", "penalty", "expected"), [
    ([2.0, -1.0, 1.5], [0], 2.0, 2),  # 2.0 / 2 = 1.0 < 1.5
    ([2.0, -1.0, 1.5], [0], 1.2, 0),  # 2.0 / 1.2 ≈ 1.67 > 1.5
    ([-0.5, -0.8], [0], 2.0, 1),  # a negative score is multiplied: -1.0 < -0.8
    ([-0.5, -0.8], [0, 0, 0], 2.0, 1),  # an id seen three times is penalised once
    ([-0.5, -0.8], [1], 0.5, 1),  # a penalty below 1 multiplies a negative score by it: -0.4 > -0.5
    ([1.0, 1.5], [0], 0.5, 0),  # and divides a positive one: 2.0 > 1.5
    ([1.0, 1.5], [], 2.0, 1),  # nothing seen, nothing penalised
    ([1.0, 1.5], [1], 1.0, 1),  # penalty 1 is off
])
def test_repetition_penalty_by_hand(logits, seen, penalty, expected):
    params = GenerationParams(do_sample=False, repetition_penalty=penalty)
    assert next_token(torch.tensor(logits), torch.tensor(seen, dtype=torch.long), params, None) == expected


def test_repetition_penalty_equals_transformers_processor():
    logits = torch.randn(30, generator=torch.Generator().manual_seed(4)) * 3
    seen = torch.tensor([2, 5, 5, 11, 17, 29])
    theirs = RepetitionPenaltyLogitsProcessor(1.7)(seen[None], logits[None].clone())[0]
    mask = torch.zeros(1, 30, dtype=torch.bool)
    mask[0, seen] = True
    assert torch.allclose(penalize_repeats(logits[None], mask, torch.tensor([[1.7]]))[0], theirs)
    for top in range(3):  # greedy picks follow the processor's scores, with the winner removed each time
        masked = theirs.clone()
        masked[theirs.topk(top + 1).indices[:top]] = -INF
        local = logits.clone()
        local[theirs.topk(top + 1).indices[:top]] = -INF
        assert next_token(local, seen, GenerationParams(do_sample=False, repetition_penalty=1.7), None) == \
            int(masked.argmax())


def test_next_token_samples_from_the_warped_distribution():
    logits = torch.tensor([0.0, math.log(2.0), math.log(3.0), math.log(4.0), -10.0])
    # top-k 3 keeps probabilities 2/9, 3/9, 4/9 of ids 1, 2, 3
    params = GenerationParams(do_sample=True, temperature=1.0, top_k=3, top_p=1.0)
    generator = torch.Generator().manual_seed(0)
    draws = torch.tensor([next_token(logits, torch.tensor([], dtype=torch.long), params, generator)
                          for _ in range(3000)])
    frequencies = torch.bincount(draws, minlength=5) / len(draws)
    assert frequencies[0] == 0 and frequencies[4] == 0
    assert torch.allclose(frequencies[1:4], torch.tensor([2 / 9, 3 / 9, 4 / 9]), atol=0.03)
    # temperature 0.5 squares the odds: 4/29, 9/29, 16/29
    params = GenerationParams(do_sample=True, temperature=0.5, top_k=3, top_p=1.0)
    draws = torch.tensor([next_token(logits, torch.tensor([], dtype=torch.long), params, generator)
                          for _ in range(3000)])
    frequencies = torch.bincount(draws, minlength=5) / len(draws)
    assert torch.allclose(frequencies[1:4], torch.tensor([4 / 29, 9 / 29, 16 / 29]), atol=0.03)


def test_greedy_next_token_ignores_the_sampling_filters():
    logits = torch.tensor([0.1, 0.9, 0.3])
    assert next_token(logits, torch.tensor([], dtype=torch.long), GREEDY, None) == 1


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), SETTINGS)
def test_filtered_probs_equal_transformers_warpers_per_row(temperature, top_k, top_p):
    scores = torch.randn(4, 20, generator=torch.Generator().manual_seed(3)) * 2
    rows = scores.shape[0]
    probs, order = filtered_probs(scores, torch.full((rows, 1), temperature), torch.full((rows, 1), top_k),
                                  torch.full((rows, 1), top_p))
    ours = torch.zeros_like(scores).scatter(-1, order, probs)
    theirs = transformers_warp(scores, temperature, top_k, top_p).softmax(-1)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert torch.equal(scores.gather(-1, order), scores.sort(-1, descending=True).values)


def test_filtered_probs_take_each_rows_own_settings():
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0]] * 3)
    probs, order = filtered_probs(scores, torch.tensor([[1.0], [1.0], [1.0]]), torch.tensor([[0], [2], [0]]),
                                  torch.tensor([[1.0], [1.0], [0.0]]))
    assert order[0].tolist() == [3, 2, 1, 0]
    assert (probs > 0).sum(-1).tolist() == [4, 2, 1]
    assert torch.allclose(probs[1, :2], torch.tensor([math.e, 1.0]) / (math.e + 1))


def test_sample_filtered_picks_the_largest_probability_over_noise():
    scores = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    settings = (torch.ones(3, 1), torch.zeros(3, 1, dtype=torch.long), torch.ones(3, 1))
    # in descending order the probabilities are 3/4 (id 1) then 1/4 (id 0); noise comes in that order
    noise = torch.tensor([[1.0, 1.0], [1.0, 0.1], [2.0, 1.0]])
    assert sample_filtered(scores, *settings, noise).tolist() == [1, 0, 1]  # 0.75 > 0.25; 2.5 > 0.75; 0.375 > 0.25
