"""Handlers of the "Write article" tab and how they render an article: plain functions, no browser needed.

Images come from a local gallery folder (``--gallery``; by default a small generated demo gallery),
indexed once and refreshed incrementally (``internlm_demo.xcomposer.gallery``). The pipeline is
``internlm_demo.xcomposer.article``.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image

from internlm_demo.errors import ModelFolderError, error_text
from internlm_demo.i18n import LANGUAGES, Phrase, labels
from internlm_demo.xcomposer.article import (
    STAGES,
    Article,
    ArticleError,
    ComposeSettings,
    Note,
    XComposerWriter,
    add_image,
    compose,
    delete_image,
    export_zip,
    illustrate,
    pick_candidate,
    search_again,
    set_section_text,
    to_markdown,
)
from internlm_demo.xcomposer.gallery import GalleryError, GalleryIndex, ensure_demo_gallery, open_gallery

from .context import ModelProvider

THUMBNAIL_SIDE = 480
CANDIDATE_SIDE = 256
CURSOR = "▌"
# Gradio finds a handler's progress tracker by this default value; it binds it to each event itself.
PROGRESS = gr.Progress()


@dataclass(frozen=True)
class ArticleTab:
    """What the handlers share: the app's model provider and the gallery folders the browser may choose from."""

    provider: ModelProvider
    galleries: tuple[str, ...] = ()  # absolute folders from --gallery / INTERNLM_DEMO_GALLERY; () → the demo gallery

    @classmethod
    def from_setting(cls, provider: ModelProvider, gallery: str | None) -> ArticleTab:
        """``gallery`` is the --gallery value: one folder, or several joined by ``os.pathsep``."""
        folders = [part for part in (gallery or "").split(os.pathsep) if part.strip()]
        return cls(provider, tuple(dict.fromkeys(str(Path(folder).expanduser().resolve()) for folder in folders)))

    def choices(self, demo_label: str) -> list[tuple[str, str]]:
        """(label, value) of each gallery for the page's dropdown; the demo gallery's value is ""."""
        return [(folder, folder) for folder in self.galleries] or [(demo_label, "")]


# --- rendering ------------------------------------------------------------------------------------


def stage_board(current: str | None = None, step: int = 0, total: int = 0, error: str | None = None,
                stages: tuple[str, ...] = STAGES, language: str = LANGUAGES[0]) -> str:
    """The progress of a run: ✓ finished stages, ▶ the current one with its count, ○ those to come; ✗ on failure."""
    t = labels(language, "article")
    reached = {None: 0, "done": len(stages)}.get(current, stages.index(current) if current in stages else 0)
    marks = []
    for i, stage in enumerate(stages):
        name = t(f"stage_{stage}")
        if i < reached:
            marks.append(f"✓ {name}")
        elif i == reached and current in stages:
            count = f" {step + 1}/{total}" if total else ""
            marks.append(f"{'✗' if error else '▶'} **{name}{count}**")
        else:
            marks.append(f"○ {name}")
    line = " · ".join(marks)
    return f"{line}\n\n✗ {error}" if error else line


