"""Editing a composed article: change a section's text, search again with a new caption, pick another candidate,
add or delete an image.

Each edit returns a changed copy, so that a UI's earlier state stays as it was.
"""

from __future__ import annotations

import copy
import re

from ..gallery import GalleryIndex
from .document import Article, ArticleError, ComposerModel, Placement
from .pipeline import check_gallery, find_candidates, write_caption


def edited(article: Article) -> Article:
    """A copy to edit, so that a UI's earlier state stays as it was."""
    return copy.deepcopy(article)


def check_section(article: Article, position: int) -> int:
    position = int(position)
    if not 0 <= position < len(article.sections):
        raise ArticleError("no_section", {"section": position + 1, "count": len(article.sections)})
    return position


def set_section_text(article: Article, position: int, text: str) -> Article:
    """Replace the text of section ``position``; a section stays one line (line breaks become spaces)."""
    position = check_section(article, position)
    text = re.sub(r"\s*\n\s*", " ", text or "").strip()
    if not text:
        raise ArticleError("empty_section", {"section": position + 1})
    article = edited(article)
    article.sections[position] = text
    return article


def search_again(gallery: GalleryIndex, article: Article, position: int, caption: str) -> Article:
    """New candidates for ``position`` from an edited caption (images placed elsewhere left out); picks the first."""
    position = check_section(article, position)
    caption = caption.strip()
    if not caption:
        raise ArticleError("no_caption")
    check_gallery(gallery)
    article = edited(article)
    candidates = find_candidates(gallery, caption, article.placed_images(except_section=position), set())
    if not candidates:
        raise ArticleError("no_match")
    article.placements[position] = Placement(caption, candidates)
    return article


def pick_candidate(article: Article, position: int, index: int) -> Article:
    """Use candidate ``index`` for the image after section ``position``."""
    position = check_section(article, position)
    placement = article.placements.get(position)
    if placement is None:
        raise ArticleError("no_image", {"section": position + 1})
    if not 0 <= int(index) < len(placement.candidates):
        raise ArticleError("no_candidate", {"candidate": int(index) + 1, "section": position + 1})
    if placement.candidates[int(index)] in article.placed_images(except_section=position):
        raise ArticleError("image_taken")
    article = edited(article)
    article.placements[position].chosen = int(index)
    return article


def delete_image(article: Article, position: int) -> Article:
    position = check_section(article, position)
    article = edited(article)
    article.placements.pop(position, None)
    return article


def add_image(model: ComposerModel, gallery: GalleryIndex, article: Article, position: int) -> Article:
    """Caption the section as the demo's ➕ did (earlier captions as context) and place the best match."""
    position = check_section(article, position)
    check_gallery(gallery)
    article = edited(article)
    earlier = [(p, pl.caption) for p, pl in sorted(article.placements.items()) if p < position + 2 and p != position]
    caption = write_caption(model, article, position, earlier, inserting=True)
    candidates = find_candidates(gallery, caption, article.placed_images(except_section=position), set())
    if not candidates:
        raise ArticleError("gallery_used_up")
    article.placements[position] = Placement(caption, candidates)
    return article
