"""The "Write article" tab of the XComposer app: a title in, an illustrated article out, editable and savable.

Images come from a local gallery folder (``--gallery``; by default a small generated demo gallery),
indexed once and refreshed incrementally (``internlm_demo.xcomposer.gallery``). The pipeline is
``internlm_demo.xcomposer.article``; this module only lays out the tab and wires its handlers,
which are plain functions callable without a browser.
"""

from __future__ import annotations

import base64
import functools
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image

from internlm_demo.errors import ModelFolderError
from internlm_demo.xcomposer.article import (
    STAGES,
    Article,
    ArticleError,
    ComposeSettings,
    XComposerWriter,
    add_image,
    compose,
    delete_image,
    export_zip,
    illustrate,
    pick_candidate,
    search_again,
    to_markdown,
)
from internlm_demo.xcomposer.gallery import GalleryError, GalleryIndex, ensure_demo_gallery, open_gallery

EXAMPLES = ["又见敦煌", "星链新闻稿", "如何养好一只宠物", "Shanghai Travel Guide in English",
            "Travel guidance of London in English", "Advertising for Genshin Impact in English"]
THUMBNAIL_SIDE = 480
CANDIDATE_SIDE = 256
CURSOR = "▌"
# Gradio finds a handler's progress tracker by this default value; it binds it to each event itself.
PROGRESS = gr.Progress()
TEXTS = {
    "English": {
        "tab": "📝 Write article", "title": "Write an illustrated article based on the given title:",
        "submit": "Submit", "image_count": "Select the number of the inserted image after article generation.",
        "fixed": "Insert a fixed number of images", "advanced": "Advanced Settings", "beams": "Beam Size",
        "repetition": "Repetition_penalty", "max_tokens": "Max output tokens", "model_selects": "Model selects images",
        "sampling": "Do_sample", "gallery": "Gallery folder (empty: the generated demo gallery)",
        "index": "Index gallery", "section": "Section", "caption": "Caption", "search": "Search again",
        "candidates": "Candidates — click one to use it", "add": "➕ Add image", "delete": "🗑️ Delete image",
        "edit": "Edit images", "save": "Save article", "file": "Article (zip: article.md + images/)",
    },
    "中文": {
        "tab": "📝 创作图文并茂文章", "title": "根据给定标题写一个图文并茂的文章：", "submit": "生成",
        "image_count": "生成文章后，可选择全文配图数量", "fixed": "固定数量配图", "advanced": "高级设置",
        "beams": "集束大小", "repetition": "重复惩罚", "max_tokens": "最多输出字数", "model_selects": "模型选图",
        "sampling": "采样", "gallery": "图库文件夹（留空：生成的演示图库）", "index": "建立图库索引",
        "section": "段落", "caption": "标题", "search": "搜索", "candidates": "候选图像——点击一张即可使用",
        "add": "➕ 添加配图", "delete": "🗑️ 删除配图", "edit": "编辑", "save": "文章下载",
        "file": "文章（zip：article.md + images/）",
    },
}


@dataclass(frozen=True)
class ArticleTab:
    """What the handlers share: the app's model provider (``get()`` → XComposer) and the default gallery."""

    provider: object
    default_gallery: str | None = None


# --- rendering ------------------------------------------------------------------------------------


def stage_board(current: str | None = None, step: int = 0, total: int = 0, error: str | None = None,
                stages: tuple[str, ...] = STAGES) -> str:
    """The progress of a run: ✓ finished stages, ▶ the current one with its count, ○ those to come; ✗ on failure."""
    reached = {None: 0, "done": len(stages)}.get(current, stages.index(current) if current in stages else 0)
    marks = []
    for i, stage in enumerate(stages):
        if i < reached:
            marks.append(f"✓ {stage}")
        elif i == reached and current in stages:
            count = f" {step + 1}/{total}" if total else ""
            marks.append(f"{'✗' if error else '▶'} **{stage}{count}**")
        else:
            marks.append(f"○ {stage}")
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


def notes_view(article: Article | None) -> str:
    if article is None or not article.notes:
        return ""
    return "\n".join(f"- ⚠️ {note}" for note in article.notes)


def section_choices(article: Article) -> list[tuple[str, int]]:
    choices = []
    for i, section in enumerate(article.sections):
        text = section.strip()
        short = text[:36] + ("…" if len(text) > 36 else "")
        choices.append((f"{i + 1}. {'🖼️ ' if i in article.placements else ''}{short}", i))
    return choices


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


