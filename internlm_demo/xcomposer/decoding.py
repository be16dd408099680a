"""Decoding from prompt embeddings exactly as XComposer's transformers 4.33 ``generate`` did.

The original calls ``internlm_model.generate(inputs_embeds=...)`` without ``input_ids``, so 4.33
starts the output with a BOS placeholder that is never fed to the model but that the repetition
penalty sees and that beam search counts in each hypothesis' length. transformers 5 instead starts
from an empty sequence, normalises beam scores by the generated length only and lets a stopping
criterion finish single beams, so its ``generate`` would pick different beams; this module keeps
the 4.33 rules (greedy, sampling, beam search and beam sampling) over a native Llama and its KV cache.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import torch
from transformers import DynamicCache

from ..generation.params import GenerationParams
from ..generation.sampling import next_token, warp_scores
from ..generation.simple import CACHE_ARGUMENT


@dataclass
class GenerationSettings:
    """``generate`` arguments; the defaults are XComposer's ``model.chat`` / ``model.generate`` ones."""

    max_new_tokens: int = 500
    num_beams: int = 5
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.5
    length_penalty: float = 1.0
    seed: int | None = None

    @classmethod
    def from_kwargs(cls, overrides: dict, defaults: dict | None = None) -> GenerationSettings:
        """Settings from keyword arguments; ``max_length=N`` (4.33 style, BOS placeholder included) means N - 1 new tokens."""
        given = {k: v for k, v in overrides.items() if v is not None}
        merged = {**(defaults or {}), **given}
        if "max_length" in merged:
            max_length = merged.pop("max_length")
            if "max_new_tokens" not in given:
                merged["max_new_tokens"] = max_length - 1
        unknown = set(merged) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown generation arguments: {', '.join(sorted(unknown))}")
        settings = cls(**merged)
        if settings.num_beams < 1 or settings.max_new_tokens < 0:
            raise ValueError("num_beams must be at least 1 and max_new_tokens at least 0")
        return settings


@dataclass
class BeamHypotheses:
    """Finished beams, scored ``sum_logprobs / len(ids) ** length_penalty`` (ids include the BOS placeholder)."""

    num_beams: int
    length_penalty: float

    def __post_init__(self):
        self.beams: list[tuple[float, list[int]]] = []
        self.worst_score = 1e9

    def add(self, ids: list[int], sum_logprobs: float) -> None:
        score = sum_logprobs / (len(ids) ** self.length_penalty)
        if len(self.beams) < self.num_beams or score > self.worst_score:
            self.beams.append((score, ids))
            if len(self.beams) > self.num_beams:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst_score = ranked[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_logprobs: float, cur_len: int) -> bool:
        """4.33's ``early_stopping=False`` heuristic: no running beam can beat the worst finished one."""
        if len(self.beams) < self.num_beams:
            return False
        return self.worst_score >= best_sum_logprobs / cur_len**self.length_penalty

    def best(self) -> tuple[float, list[int]]:
        return sorted(self.beams, key=lambda beam: beam[0])[-1]


