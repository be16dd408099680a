"""ChatModel: the original ``chat`` / ``stream_chat`` semantics over a native model."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

from ..generation.admission import Admission
from ..generation.engine import describe_engine, engine_for
from ..generation.params import GenerationParams, GenerationStats
from ..generation.simple import generate_ids
from ..models.families import Family
from ..models.loading import load_model
from ..models.tokenizer import ChatTokenizer, StreamingDetokenizer
from .backend import Budget, History, fit_history


class ChatModel:
    """A loaded model with its tokenizer and family; holds only what it is given. Meets ``backend.ChatBackend``."""

    estimates_tokens = False
    window_assumed = False
    unsupported_controls = frozenset()

    def __init__(self, model, tokenizer: ChatTokenizer, family: Family, info, extra_stop_ids: set[int] = frozenset(),
                 engine=None):
        self.model = model
        self.engine = engine  # a FastEngine, or None for the simple generate_ids path
        self.simple_turns = Admission(1)  # the simple path serves one generation at a time
        self.tokenizer = tokenizer
        self.family = family
        self.info = info
        self.stop_ids = {tokenizer.eos_id, *extra_stop_ids, *(tokenizer.token_id(w) for w in family.stop_words)}

    @property
    def context_window(self) -> int:
        """Prompt plus reply tokens one generation may hold: the model's window, or a slot's size if smaller."""
        if self.engine is not None:
            return min(self.info.context_window, self.engine.max_sequence)
        return self.info.context_window

    def engine_facts(self) -> dict:
        """Which engine generates, with its kernels, slots and KV budget (for ``/v1/models``)."""
        if self.engine is None:
            return {"name": "simple", "slots": 1}
        return {"name": "engine", **asdict(self.engine.state)}

    def build_prompt(self, query: str, history: History | None = None, meta_instruction: str | None = None) -> str:
        """The exact prompt string the original ``build_inputs`` makes (BOS comes from the tokenizer)."""
        family = self.family
        meta = family.default_meta_instruction if meta_instruction is None else meta_instruction
        prompt = family.system_turn.format(meta=meta) if family.has_system_prompt and meta else ""
        for old_query, old_response in history or []:
            prompt += family.user_turn.format(query=old_query) + old_response + family.assistant_end
        return prompt + family.user_turn.format(query=query)

    def count_tokens(self, query: str, history: History | None = None, meta_instruction: str | None = None) -> int:
        """Prompt length in tokens, BOS included."""
        return len(self.tokenizer.encode(self.build_prompt(query, history, meta_instruction)))

    def fit_history(self, query: str, history: History | None, max_new_tokens: int,
                    meta_instruction: str | None = None, window: int | None = None) -> Budget:
        """Drop the oldest whole turns until prompt + ``max_new_tokens`` fit the window (``backend.fit_history``)."""
        return fit_history(self.count_tokens, query, history, max_new_tokens, meta_instruction,
                           window or self.context_window)

    def generate_tokens(self, prompt_ids: list[int], params: GenerationParams, stop_ids: set[int],
                        stats: GenerationStats | None = None, stop: threading.Event | None = None) -> Iterator[int]:
        """New token ids for a raw prompt: the engine when one was set up, else the simple path.

        Every generation of this model comes through here; it waits (``stats.waiting``) only while
        the engine's slots, or the simple path's single turn, are taken.
        """
        if self.engine is not None:
            return self.engine.generate(prompt_ids, params, stop_ids, stats, stop)
        return self._simple(prompt_ids, params, stop_ids, stats if stats is not None else GenerationStats(), stop)

    def _simple(self, prompt_ids, params, stop_ids, stats: GenerationStats, stop) -> Iterator[int]:
        with self.simple_turns.turn(stats, stop) as granted:
            if not granted:
                stats.finish_reason = "stopped"
                return
            yield from generate_ids(self.model, prompt_ids, params, stop_ids, stats, stop)

    def stream_chat(self, query: str, history: History | None = None, meta_instruction: str | None = None,
                    stats: GenerationStats | None = None, stop: threading.Event | None = None,
                    **generate_kwargs) -> Iterator[str]:
        """Yield the response so far after each token that completes text; never trims history."""
        params = GenerationParams.from_kwargs(self.family.chat_defaults, generate_kwargs)
        prompt_ids = self.tokenizer.encode(self.build_prompt(query, history, meta_instruction))
        detokenizer = StreamingDetokenizer(self.tokenizer)
        for token in self.generate_tokens(prompt_ids, params, self.stop_ids, stats, stop):
            text = detokenizer.push(token)
            if text is not None:
                yield self._cut_at_stop_word(text)

    def chat(self, query: str, history: History | None = None, meta_instruction: str | None = None,
             **generate_kwargs) -> tuple[str, History]:
        """Generate a whole reply; returns it and the history with the new turn appended."""
        stats = GenerationStats()
        for _ in self.stream_chat(query, history, meta_instruction, stats=stats, **generate_kwargs):
            pass
        response = self._cut_at_stop_word(self.tokenizer.decode(stats.output_ids, skip_special_tokens=True))
        return response, [*(history or []), (query, response)]

    def _cut_at_stop_word(self, text: str) -> str:
        for word in self.family.stop_words:
            text = text.split(word)[0]
        return text


def load_chat_model(path_or_id: str | Path | None = None, device: str | None = None, dtype: str | None = None,
                    num_gpus: int | None = None, progress: bool = True, engine: str = "auto") -> ChatModel:
    """Load an InternLM chat model (folder or known id; None → a downloaded model or the stand-in).

    ``engine``: "auto" or "fast" (the batched engine, on GPUs and the CPU alike) or "simple" (the plain
    transformers path, one generation at a time).
    """
    loaded = load_model(path_or_id, device, dtype, num_gpus, progress)
    built = engine_for(loaded.model, engine, loaded.info.context_window)
    return ChatModel(loaded.model, loaded.tokenizer, loaded.family, replace(loaded.info, engine=describe_engine(built)),
                     extra_stop_ids=loaded.stop_ids, engine=built)
