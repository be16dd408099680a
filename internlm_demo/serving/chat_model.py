"""ChatModel: the original ``chat`` / ``stream_chat`` semantics over a native model."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

from ..generation.engine import engine_for
from ..generation.params import GenerationParams, GenerationStats
from ..generation.simple import generate_ids
from ..models.families import Family
from ..models.loading import load_model
from ..models.tokenizer import InternLMTokenizer, StreamingDetokenizer
from .backend import Budget, History, fit_history


class ChatModel:
    """A loaded model with its tokenizer and family; holds only what it is given. Meets ``backend.ChatBackend``."""

    estimates_tokens = False

    def __init__(self, model, tokenizer: InternLMTokenizer, family: Family, info, extra_stop_ids: set[int] = frozenset(),
                 engine=None):
        self.model = model
        self.engine = engine  # a FastEngine, or None for the simple generate_ids path
        self.tokenizer = tokenizer
        self.family = family
        self.info = info
        self.stop_ids = {tokenizer.eos_id, *extra_stop_ids, *(tokenizer.token_id(w) for w in family.stop_words)}

    @property
    def context_window(self) -> int:
        return self.info.context_window

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
        """New token ids for a raw prompt: the fast engine when one was set up, else the simple path."""
        if self.engine is not None:
            return self.engine.generate(prompt_ids, params, stop_ids, stats, stop)
        return generate_ids(self.model, prompt_ids, params, stop_ids, stats, stop)

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
    """Load an InternLM chat model (folder or known id; None → a downloaded model or the embedded demo).

    ``engine``: "auto" (the fast engine on a single GPU, else the simple path), "fast" or "simple".
    """
    loaded = load_model(path_or_id, device, dtype, num_gpus, progress)
    return ChatModel(loaded.model, loaded.tokenizer, loaded.family, loaded.info, extra_stop_ids=loaded.stop_ids,
                     engine=engine_for(loaded.model, engine, loaded.info.device_map))
