"""XComposer: a loaded InternLM-XComposer v1 with the original ``chat`` / ``generate`` semantics."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..errors import ContextOverflowError, LocalizedError
from ..models.tokenizer import InternLMTokenizer
from .decoding import Decoder, EngineDecoder, GenerationSettings
from .network import ImageEncoder
from .preprocess import image_to_pixels
from .prompts import (
    EOA,
    EOH,
    INTERLEAVED_MAX_POSITIONS,
    SELECT_LETTERS,
    STREAM_BREAK_TEXTS,
    Exchange,
    Segment,
    Text,
    Turn,
    align_text,
    chat_segments,
    conversation_segments,
    interleaved_segments,
    parse_selection,
    select_image_text,
    until_turn_marker,
)

ImageInput = str | Path | Image.Image | torch.Tensor
# The original's get_gen_args defaults for model.chat / model.generate.
CHAT_DEFAULTS = {"num_beams": 5, "do_sample": False, "repetition_penalty": 1.5, "max_new_tokens": 500}
SELECT_IMAGE_SETTINGS = {"num_beams": 5, "do_sample": False, "max_length": 10, "repetition_penalty": 1.0}
# The web demo's chat tab: "max output tokens" 512 passed as max_length, beam 3, repetition 1, sampling.
CONVERSATION_DEFAULTS = {"num_beams": 3, "do_sample": True, "repetition_penalty": 1.0, "max_length": 512}


class ConversationOverflowError(LocalizedError, ContextOverflowError):
    """The chat tab's newest exchange alone does not fit the context window; the message gives the sizes."""

    section = "xcomposer"


class XComposerTokenizer:
    """The InternLM v1 tokenizer as transformers 4.33 ran it for XComposer.

    Its slow tokenizer dropped whitespace next to ``<s>``, ``</s>`` and ``<unk>`` in the text
    (the special tokens were plain strings, which 4.33 stripped on both sides).
    """

    def __init__(self, base: InternLMTokenizer):
        self.base = base
        specials = sorted(base.special_tokens, key=len, reverse=True)
        self._space_around_special = re.compile(r"\s*(" + "|".join(map(re.escape, specials)) + r")\s*")

    @property
    def bos_id(self) -> int:
        return self.base.bos_id

    @property
    def eos_id(self) -> int:
        return self.base.eos_id

    def token_id(self, text: str) -> int:
        return self.base.token_id(text)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.base.encode(self._space_around_special.sub(r"\1", text), add_special_tokens=add_special_tokens)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.base.decode(ids, skip_special_tokens=skip_special_tokens)


@dataclass(frozen=True)
class ImageChoice:
    """What ``select_image`` decided: the candidate index, the model's raw answer, whether it fell back to A."""

    index: int
    answer: str
    fell_back: bool


