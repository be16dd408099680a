"""Beam search (and beam sampling) by transformers 4.33's rules, one step at a time over k running beams.

4.33 as XComposer ran it: every running row starts with a BOS placeholder that is never fed to the
model but that the repetition penalty sees and that each hypothesis' length counts; 2k candidates
per step (top-k of the summed log-probabilities, or a draw after the sampling warpers keeping at
least 2); a candidate ending in EOS among the first k closes a hypothesis; the search ends by
``early_stopping=False``'s heuristic, the length limit or when every row ends with the same stop id.
Whoever runs the model (the transformers path or the engine's slots) feeds logits to ``step`` and
reorders its KV cache as ``step`` says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .sampling import warp_scores


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


@dataclass(frozen=True)
class BeamSettings:
    """What a beam search is asked for (XComposer's ``generate`` arguments that concern it)."""

    num_beams: int
    max_length: int  # new tokens + 1 (the BOS placeholder counts)
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


class BeamSearch:
    """The host side of one beam search: feed it each step's logits [k, V], apply the order it returns.

    ``output_ids`` is row 0 of the running beams after each step (what the original streamed);
    after the last step ``finish`` gives the winning (score, ids) as 4.33's ``generate`` returned them.
    """

    def __init__(self, settings: BeamSettings, bos_id: int, eos_id: int, stop_ids: Sequence[int] = (),
                 generator: torch.Generator | None = None):
        self.settings = settings
        self.eos_id = eos_id
        self.stop_ids = tuple(stop_ids)
        self.generator = generator
        beams = settings.num_beams
        self.hypotheses = BeamHypotheses(beams, settings.length_penalty)
        self.rows = torch.full((beams, 1), bos_id)
        self.beam_scores = torch.zeros(beams)
        self.beam_scores[1:] = -1e9  # only the first beam's continuations count at the first step
        self.done = False
        self.output_ids: list[int] = [bos_id]

    def step(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(order of the rows to keep, their next tokens, whether the search ended) from float32 logits [k, V]
        on any device (the scores stay there; only the 2k candidates come to the host)."""
        settings, beams = self.settings, self.settings.num_beams
        vocab, device = logits.shape[-1], logits.device
        scores = torch.log_softmax(logits, dim=-1)
        scores = penalise_repetition(scores, self.rows.to(device), settings.repetition_penalty)
        scores = scores + self.beam_scores.to(device)[:, None]
        if settings.do_sample:  # the draw uses the host generator, as the original did
            scores = warp_scores(scores, settings.temperature, settings.top_k, settings.top_p, 2).view(-1).cpu()
            picked = torch.multinomial(scores.softmax(-1), 2 * beams, generator=self.generator)
            picked_scores, order = torch.sort(scores[picked], descending=True)
            picked = picked[order]
        else:
            picked_scores, picked = torch.topk(scores.view(-1), 2 * beams)
        next_scores, next_tokens, next_rows = [], [], []
        picked, picked_scores = picked.cpu(), picked_scores.cpu()
        for rank, (flat, score) in enumerate(zip(picked.tolist(), picked_scores.tolist())):
            row, token = divmod(flat, vocab)
            if token == self.eos_id:
                if rank < beams:
                    self.hypotheses.add(self.rows[row].tolist(), score)
            else:
                next_scores.append(score)
                next_tokens.append(token)
                next_rows.append(row)
            if len(next_tokens) == beams:
                break
        self.done = self.done or self.hypotheses.is_done(float(picked_scores.max()), self.rows.shape[1])
        self.beam_scores = torch.tensor(next_scores)
        order, tokens = torch.tensor(next_rows), torch.tensor(next_tokens)
        self.rows = torch.cat([self.rows[order], tokens[:, None]], dim=1)
        self.output_ids = self.rows[0].tolist()
        return order, tokens, self.done or self._stopped()

    def _stopped(self) -> bool:
        """MaxLengthCriteria, then the original StoppingCriteriaSub (every row ends with the same stop id)."""
        if self.rows.shape[1] >= self.settings.max_length:
            return True
        return any(bool((self.rows[:, -1] == stop).all()) for stop in self.stop_ids)

    def finish(self) -> tuple[float, list[int]]:
        """(score, ids) of the winning hypothesis; a shorter one ends with EOS, as 4.33's finalize marks it."""
        if not self.done:
            for row, score in zip(self.rows.tolist(), self.beam_scores.tolist()):
                self.hypotheses.add(row, score)
        score, best = self.hypotheses.best()
        if len(best) < self.settings.max_length:
            best = [*best, self.eos_id]
        return score, best
