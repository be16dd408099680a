"""The article as data: sections and their images, the settings of a run, its progress events, and what it needs
from the model."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image

from ...errors import LocalizedError

STAGES = ("writing", "placing", "captioning", "retrieving", "selecting")


class ArticleError(LocalizedError, ValueError):
    """Input the pipeline cannot work with; the message says what to do."""

    section = "article"


class ComposerModel(Protocol):
    """What the pipeline needs from XComposer; ``XComposerWriter`` provides it. Prompts are raw text (BOS added)."""

    def stream_text(self, prompt: str, **generation) -> Iterator[str]:
        """The reply so far, after each step; the last value is the whole reply."""

    def generate_text(self, prompt: str, **generation) -> str:
        """The whole reply."""

    def choose_image(self, prompt: str, images: list[Image.Image]) -> str:
        """The raw reply to ``prompt`` with one image per ``<ImageHere>``, as the demo's ``model_select_image``."""


@dataclass
class ComposeSettings:
    """The article tab's controls; the defaults are the original demo's."""

    num_beams: int = 5
    repetition_penalty: float = 5.0
    max_output_tokens: int = 1000  # the demo's max_length: 999 new tokens
    model_selects_images: bool = True
    do_sample: bool = False
    image_count: int | None = None  # None: the model decides how many images

    def article_generation(self) -> dict:
        return {"num_beams": int(self.num_beams), "repetition_penalty": float(self.repetition_penalty),
                "max_new_tokens": max(1, int(self.max_output_tokens) - 1), "do_sample": bool(self.do_sample)}


@dataclass
class Placement:
    """The image after one section: its caption, the candidates found for it, and the one chosen."""

    caption: str
    candidates: list[str]  # gallery-relative paths, best match first
    chosen: int = 0

    @property
    def image(self) -> str | None:
        return self.candidates[self.chosen] if self.candidates else None


@dataclass(frozen=True)
class Note:
    """A fallback or problem of the pipeline, for the UI: ``key`` names its text in the i18n "article" table
    (``note_<key>``), ``fields`` fill it in (a Phrase field in the page's language)."""

    key: str
    fields: dict = field(default_factory=dict)


@dataclass
class Article:
    """An article being composed or edited."""

    title: str
    sections: list[str]
    gallery_root: str
    placements: dict[int, Placement] = field(default_factory=dict)  # section index → image
    notes: list[Note] = field(default_factory=list)  # fallbacks and problems, for the UI

    def placed_images(self, except_section: int | None = None) -> set[str]:
        return {p.image for i, p in self.placements.items() if p.image and i != except_section}


@dataclass
class StageEvent:
    """Progress of the pipeline: the stage, a line for the UI, and the work so far."""

    stage: str  # one of STAGES, or "done"
    message: str
    step: int = 0
    total: int = 0
    text: str = ""  # the article text so far, while writing
    article: Article | None = None
