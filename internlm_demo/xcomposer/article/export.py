"""An article as Markdown, and as a zip of ``article.md`` with its images."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from .document import Article, ArticleError, Placement


def to_markdown(article: Article, image_link: Callable[[int, Placement], str], heading: bool = True) -> str:
    """The article as Markdown, each image (linked by ``image_link``) after its section."""
    blocks = [f"# {article.title}"] if heading else []
    for position, section in enumerate(article.sections):
        blocks.append(section)
        placement = article.placements.get(position)
        if placement is not None and placement.image:
            alt = placement.caption.replace("[", "(").replace("]", ")").replace("\n", " ")
            blocks.append(f"![{alt}]({image_link(position, placement)})")
    return "\n\n".join(blocks) + "\n"


# Formats every browser and Markdown viewer shows; others are converted to PNG in the zip.
PORTABLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")


def exported_name(position: int, source: str) -> str:
    suffix = Path(source).suffix.lower()
    return f"images/section-{position + 1:02d}{suffix if suffix in PORTABLE_SUFFIXES else '.png'}"


def safe_file_stem(title: str) -> str:
    stem = re.sub(r'[\\/:*?"<>|\s]+', "_", title).strip("._")[:60]
    return stem or "article"


def export_zip(article: Article, destination: Path) -> Path:
    """A zip of ``article.md`` and the chosen images under ``images/``, linked by relative path."""
    root = Path(article.gallery_root)
    for position, placement in sorted(article.placements.items()):
        if placement.image and not (root / placement.image).is_file():
            raise ArticleError("image_gone", {"section": position + 1, "image": placement.image})
    destination.mkdir(parents=True, exist_ok=True)
    target = destination / f"{safe_file_stem(article.title)}.zip"
    markdown = to_markdown(article, lambda position, placement: exported_name(position, placement.image))
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("article.md", markdown)
        for position, placement in sorted(article.placements.items()):
            if not placement.image:
                continue
            source, name = root / placement.image, exported_name(position, placement.image)
            if Path(name).suffix == source.suffix.lower():
                archive.write(source, name)
            else:
                converted = io.BytesIO()
                with Image.open(source) as image:
                    image.save(converted, format="PNG")
                archive.writestr(name, converted.getvalue())
    return target
