"""Decoding from prompt embeddings exactly as XComposer's transformers 4.33 ``generate`` did.

The original calls ``internlm_model.generate(inputs_embeds=...)`` without ``input_ids``, so 4.33
starts the output with a BOS placeholder that is never fed to the model but that the repetition
penalty sees and that beam search counts in each hypothesis' length. transformers 5 instead starts
from an empty sequence, normalises beam scores by the generated length only and lets a stopping
criterion finish single beams, so its ``generate`` would pick different beams; this module keeps
the 4.33 rules (greedy, sampling, beam search and beam sampling): ``EngineDecoder`` on the engine's
slots (beams as slots, the prompt prefilled from embeddings), ``Decoder`` over the transformers model
and its KV cache (the reference, and the path without an engine).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import torch

from ..generation.beams import BeamSearch, BeamSettings
from ..generation.params import GenerationParams, GenerationStats
from ..generation.sampling import next_token
from ..models.transformers_compat import CACHE_ARGUMENT, new_cache


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
        settings.params()  # refuses bad sampling values with GenerationParams' messages
        return settings

    def params(self) -> GenerationParams:
        """The single-sequence settings (greedy or sampling) as the shared GenerationParams."""
        return GenerationParams(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
                                temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                                repetition_penalty=self.repetition_penalty, seed=self.seed)

    def beam_search(self, bos_id: int, eos_id: int, stop_ids, generator: torch.Generator) -> BeamSearch:
        """The host side of a beam search with these settings."""
        return BeamSearch(BeamSettings(self.num_beams, self.max_new_tokens + 1, self.repetition_penalty,
                                       self.length_penalty, self.do_sample, self.temperature, self.top_k, self.top_p),
                          bos_id, eos_id, stop_ids, generator)


class Decoding:
    """What both decoders share: ``steps()`` yields the ids so far (the best beam's for beam search)."""

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


class Decoder(Decoding):
    """One generation from prompt embeddings.

    Iterate ``steps()`` to receive, after each step, the ids the original's streaming callback
    received (row 0 of the running beams, BOS placeholder first); afterwards ``output_ids`` holds
    what ``generate`` returned and ``score`` the winning beam's score (None without beams, or when
    ``stop`` ended it early: then ``output_ids`` is what was streamed last).
    """

    def __init__(
        self,
        llm,
        prompt_embeds: torch.Tensor,
        settings: GenerationSettings,
        bos_id: int,
        eos_id: int,
        stop_ids: Sequence[int] = (),
        stop: threading.Event | None = None,
    ):
        self.llm = llm
        self.stop = stop
        self.prompt_embeds = prompt_embeds
        self.settings = settings
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.stop_ids = tuple(stop_ids)
        self.max_length = settings.max_new_tokens + 1
        self.output_ids: list[int] = []
        self.score: float | None = None
        self._cache = new_cache(llm.config)
        self._position = 0
        self._generator = torch.Generator()
        if settings.seed is not None:
            self._generator.manual_seed(settings.seed)
        else:
            self._generator.seed()

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
        params = self.settings.params()
        ids = torch.tensor([self.bos_id])
        logits = self._forward(self.prompt_embeds, is_embeds=True)
        while ids.numel() < self.max_length:
            token = next_token(logits[0], ids, params, self._generator)
            ids = torch.cat([ids, torch.tensor([token])])
            self.output_ids = ids.tolist()
            if self._stopped(ids[None]):
                return
            yield self.output_ids
            if token == self.eos_id or self._stop_asked():
                return
            logits = self._forward(self._token_input(torch.tensor([token])), is_embeds=False)

    def _beam_steps(self) -> Iterator[list[int]]:
        search = self.settings.beam_search(self.bos_id, self.eos_id, self.stop_ids, self._generator)
        logits = self._forward(self.prompt_embeds, is_embeds=True).expand(self.settings.num_beams, -1)
        self._cache.batch_repeat_interleave(self.settings.num_beams)
        while True:
            order, tokens, finished = search.step(logits)
            self._cache.reorder_cache(order.to(self.prompt_embeds.device))
            self.output_ids = search.output_ids
            if finished:
                break
            yield self.output_ids
            if self._stop_asked():
                return
            logits = self._forward(self._token_input(tokens), is_embeds=False)
        self.score, self.output_ids = search.finish()

    def _stop_asked(self) -> bool:
        return self.stop is not None and self.stop.is_set()


class EngineDecoder(Decoding):
    """``Decoder``'s contract on the engine: the prompt prefilled from its embeddings into a slot, each
    beam a slot of its own; the same ids as ``Decoder`` for the same logits. ``stop`` ends it early."""

    def __init__(self, engine, prompt_embeds: torch.Tensor, settings: GenerationSettings, bos_id: int, eos_id: int,
                 stop_ids: Sequence[int] = (), stop: threading.Event | None = None):
        self.engine = engine
        self.prompt_embeds = prompt_embeds
        self.settings = settings
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.stop_ids = tuple(stop_ids)
        self.stop = stop
        self.max_length = settings.max_new_tokens + 1
        self.output_ids: list[int] = []
        self.score: float | None = None
        self.stats = GenerationStats()

    def _single_steps(self) -> Iterator[list[int]]:
        ids = [self.bos_id]
        self.output_ids = ids
        if self.max_length <= 1:
            return
        tokens = self.engine.generate_from_embeddings(self.prompt_embeds, [self.bos_id], self.settings.params(),
                                                      {*self.stop_ids, self.eos_id}, self.stats, self.stop)
        try:
            for token in tokens:
                ids = [*ids, token]
                self.output_ids = ids
                if len(ids) >= self.max_length:
                    return
                yield ids
        finally:
            tokens.close()
        if self.stats.finish_reason == "stop":  # a stop id or EOS: kept in the output, as 4.33 did
            self.output_ids = [*ids, self.stats.stop_id]
            if self.stats.stop_id not in self.stop_ids and len(self.output_ids) < self.max_length:
                yield self.output_ids

    def _beam_steps(self) -> Iterator[list[int]]:
        generator = torch.Generator()
        if self.settings.seed is not None:
            generator.manual_seed(self.settings.seed)
        else:
            generator.seed()
        search = self.settings.beam_search(self.bos_id, self.eos_id, self.stop_ids, generator)
        steps = self.engine.beam_search(search, self.stats, self.stop, prompt_embeds=self.prompt_embeds)
        try:
            for ids in steps:
                self.output_ids = ids
                yield ids
        finally:
            steps.close()
        if self.stats.finish_reason == "stop":
            self.score, self.output_ids = search.finish()
