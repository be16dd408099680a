"""XComposer's article with images: the original web demo's pipeline over a local gallery, editing and export.

``document``: the article as data; ``pipeline``: the stages (write, place, caption, retrieve, select);
``editing``: changes a user makes afterwards; ``export``: Markdown and a zip; ``writer``: the model adapter.
"""

from .document import STAGES, Article, ArticleError, ComposerModel, ComposeSettings, Note, Placement, StageEvent
from .editing import add_image, delete_image, pick_candidate, search_again, set_section_text
from .export import export_zip, to_markdown
from .pipeline import compose, illustrate
from .writer import XComposerWriter

__all__ = [
    "STAGES",
    "Article",
    "ArticleError",
    "ComposeSettings",
    "ComposerModel",
    "Note",
    "Placement",
    "StageEvent",
    "XComposerWriter",
    "add_image",
    "compose",
    "delete_image",
    "export_zip",
    "illustrate",
    "pick_candidate",
    "search_again",
    "set_section_text",
    "to_markdown",
]