@functools.lru_cache(maxsize=512)
def image_uri(path: str, mtime_ns: int, side: int = THUMBNAIL_SIDE) -> str:
    """A JPEG thumbnail as a data URI, so the article shows images from any folder without serving files."""
    with Image.open(path) as image:
        image.draft("RGB", (side, side))
        picture = image.convert("RGB")
    picture.thumbnail((side, side))
    data = io.BytesIO()
    picture.save(data, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(data.getvalue()).decode("ascii")


def article_view(article: Article) -> str:
    root = Path(article.gallery_root)

    def link(position, placement) -> str:
        path = root / placement.image
        try:
            return image_uri(str(path), path.stat().st_mtime_ns)
        except (OSError, Image.DecompressionBombError):
            return placement.image  # shown as a broken image with its caption; saving says what is wrong

    return to_markdown(article, link)


def note_text(note: Note, language: str = LANGUAGES[0]) -> str:
    return Phrase("article", f"note_{note.key}", note.fields).text(language)


def notes_view(article: Article | None, language: str = LANGUAGES[0]) -> str:
    if article is None or not article.notes:
        return ""
    mark = labels(language, "article")("note")
    return "\n".join(f"- **{mark}** {note_text(note, language)}" for note in article.notes)


def section_choices(article: Article, language: str = LANGUAGES[0]) -> list[tuple[str, int]]:
    mark = labels(language, "article")("image_mark")
    choices = []
    for i, section in enumerate(article.sections):
        text = section.strip()
        short = text[:36] + ("…" if len(text) > 36 else "")
        choices.append((f"{i + 1}. {mark + ' ' if i in article.placements else ''}{short}", i))
    return choices


def caption_table(article: Article | None) -> str:
    """Each section's caption as JSON (section index → caption), for the page to fill the caption box at once
    when a section is chosen, so that nothing arriving later overwrites what the user starts typing."""
    if article is None:
        return "{}"
    return json.dumps({str(i): placement.caption for i, placement in article.placements.items()}, ensure_ascii=False)


def candidate_thumbnails(article: Article, position: int) -> list[tuple[Image.Image, str]]:
    placement = article.placements.get(position)
    if placement is None:
        return []
    shown = []
    for index, path in enumerate(placement.candidates):
        try:
            with Image.open(Path(article.gallery_root) / path) as image:
                image.draft("RGB", (CANDIDATE_SIDE, CANDIDATE_SIDE))
                picture = image.convert("RGB")
        except (OSError, Image.DecompressionBombError):  # changed since indexing: a grey tile, not a crash
            picture = Image.new("RGB", (CANDIDATE_SIDE, CANDIDATE_SIDE), "#dddddd")
        picture.thumbnail((CANDIDATE_SIDE, CANDIDATE_SIDE))
        mark = "✓ " if index == placement.chosen else ""
        shown.append((picture, f"{mark}{'ABCD'[index] if index < 4 else index + 1} · {path}"))
    return shown


def section_updates(article: Article | None, position: int | None, language: str = LANGUAGES[0]) -> tuple:
    """What shows one section in the editor: (section text, candidates, add button, delete button, editor)."""
    if article is None:
        hidden = gr.update(visible=False)
        return gr.update(value=""), gr.update(value=[]), hidden, hidden, hidden
    placement = article.placements.get(position)
    return (
        gr.update(value=article.sections[position]),
        gr.update(value=candidate_thumbnails(article, position), selected_index=placement.chosen if placement else None),
        gr.update(visible=placement is None),
        gr.update(visible=placement is not None),
        gr.update(visible=True),
    )


def editor_updates(article: Article | None, position: int | None = None, language: str = LANGUAGES[0]) -> tuple:
    """(section dropdown, caption, caption table, section text, candidates, add button, delete button, editor)."""
    if article is None:
        return (gr.update(choices=[], value=None), gr.update(value=""), "{}", *section_updates(None, None))
    if position is None or not 0 <= position < len(article.sections):
        position = min(article.placements, default=0)
    placement = article.placements.get(position)
    return (
        gr.update(choices=section_choices(article, language), value=position),
        gr.update(value=placement.caption if placement else ""),
        caption_table(article),
        *section_updates(article, position, language),
    )


def article_outputs(article: Article | None, status: str, view: str | None = None, position: int | None = None,
                    language: str = LANGUAGES[0]) -> tuple:
    """Values for the tab's article outputs: state, status, notes, article, the editor, the fixed-count button."""
    if view is None:
        view = article_view(article) if article is not None else ""
    return (article, status, notes_view(article, language), view, *editor_updates(article, position, language),
            gr.update(interactive=article is not None))


# --- handlers -------------------------------------------------------------------------------------


def gallery_folder(tab: ArticleTab, choice: str | None) -> Path:
    """The gallery the browser chose, which must be one of the app's own (the first when none is chosen):
    the browser never names a server folder of its choosing."""
    choice = choice or ""
    if choice and choice not in tab.galleries:
        raise GalleryError("gallery_not_offered", {"choice": choice})
    folder = choice or next(iter(tab.galleries), None)
    return Path(folder) if folder else ensure_demo_gallery()


def open_tab_gallery(tab: ArticleTab, folder: str | None, progress=None, language: str = LANGUAGES[0]) -> GalleryIndex:
    """The gallery index, refreshed; a real XComposer captions new images (the demo model's captions are noise)."""
    model = tab.provider.get()
    captioner = None if model.info.is_demo else XComposerWriter(model).captioner()

    def report(done: int, total: int, path: str) -> None:
        if progress is not None and total:
            progress(done / total, desc=labels(language, "article")("indexing", path=path))

    return open_gallery(gallery_folder(tab, folder), captioner=captioner, progress=report)


def index_gallery(tab: ArticleTab, folder: str, language: str = LANGUAGES[0], progress=PROGRESS) -> tuple[str, Phrase]:
    """Index (or refresh) the gallery folder: its status line, and the same as a Phrase that a language switch
    words again (``relabel``)."""
    try:
        index = open_tab_gallery(tab, folder, progress, language)
    except (GalleryError, ModelFolderError) as error:
        gr.Warning(error.text(language))
        said = Phrase("article", "index_failed", {"error": error.phrase})
        return said.text(language), said
    said = Phrase("article", "indexed", {"status": index.status(), "summary": index.report.summary()})
    return said.text(language), said


def run_stages(events, article: Article | None, progress, language: str, stages=STAGES):
    """Turn pipeline events into tab outputs, worded in ``language``; errors become a message, never a traceback."""
    t = labels(language, "article")
    board = functools.partial(stage_board, stages=stages, language=language)
    current, step, total = None, 0, 0
    try:
        for event in events:
            current, step, total = event.stage, event.step, event.total
            if event.article is not None:
                article = event.article
            fraction = (stages.index(current) + (step / total if total else 0)) / len(stages) if current in stages else 1.0
            count = f" {step + 1}/{total}" if total else ""
            progress(fraction, desc=t(f"stage_{current}") + count if current in stages else "")
            if event.stage == "writing":
                text = event.text.replace("\n", "\n\n") + CURSOR
                yield article_outputs(None, board("writing"), view=text, language=language)
            elif event.stage == "done":
                done = t("done", images=len(article.placements), sections=len(article.sections))
                for note in article.notes:
                    gr.Warning(note_text(note, language))
                yield article_outputs(article, board("done") + f"\n\n{done}", language=language)
            else:
                yield article_outputs(article, board(current, step, total), language=language)
    except (ArticleError, GalleryError, ModelFolderError) as error:
        message = error_text(error, language)
        gr.Warning(message)
        yield article_outputs(article, board(current or stages[0], step, total, error=message), language=language)
    except RuntimeError as error:  # e.g. CUDA out of memory: say so and keep the app alive
        message = labels(language, "xcomposer")("generation_failed", error=error)
        gr.Warning(message)
        yield article_outputs(article, board(current or stages[0], step, total, error=message), language=language)


def compose_settings(num_beams, repetition_penalty, max_output_tokens, model_selects_images, do_sample,
                     image_count=None) -> ComposeSettings:
    return ComposeSettings(num_beams=int(num_beams), repetition_penalty=float(repetition_penalty),
                           max_output_tokens=int(max_output_tokens), model_selects_images=bool(model_selects_images),
                           do_sample=bool(do_sample), image_count=None if image_count is None else int(image_count))


def write_article(tab: ArticleTab, title: str, num_beams: int, repetition_penalty: float, max_output_tokens: int,
                  model_selects_images: bool, do_sample: bool, folder: str, language: str = LANGUAGES[0],
                  progress=PROGRESS):
    """Submit: write the article for ``title`` and illustrate it, streaming each stage."""
    settings = compose_settings(num_beams, repetition_penalty, max_output_tokens, model_selects_images, do_sample)

    def events():
        gallery = open_tab_gallery(tab, folder, progress, language)
        yield from compose(XComposerWriter(tab.provider.get()), gallery, title, settings)

    yield from run_stages(events(), None, progress, language)


def insert_fixed_images(tab: ArticleTab, article: Article | None, image_count: int, num_beams: int,
                        repetition_penalty: float, max_output_tokens: int, model_selects_images: bool, do_sample: bool,
                        folder: str, language: str = LANGUAGES[0], progress=PROGRESS):
    """Place exactly ``image_count`` images in the current article (the model still chooses where)."""
    if article is None:
        message = labels(language, "article")("write_first")
        gr.Warning(message)
        yield article_outputs(None, stage_board(error=message, language=language), language=language)
        return
    settings = compose_settings(num_beams, repetition_penalty, max_output_tokens, model_selects_images, do_sample,
                                image_count)
    stages = STAGES[1:]

    def events():
        updated = Article(article.title, article.sections, article.gallery_root)
        gallery = open_tab_gallery(tab, folder, progress, language)
        yield from illustrate(XComposerWriter(tab.provider.get()), gallery, updated, settings)

    yield from run_stages(events(), article, progress, language, stages)


def show_section(article: Article | None, position: int | None, language: str = LANGUAGES[0]) -> tuple:
    """The editor for another section: its text, candidates, add or delete (its caption is filled by the page)."""
    if article is None or position is None or not 0 <= int(position) < len(article.sections):
        return section_updates(None, None)
    return section_updates(article, int(position), language)


def edit_outputs(article: Article | None, position, change, language: str) -> tuple:
    """Apply ``change(article, position)``; an ArticleError leaves the article as it was, with a warning."""
    t = labels(language, "article")
    if article is None:
        gr.Warning(t("write_first"))
        return article_outputs(None, "", language=language)
    try:
        updated = change(article, int(position))
    except (ArticleError, GalleryError, ModelFolderError) as error:
        message = error_text(error, language)
        gr.Warning(message)
        return article_outputs(article, f"✗ {message}", position=int(position), language=language)
    return article_outputs(updated, t("section_updated", number=int(position) + 1), position=int(position),
                           language=language)


def edit_section_text(article: Article | None, position: int, text: str, language: str = LANGUAGES[0]) -> tuple:
    """Put the edited text into the section; the article, its export and later captions use it."""
    return edit_outputs(article, position, lambda a, p: set_section_text(a, p, text), language)


def search_section(tab: ArticleTab, article: Article | None, position: int, caption: str, folder: str,
                   language: str = LANGUAGES[0]) -> tuple:
    """Search again with the edited caption."""
    return edit_outputs(article, position,
                        lambda a, p: search_again(open_tab_gallery(tab, folder), a, p, caption), language)


def choose_candidate(article: Article | None, position: int, language: str, evt: gr.SelectData) -> tuple:
    """A click on a candidate puts it in the article."""
    return edit_outputs(article, position, lambda a, p: pick_candidate(a, p, evt.index), language)


def add_section_image(tab: ArticleTab, article: Article | None, position: int, folder: str,
                      language: str = LANGUAGES[0]) -> tuple:
    """Add image: caption the section with the model and place the best unused image."""
    return edit_outputs(article, position,
                        lambda a, p: add_image(XComposerWriter(tab.provider.get()), open_tab_gallery(tab, folder), a, p),
                        language)


def delete_section_image(article: Article | None, position: int, language: str = LANGUAGES[0]) -> tuple:
    return edit_outputs(article, position, delete_image, language)


def save_article(article: Article | None, language: str = LANGUAGES[0]) -> str | None:
    """Save: a zip with article.md and the chosen images, linked by relative path."""
    if article is None:
        gr.Warning(labels(language, "article")("nothing_to_save"))
        return None
    try:
        return str(export_zip(article, Path(tempfile.mkdtemp(prefix="article-"))))
    except (ArticleError, OSError) as error:
        gr.Warning(error_text(error, language))
        return None


def relabel(tab: ArticleTab, language: str, article: Article | None, gallery_said: Phrase | None) -> tuple:
    """Labels of the tab in ``language``, one update per component of ``article_tab.build_article_tab``'s relabel
    list, then the stage line, the notes and the gallery's status line (what ``index_gallery`` said, if anything)."""
    t = labels(language, "article")
    labelled = {"label": ("tab", "title", "image_count", "advanced", "beams", "repetition", "max_tokens", "model_selects",
                          "sampling", "gallery", "edit", "section", "caption", "section_text", "candidates", "file",
                          "examples"),
                "value": ("submit", "fixed", "index", "search", "apply_text", "add", "delete", "save")}
    updates = {key: gr.update(**{kind: t(key)}) for kind, keys in labelled.items() for key in keys}
    updates["gallery"] = gr.update(label=t("gallery"), choices=tab.choices(t("demo_gallery")))
    order = ("tab", "title", "submit", "image_count", "fixed", "advanced", "beams", "repetition", "max_tokens",
             "model_selects", "sampling", "gallery", "index", "edit", "section", "caption", "search", "section_text",
             "apply_text", "candidates", "add", "delete", "save", "file", "examples")
    if article is None:
        status = stage_board(language=language)
    else:
        done = t("done", images=len(article.placements), sections=len(article.sections))
        status = stage_board("done", language=language) + f"\n\n{done}"
        updates["section"] = gr.update(label=t("section"), choices=section_choices(article, language))
    gallery_status = gallery_said.text(language) if gallery_said is not None else ""
    return (*(updates[key] for key in order), status, notes_view(article, language), gallery_status)