def editor_updates(article: Article | None, position: int | None = None) -> tuple:
    """(section dropdown, section text, caption, candidates, add button, delete button, editor accordion)."""
    if article is None:
        hidden = gr.update(visible=False)
        return gr.update(choices=[], value=None), "", gr.update(value=""), gr.update(value=[]), hidden, hidden, hidden
    if position is None or not 0 <= position < len(article.sections):
        position = min(article.placements, default=0)
    placement = article.placements.get(position)
    return (
        gr.update(choices=section_choices(article), value=position),
        article.sections[position],
        gr.update(value=placement.caption if placement else ""),
        gr.update(value=candidate_thumbnails(article, position), selected_index=placement.chosen if placement else None),
        gr.update(visible=placement is None),
        gr.update(visible=placement is not None),
        gr.update(visible=True),
    )


def article_outputs(article: Article | None, status: str, view: str | None = None, position: int | None = None) -> tuple:
    """Values for the tab's article outputs: state, status, notes, article, the editor, the fixed-count button."""
    if view is None:
        view = article_view(article) if article is not None else ""
    return (article, status, notes_view(article), view, *editor_updates(article, position),
            gr.update(interactive=article is not None))


# --- handlers -------------------------------------------------------------------------------------


def gallery_folder(tab: ArticleTab, folder: str | None) -> Path:
    folder = (folder or "").strip() or tab.default_gallery
    return Path(folder).expanduser() if folder else ensure_demo_gallery()


def open_tab_gallery(tab: ArticleTab, folder: str | None, progress=None) -> GalleryIndex:
    """The gallery index, refreshed; a real XComposer captions new images (the demo model's captions are noise)."""
    model = tab.provider.get()
    captioner = None if model.info.is_demo else XComposerWriter(model).captioner()

    def report(done: int, total: int, path: str) -> None:
        if progress is not None and total:
            progress(done / total, desc=f"indexing the gallery: {path}")

    return open_gallery(gallery_folder(tab, folder), captioner=captioner, progress=report)


def index_gallery(tab: ArticleTab, folder: str, progress=PROGRESS) -> str:
    """Index (or refresh) the gallery folder; returns its status line."""
    try:
        index = open_tab_gallery(tab, folder, progress)
    except (GalleryError, ModelFolderError) as error:
        gr.Warning(str(error))
        return f"✗ {error}"
    return f"{index.status()} Index: {index.report.summary()}."


def run_stages(events, article: Article | None, progress, stages=STAGES):
    """Turn pipeline events into tab outputs; errors become a message, never a traceback."""
    current, step, total = None, 0, 0
    try:
        for event in events:
            current, step, total = event.stage, event.step, event.total
            if event.article is not None:
                article = event.article
            fraction = (stages.index(current) + (step / total if total else 0)) / len(stages) if current in stages else 1.0
            progress(fraction, desc=event.message)
            if event.stage == "writing":
                text = event.text.replace("\n", "\n\n") + CURSOR
                yield article_outputs(None, stage_board("writing", stages=stages), view=text)
            elif event.stage == "done":
                board = stage_board("done", stages=stages) + f"\n\n{event.message}"
                for note in article.notes:
                    gr.Warning(note)
                yield article_outputs(article, board)
            else:
                yield article_outputs(article, stage_board(current, step, total, stages=stages))
    except (ArticleError, GalleryError, ModelFolderError) as error:
        gr.Warning(str(error))
        yield article_outputs(article, stage_board(current or stages[0], step, total, error=str(error), stages=stages))
    except RuntimeError as error:  # e.g. CUDA out of memory: say so and keep the app alive
        message = f"Generation failed: {error}"
        gr.Warning(message)
        yield article_outputs(article, stage_board(current or stages[0], step, total, error=message, stages=stages))


def compose_settings(num_beams, repetition_penalty, max_output_tokens, model_selects_images, do_sample,
                     image_count=None) -> ComposeSettings:
    return ComposeSettings(num_beams=int(num_beams), repetition_penalty=float(repetition_penalty),
                           max_output_tokens=int(max_output_tokens), model_selects_images=bool(model_selects_images),
                           do_sample=bool(do_sample), image_count=None if image_count is None else int(image_count))