def penalise_repetition(scores: torch.Tensor, ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """4.33's RepetitionPenaltyLogitsProcessor over rows of ``scores`` and the ids of each row."""
    if penalty == 1.0:
        return scores
    seen = scores.gather(1, ids)
    return scores.scatter(1, ids, torch.where(seen < 0, seen * penalty, seen / penalty))


class Decoder:
    """One generation from prompt embeddings.

    Iterate ``steps()`` to receive, after each step, the ids the original's streaming callback
    received (row 0 of the running beams, BOS placeholder first); afterwards ``output_ids`` holds
    what ``generate`` returned and ``score`` the winning beam's score (None without beams).
    """

    def __init__(
        self,
        llm,
        prompt_embeds: torch.Tensor,
        settings: GenerationSettings,
        bos_id: int,
        eos_id: int,
        stop_ids: Sequence[int] = (),
    ):
        self.llm = llm
        self.prompt_embeds = prompt_embeds
        self.settings = settings
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.stop_ids = tuple(stop_ids)
        self.max_length = settings.max_new_tokens + 1
        self.output_ids: list[int] = []
        self.score: float | None = None
        self._cache = DynamicCache(config=llm.config)
        self._position = 0
        self._generator = torch.Generator()
        if settings.seed is not None:
            self._generator.manual_seed(settings.seed)
        else:
            self._generator.seed()

    def steps(self) -> Iterator[list[int]]:
        if self.settings.num_beams > 1:
            yield from self._beam_steps()
        else:
            yield from self._single_steps()

    def run(self) -> list[int]:
        """Decode to the end; returns ``output_ids``."""
        for _ in self.steps():
            pass
        return self.output_ids

    @torch.no_grad()
    def _forward(self, inputs: torch.Tensor, is_embeds: bool) -> torch.Tensor:
        length = inputs.shape[1]
        positions = torch.arange(self._position, self._position + length, device=inputs.device).expand(
            inputs.shape[0], -1
        )
        key = "inputs_embeds" if is_embeds else "input_ids"
        out = self.llm(
            **{key: inputs}, position_ids=positions, use_cache=True, logits_to_keep=1, **{CACHE_ARGUMENT: self._cache}
        )
        self._position += length
        return out.logits[:, -1].float().cpu()

    def _token_input(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.view(-1, 1).to(self.prompt_embeds.device)

    def _stopped(self, rows: torch.Tensor) -> bool:
        """MaxLengthCriteria, then the original StoppingCriteriaSub (every row ends with the same stop id)."""
        if rows.shape[1] >= self.max_length:
            return True
        return any(bool((rows[:, -1] == stop).all()) for stop in self.stop_ids)

    def _single_steps(self) -> Iterator[list[int]]:
        settings = self.settings
        params = GenerationParams(
            max_new_tokens=settings.max_new_tokens,
            do_sample=settings.do_sample,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            repetition_penalty=settings.repetition_penalty,
        )
        ids = torch.tensor([self.bos_id])
        logits = self._forward(self.prompt_embeds, is_embeds=True)
        while ids.numel() < self.max_length:
            token = next_token(logits[0], ids, params, self._generator)
            ids = torch.cat([ids, torch.tensor([token])])
            self.output_ids = ids.tolist()
            if self._stopped(ids[None]):
                return
            yield self.output_ids
            if token == self.eos_id:
                return
            logits = self._forward(self._token_input(torch.tensor([token])), is_embeds=False)

    def _beam_steps(self) -> Iterator[list[int]]:
        settings = self.settings
        beams = settings.num_beams
        hypotheses = BeamHypotheses(beams, settings.length_penalty)
        rows = torch.full((beams, 1), self.bos_id)
        beam_scores = torch.zeros(beams)
        beam_scores[1:] = -1e9  # only the first beam's continuations count at the first step
        logits = self._forward(self.prompt_embeds, is_embeds=True).expand(beams, -1)
        self._cache.batch_repeat_interleave(beams)
        done = False
        while True:
            vocab = logits.shape[-1]
            scores = penalise_repetition(torch.log_softmax(logits, dim=-1), rows, settings.repetition_penalty)
            scores = scores + beam_scores[:, None]
            if settings.do_sample:
                scores = warp_scores(scores, settings.temperature, settings.top_k, settings.top_p, 2).view(-1)
                picked = torch.multinomial(scores.softmax(-1), 2 * beams, generator=self._generator)
                picked_scores, order = torch.sort(scores[picked], descending=True)
                picked = picked[order]
            else:
                picked_scores, picked = torch.topk(scores.view(-1), 2 * beams)
            next_scores, next_tokens, next_rows = [], [], []
            for rank, (flat, score) in enumerate(zip(picked.tolist(), picked_scores.tolist())):
                row, token = divmod(flat, vocab)
                if token == self.eos_id:
                    if rank < beams:
                        hypotheses.add(rows[row].tolist(), score)
                else:
                    next_scores.append(score)
                    next_tokens.append(token)
                    next_rows.append(row)
                if len(next_tokens) == beams:
                    break
            done = done or hypotheses.is_done(float(picked_scores.max()), rows.shape[1])
            beam_scores = torch.tensor(next_scores)
            order = torch.tensor(next_rows)
            tokens = torch.tensor(next_tokens)
            rows = torch.cat([rows[order], tokens[:, None]], dim=1)
            self._cache.reorder_cache(order.to(self.prompt_embeds.device))
            self.output_ids = rows[0].tolist()
            if done or self._stopped(rows):
                break
            yield self.output_ids
            logits = self._forward(self._token_input(tokens), is_embeds=False)
        if not done:
            for row, score in zip(rows.tolist(), beam_scores.tolist()):
                hypotheses.add(row, score)
        self.score, best = hypotheses.best()
        if len(best) < self.max_length:
            best = [*best, self.eos_id]  # 4.33's finalize marks a shorter hypothesis with EOS
        self.output_ids = best
