"""The article pipeline's model, over a loaded XComposer; and the gallery captioner it lends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from ..gallery import Captioner
from ..preprocess import load_image
from ..prompts import Text
from .document import ArticleError

# Index-time captions: one short sentence per gallery image, in the language the captions are written in.
DESCRIBE_QUESTION = "请用一句话描述这张图片。"
DESCRIBE_GENERATION = {"max_new_tokens": 60}


class XComposerWriter:
    """``ComposerModel`` over a loaded ``XComposer``: raw prompts through its embeddings and 4.33-style decoder."""

    def __init__(self, xcomposer):
        self.xcomposer = xcomposer

    def _decoder(self, prompt: str, generation: dict):
        xcomposer = self.xcomposer
        embeds = xcomposer.embed([Text(prompt, bos=True)])
        room = xcomposer.context_window - embeds.shape[1]
        if room < 1:
            raise ArticleError("prompt_too_long", {"tokens": embeds.shape[1], "window": xcomposer.context_window})
        generation = {**generation, "max_new_tokens": min(generation["max_new_tokens"], room)}
        return xcomposer.decoder(embeds, defaults={}, **generation)

    def stream_text(self, prompt: str, **generation) -> Iterator[str]:
        decoder = self._decoder(prompt, generation)
        shown = None
        for ids in decoder.steps():
            text = self.xcomposer.response_text(ids)
            if text != shown and not text.endswith("\ufffd"):  # wait for a character's remaining bytes
                shown = text
                yield text
        final = self.xcomposer.response_text(decoder.output_ids)
        if final != shown:
            yield final

    def generate_text(self, prompt: str, **generation) -> str:
        return self.xcomposer.response_text(self._decoder(prompt, generation).run())

    def choose_image(self, prompt: str, images: list[Image.Image]) -> str:
        return self.xcomposer.answer_selection(prompt, images)

    def captioner(self) -> Captioner:
        """A gallery captioner: XComposer describes each image once, at index time."""
        xcomposer = self.xcomposer

        def describe(path: Path) -> str:
            return xcomposer.generate(DESCRIBE_QUESTION, load_image(path), **DESCRIBE_GENERATION)

        return Captioner(f"{xcomposer.info.model_id}:{DESCRIBE_QUESTION}", describe)