def write_article(tab: ArticleTab, title: str, num_beams: int, repetition_penalty: float, max_output_tokens: int,
                  model_selects_images: bool, do_sample: bool, folder: str, progress=PROGRESS):
    """Submit: write the article for ``title`` and illustrate it, streaming each stage."""
    settings = compose_settings(num_beams, repetition_penalty, max_output_tokens, model_selects_images, do_sample)

    def events():
        yield from compose(XComposerWriter(tab.provider.get()), open_tab_gallery(tab, folder, progress), title, settings)

    yield from run_stages(events(), None, progress)


def insert_fixed_images(tab: ArticleTab, article: Article | None, image_count: int, num_beams: int,
                        repetition_penalty: float, max_output_tokens: int, model_selects_images: bool, do_sample: bool,
                        folder: str, progress=PROGRESS):
    """Place exactly ``image_count`` images in the current article (the model still chooses where)."""
    if article is None:
        gr.Warning("Write an article first.")
        yield article_outputs(None, stage_board(error="Write an article first."))
        return
    settings = compose_settings(num_beams, repetition_penalty, max_output_tokens, model_selects_images, do_sample,
                                image_count)
    stages = STAGES[1:]

    def events():
        updated = Article(article.title, article.sections, article.gallery_root)
        yield from illustrate(XComposerWriter(tab.provider.get()), open_tab_gallery(tab, folder, progress), updated, settings)

    yield from run_stages(events(), article, progress, stages)


def show_section(article: Article | None, position: int | None) -> tuple:
    """The editor for another section: its text, caption, candidates, add or delete."""
    return editor_updates(article, None if position is None else int(position))[1:]


def edit_outputs(article: Article | None, position, change) -> tuple:
    """Apply ``change(article, position)``; an ArticleError leaves the article as it was, with a warning."""
    if article is None:
        gr.Warning("Write an article first.")
        return article_outputs(None, "")
    try:
        updated = change(article, int(position))
    except (ArticleError, GalleryError, ModelFolderError) as error:
        gr.Warning(str(error))
        return article_outputs(article, f"✗ {error}", position=int(position))
    return article_outputs(updated, f"Section {int(position) + 1} updated.", position=int(position))


def search_section(tab: ArticleTab, article: Article | None, position: int, caption: str, folder: str) -> tuple:
    """Search again with the edited caption."""
    return edit_outputs(article, position,
                        lambda a, p: search_again(open_tab_gallery(tab, folder), a, p, caption))


def choose_candidate(article: Article | None, position: int, evt: gr.SelectData) -> tuple:
    """A click on a candidate puts it in the article."""
    return edit_outputs(article, position, lambda a, p: pick_candidate(a, p, evt.index))


def add_section_image(tab: ArticleTab, article: Article | None, position: int, folder: str) -> tuple:
    """➕: caption the section with the model and place the best unused image."""
    return edit_outputs(article, position,
                        lambda a, p: add_image(XComposerWriter(tab.provider.get()), open_tab_gallery(tab, folder), a, p))


def delete_section_image(article: Article | None, position: int) -> tuple:
    return edit_outputs(article, position, delete_image)


def save_article(article: Article | None) -> str | None:
    """Save: a zip with article.md and the chosen images, linked by relative path."""
    if article is None:
        gr.Warning("Write an article first; there is nothing to save yet.")
        return None
    try:
        return str(export_zip(article, Path(tempfile.mkdtemp(prefix="article-"))))
    except (ArticleError, OSError) as error:
        gr.Warning(str(error))
        return None


def relabel(language: str) -> tuple:
    """Labels of the tab in ``language``, one update per component of ``build_article_tab``'s relabel list."""
    t = TEXTS.get(language, TEXTS["English"])
    return (gr.update(label=t["tab"]), gr.update(label=t["title"]), gr.update(value=t["submit"]),
            gr.update(label=t["image_count"]), gr.update(value=t["fixed"]), gr.update(label=t["advanced"]),
            gr.update(label=t["beams"]), gr.update(label=t["repetition"]), gr.update(label=t["max_tokens"]),
            gr.update(label=t["model_selects"]), gr.update(label=t["sampling"]), gr.update(label=t["gallery"]),
            gr.update(value=t["index"]), gr.update(label=t["edit"]), gr.update(label=t["section"]),
            gr.update(label=t["caption"]), gr.update(value=t["search"]), gr.update(label=t["candidates"]),
            gr.update(value=t["add"]), gr.update(value=t["delete"]), gr.update(value=t["save"]), gr.update(label=t["file"]))


# --- layout ---------------------------------------------------------------------------------------