class XComposer:
    """Image encoder + InternLM with its tokenizer; holds only what it is given (see ``load_xcomposer``)."""

    def __init__(self, image_encoder: ImageEncoder, llm, tokenizer: InternLMTokenizer, info, engine=None):
        self.image_encoder = image_encoder
        self.llm = llm
        self.engine = engine  # a FastEngine over ``llm``, or None for the transformers path
        self.tokenizer = XComposerTokenizer(tokenizer)
        self.info = info
        self.stop_ids = (self.tokenizer.token_id(EOH), self.tokenizer.token_id(EOA))

    @property
    def context_window(self) -> int:
        """Prompt positions plus new tokens one generation may hold (a slot's size if that is smaller)."""
        if self.engine is not None:
            return min(self.info.context_window, self.engine.max_sequence)
        return self.info.context_window

    @property
    def image_positions(self) -> int:
        """Prompt positions one image takes (``num_query_token`` + 2 flags)."""
        return self.image_encoder.num_embeds

    def _embedding(self) -> torch.nn.Embedding:
        return self.llm.model.embed_tokens

    @torch.no_grad()
    def encode_image(self, image: ImageInput) -> torch.Tensor:
        """Image embeddings ``(1, positions, hidden)`` for a path, a PIL image or ready pixel values.

        Raises ``ImageRejectedError`` for files that are not usable images.
        """
        pixels = image if isinstance(image, torch.Tensor) else image_to_pixels(image)
        weight = self._embedding().weight
        return self.image_encoder(pixels).to(device=weight.device, dtype=weight.dtype)

    def _image_embeds(self, image: ImageInput | None) -> torch.Tensor | None:
        if image is None:
            return None
        if isinstance(image, torch.Tensor) and image.dim() == 3:
            return image  # already embeddings, e.g. from encode_image
        return self.encode_image(image)

    def tokens(self, segment: Text) -> list[int]:
        return self.tokenizer.encode(segment.text, add_special_tokens=segment.bos)

    def count_positions(self, segments: Sequence[Segment]) -> int:
        """Prompt length in positions, without computing embeddings."""
        return sum(len(self.tokens(s)) if isinstance(s, Text) else s.shape[1] for s in segments)

    @torch.no_grad()
    def embed(self, segments: Sequence[Segment]) -> torch.Tensor:
        """The prompt embeddings ``(1, length, hidden)``: each text piece tokenized on its own, images in between."""
        embedding = self._embedding()
        parts = []
        for segment in segments:
            if isinstance(segment, Text):
                ids = torch.tensor([self.tokens(segment)], dtype=torch.long, device=embedding.weight.device)
                parts.append(embedding(ids))
            else:
                parts.append(segment.to(device=embedding.weight.device, dtype=embedding.weight.dtype))
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def next_token_logits(self, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """Raw float32 logits for the token after the prompt (before any processor)."""
        return self.llm(inputs_embeds=prompt_embeds, logits_to_keep=1).logits[0, -1].float().cpu()

    def decoder(
        self,
        prompt_embeds: torch.Tensor,
        stop_ids: Sequence[int] | None = None,
        defaults: dict | None = None,
        stop: threading.Event | None = None,
        **generate_kwargs,
    ) -> Decoder | EngineDecoder:
        """A decoder over ``prompt_embeds`` (on the engine when there is one with a slot per beam);
        ``stop_ids`` default to EOH/EOA, ``()`` disables them; ``stop`` ends it early."""
        settings = GenerationSettings.from_kwargs(generate_kwargs, CHAT_DEFAULTS if defaults is None else defaults)
        if self.engine is not None and settings.num_beams <= self.engine.slots:
            return EngineDecoder(self.engine, prompt_embeds, settings, bos_id=self.tokenizer.bos_id,
                                 eos_id=self.tokenizer.eos_id, stop_ids=self.stop_ids if stop_ids is None else stop_ids,
                                 stop=stop)
        return Decoder(
            self.llm,
            prompt_embeds,
            settings,
            bos_id=self.tokenizer.bos_id,
            eos_id=self.tokenizer.eos_id,
            stop_ids=self.stop_ids if stop_ids is None else stop_ids,
            stop=stop,
        )

    def response_text(self, output_ids: Sequence[int]) -> str:
        """The original ``decode_text`` (special tokens skipped, cut at EOA), also cut at an EOH the model wrote."""
        return until_turn_marker(self.tokenizer.decode(output_ids, skip_special_tokens=True))

    def generate(self, text: str, image: ImageInput | None = None, **generate_kwargs) -> str:
        """The original ``model.generate``: one question, optionally about an image, no history."""
        embeds = self.embed(chat_segments(text, self._image_embeds(image), None))
        return self.response_text(self.decoder(embeds, **generate_kwargs).run())

    def stream_chat(
        self, text: str, image: ImageInput | None = None, history: list[Turn] | None = None, **generate_kwargs
    ) -> Iterator[str]:
        """Yield the response so far; the last value is what ``chat`` returns.

        With beam search the intermediate values follow the currently best running beam, as the
        original web demo streamed it.
        """
        embeds = self.embed(chat_segments(text, self._image_embeds(image), history))
        decoder = self.decoder(embeds, **generate_kwargs)
        shown = ""
        for ids in decoder.steps():
            partial = self.response_text(ids)
            if partial != shown and not partial.endswith("\ufffd"):
                shown = partial
                yield shown
        final = self.response_text(decoder.output_ids)
        if final != shown:
            yield final

    def chat(
        self, text: str, image: ImageInput | None = None, history: list[Turn] | None = None, **generate_kwargs
    ) -> tuple[str, list[Turn]]:
        """The original ``model.chat``: returns the response and the history with this turn appended.

        ``image`` is a path, a PIL image, pixel values or embeddings from ``encode_image``. Defaults:
        num_beams 5, repetition_penalty 1.5, max_new_tokens 500, no sampling; stops at EOH/EOA.
        """
        image_embeds = self._image_embeds(image)
        embeds = self.embed(chat_segments(text, image_embeds, history))
        response = self.response_text(self.decoder(embeds, **generate_kwargs).run())
        return response, [*(history or []), Turn(text=text, response=response, image=image_embeds)]

    def stream_segments(
        self,
        segments: Sequence[Segment],
        break_ids: Sequence[int] = (),
        defaults: dict | None = None,
        stop: threading.Event | None = None,
        **generate_kwargs,
    ) -> Iterator[str]:
        """Stream a reply to any prompt as the web demo streams: the decoded running ids after each step,
        ending early when the newest id is one of ``break_ids`` or when ``stop`` is set."""
        decoder = self.decoder(self.embed(segments), defaults=defaults, stop=stop, **generate_kwargs)
        shown = None
        with contextlib.closing(decoder.steps()) as steps:
            for ids in steps:
                if ids[-1] in break_ids:
                    return
                written = self.tokenizer.decode(ids[1:], skip_special_tokens=True)
                text = until_turn_marker(written)
                if text != shown and not text.endswith("\ufffd"):
                    shown = text
                    yield text
                if text != written:
                    return  # the reply ended with the marker; the rest would be a new turn

    @property
    def conversation_break_ids(self) -> tuple[int, ...]:
        """Where the demo's chat tab stops streaming: EOS, or a new role marker starting ('<' / ' <', 333/497)."""
        ids = [self.tokenizer.eos_id]
        for text in STREAM_BREAK_TEXTS:
            pieces = self.tokenizer.encode(text, add_special_tokens=False)
            if len(pieces) == 1:
                ids.extend(pieces)
        return tuple(ids)

    def fit_conversation(self, exchanges: Sequence[Exchange], max_length: int) -> tuple[list[Exchange], int]:
        """(the newest exchanges whose prompt plus ``max_length - 1`` new tokens fit the window, how many were left out).

        Raises ConversationOverflowError when even the newest exchange alone does not fit.
        """
        new_tokens = max_length - 1
        for start in range(len(exchanges)):
            kept = list(exchanges[start:])
            positions = self.count_positions(conversation_segments(kept))
            if positions + new_tokens <= self.context_window:
                return kept, start
        raise ConversationOverflowError("conversation_too_long", {
            "positions": positions, "image_positions": self.image_positions, "new_tokens": new_tokens,
            "window": self.context_window})

    def stream_conversation(self, exchanges: Sequence[Exchange], stop: threading.Event | None = None,
                            **generate_kwargs) -> Iterator[str]:
        """The web demo's chat tab: reply to the last exchange, streaming, with its defaults
        (max_length 512, 3 beams, sampling, no repetition penalty); ``stop`` ends the reply where it is."""
        yield from self.stream_segments(
            conversation_segments(list(exchanges)),
            self.conversation_break_ids,
            defaults=CONVERSATION_DEFAULTS,
            stop=stop,
            **generate_kwargs,
        )

    def interleaved_embeds(self, text: str, images: Sequence[ImageInput]) -> torch.Tensor:
        """The demo's ``interleav_wrap`` + BOS: ``text`` with one image per ``<ImageHere>``, cut to 1680 positions."""
        segments = interleaved_segments(text, [self._image_embeds(image) for image in images])
        body = self.embed(segments)[:, :INTERLEAVED_MAX_POSITIONS]
        return torch.cat([self.embed([Text("", bos=True)]), body], dim=1)

    def select_image(
        self, sections: Sequence[str], candidates: Sequence[ImageInput], chosen: Sequence[ImageInput] = ()
    ) -> ImageChoice:
        """The demo's ``model_select_image``: which of the candidates (up to four) fits after ``sections``.

        ``sections`` is the article text cut where earlier images were placed; ``chosen`` holds those
        images (one fewer than sections). An answer that names no candidate falls back to A, as the original does.
        """
        if not 1 <= len(candidates) <= len(SELECT_LETTERS):
            raise ValueError(f"select_image takes 1 to {len(SELECT_LETTERS)} candidates, got {len(candidates)}")
        if len(chosen) != len(sections) - 1:
            raise ValueError("chosen must hold one image between each pair of sections")
        text = align_text(select_image_text(list(sections), len(candidates)))
        answer = self.answer_selection(text, [*chosen, *candidates])
        index = parse_selection(answer, len(candidates))
        return ImageChoice(0 if index is None else index, answer, fell_back=index is None)

    def answer_selection(self, question: str, images: Sequence[ImageInput]) -> str:
        """The raw answer to an aligned selection question with one image per ``<ImageHere>``."""
        embeds = self.interleaved_embeds(question, images)[:, :-2]  # drop the appended EOA and </s>
        output = self.decoder(embeds, stop_ids=(), defaults=SELECT_IMAGE_SETTINGS).run()
        return self.tokenizer.decode(output[1:])