def build_article_tab(app) -> None:
    """Lay out the tab inside the app's Blocks; ``app`` has ``provider``, ``language`` and ``gallery``."""
    tab_context = ArticleTab(app.provider, app.gallery)
    t = TEXTS["English"]
    with gr.Tab(t["tab"], id="article") as tab:
        article = gr.State(None)
        with gr.Row():
            title = gr.Textbox(label=t["title"], scale=2, elem_id="article-title")
            submit = gr.Button(t["submit"], variant="primary", scale=1, elem_id="article-submit")
        with gr.Row():
            image_count = gr.Slider(1, 30, value=5, step=1, label=t["image_count"], scale=2)
            fixed = gr.Button(t["fixed"], interactive=False, scale=1)
        with gr.Row():
            with gr.Column():
                with gr.Accordion(t["advanced"], open=False, elem_id="article-advanced") as advanced:
                    num_beams = gr.Slider(1, 6, value=5, step=1, label=t["beams"], elem_id="article-beams")
                    repetition_penalty = gr.Slider(1.0, 10.0, value=5.0, step=0.1, label=t["repetition"])
                    max_output_tokens = gr.Slider(100, 2000, value=1000, step=1, label=t["max_tokens"],
                                                  elem_id="article-max-tokens")
                    model_selects = gr.Checkbox(value=True, label=t["model_selects"])
                    do_sample = gr.Checkbox(value=False, label=t["sampling"])
                with gr.Row():
                    folder = gr.Textbox(value=tab_context.default_gallery or "", label=t["gallery"], scale=3)
                    index = gr.Button(t["index"], scale=1)
                gallery_status = gr.Markdown(elem_id="article-gallery-status")
            with gr.Column():
                gr.Examples(examples=[[example] for example in EXAMPLES], inputs=[title])
        status = gr.Markdown(stage_board(), elem_id="article-status")
        notes = gr.Markdown(elem_id="article-notes")
        with gr.Row():
            with gr.Column(scale=3):
                view = gr.Markdown(elem_id="article-view")
            with gr.Column(scale=2), gr.Accordion(t["edit"], open=True, visible=False) as editor:
                section = gr.Dropdown(choices=[], label=t["section"], elem_id="article-section")
                section_text = gr.Markdown()
                with gr.Row():
                    caption = gr.Textbox(label=t["caption"], scale=4, elem_id="article-caption")
                    search = gr.Button(t["search"], scale=1, elem_id="article-search")
                candidates = gr.Gallery(label=t["candidates"], columns=2, height="auto", allow_preview=False,
                                        elem_id="article-candidates")
                with gr.Row():
                    add = gr.Button(t["add"], visible=False, elem_id="article-add")
                    delete = gr.Button(t["delete"], visible=False, elem_id="article-delete")
        save = gr.Button(t["save"], elem_id="article-save")
        saved = gr.File(label=t["file"], elem_id="article-file")

    outputs = [article, status, notes, view, section, section_text, caption, candidates, add, delete, editor, fixed]
    parameters = [num_beams, repetition_penalty, max_output_tokens, model_selects, do_sample]
    model_queue = {"concurrency_id": "xcomposer-model", "concurrency_limit": 1}
    gr.on([submit.click, title.submit], functools.partial(write_article, tab_context), [title, *parameters, folder],
          outputs, api_name="write_article", **model_queue)
    fixed.click(functools.partial(insert_fixed_images, tab_context), [article, image_count, *parameters, folder], outputs,
                api_name="insert_fixed_images", **model_queue)
    index.click(functools.partial(index_gallery, tab_context), folder, gallery_status, api_name="index_gallery")
    section.input(show_section, [article, section], outputs[5:11], api_name="show_section")
    search.click(functools.partial(search_section, tab_context), [article, section, caption, folder], outputs,
                 api_name="search_again")
    candidates.select(choose_candidate, [article, section], outputs, api_name=False)
    add.click(functools.partial(add_section_image, tab_context), [article, section, folder], outputs,
              api_name="add_image", **model_queue)
    delete.click(delete_section_image, [article, section], outputs, api_name="delete_image")
    save.click(save_article, article, saved, api_name="save_article")
    app.language.change(relabel, app.language,
                        [tab, title, submit, image_count, fixed, advanced, num_beams, repetition_penalty,
                         max_output_tokens, model_selects, do_sample, folder, index, editor, section, caption, search,
                         candidates, add, delete, save, saved])
