"""The "Write article" tab of the XComposer app: a title in, an illustrated article out, editable and savable."""

from __future__ import annotations

import functools

import gradio as gr

from internlm_demo.i18n import LANGUAGES, labels

from . import article_handlers as handlers
from .article_handlers import ArticleTab
from .context import ON_MODEL, AppContext

# Runs in the browser when a section is chosen: the caption box shows that section's caption at once, before
# the server answers, so a caption the user starts typing is never overwritten by a late reply.
FILL_CAPTION = "(position, table) => JSON.parse(table || '{}')[String(position)] ?? ''"
EXAMPLES = ["又见敦煌", "星链新闻稿", "如何养好一只宠物", "Shanghai Travel Guide in English",
            "Travel guidance of London in English", "Advertising for Genshin Impact in English"]


def build_article_tab(app: AppContext) -> None:
    """Lay out the tab inside the app's Blocks and wire its events."""
    tab_context = ArticleTab.from_setting(app.provider, app.gallery)
    t = labels(LANGUAGES[0], "article")
    with gr.Tab(t("tab"), id="article") as tab:
        article = gr.State(None)
        with gr.Row():
            title = gr.Textbox(label=t("title"), scale=2, elem_id="article-title")
            submit = gr.Button(t("submit"), variant="primary", scale=1, elem_id="article-submit")
        with gr.Row():
            image_count = gr.Slider(1, 30, value=5, step=1, label=t("image_count"), scale=2)
            fixed = gr.Button(t("fixed"), interactive=False, scale=1)
        with gr.Row():
            with gr.Column():
                with gr.Accordion(t("advanced"), open=False, elem_id="article-advanced") as advanced:
                    num_beams = gr.Slider(1, 6, value=5, step=1, label=t("beams"), elem_id="article-beams")
                    repetition_penalty = gr.Slider(1.0, 10.0, value=5.0, step=0.1, label=t("repetition"))
                    max_output_tokens = gr.Slider(100, 2000, value=1000, step=1, label=t("max_tokens"),
                                                  elem_id="article-max-tokens")
                    model_selects = gr.Checkbox(value=True, label=t("model_selects"))
                    do_sample = gr.Checkbox(value=False, label=t("sampling"))
                with gr.Row():
                    choices = tab_context.choices(t("demo_gallery"))
                    folder = gr.Dropdown(choices=choices, value=choices[0][1], label=t("gallery"), scale=3)
                    index = gr.Button(t("index"), scale=1)
                gallery_status = gr.Markdown(elem_id="article-gallery-status")
                gallery_said = gr.State(None)  # the status line as a Phrase, worded again on a language switch
            with gr.Column():
                examples = gr.Examples(examples=[[example] for example in EXAMPLES], inputs=[title], label=t("examples"))
        status = gr.Markdown(handlers.stage_board(), elem_id="article-status")
        notes = gr.Markdown(elem_id="article-notes")
        with gr.Row():
            with gr.Column(scale=3):
                view = gr.Markdown(elem_id="article-view")
            with gr.Column(scale=2), gr.Accordion(t("edit"), open=True, visible=False) as editor:
                section = gr.Dropdown(choices=[], label=t("section"), elem_id="article-section")
                section_text = gr.Textbox(label=t("section_text"), lines=3, max_lines=12, elem_id="article-section-text")
                apply_text = gr.Button(t("apply_text"), size="sm", elem_id="article-apply-text")
                with gr.Row():
                    caption = gr.Textbox(label=t("caption"), scale=4, elem_id="article-caption")
                    search = gr.Button(t("search"), scale=1, elem_id="article-search")
                # Each section's caption, so that choosing a section fills the caption box in the browser at once.
                captions = gr.Textbox("{}", visible="hidden", show_label=False, elem_id="article-captions")
                candidates = gr.Gallery(label=t("candidates"), columns=2, height="auto", allow_preview=False,
                                        elem_id="article-candidates")
                with gr.Row():
                    add = gr.Button(t("add"), visible=False, elem_id="article-add")
                    delete = gr.Button(t("delete"), visible=False, elem_id="article-delete")
        save = gr.Button(t("save"), elem_id="article-save")
        saved = gr.File(label=t("file"), elem_id="article-file")

    outputs = [article, status, notes, view, section, caption, captions, section_text, candidates, add, delete, editor,
               fixed]
    parameters = [num_beams, repetition_penalty, max_output_tokens, model_selects, do_sample]
    language = app.language
    gr.on([submit.click, title.submit], functools.partial(handlers.write_article, tab_context),
          [title, *parameters, folder, language], outputs, api_name="write_article", **ON_MODEL)
    fixed.click(functools.partial(handlers.insert_fixed_images, tab_context),
                [article, image_count, *parameters, folder, language], outputs, api_name="insert_fixed_images", **ON_MODEL)
    index.click(functools.partial(handlers.index_gallery, tab_context), [folder, language],
                [gallery_status, gallery_said], api_name="index_gallery")
    section.input(None, [section, captions], caption, js=FILL_CAPTION)
    section.input(handlers.show_section, [article, section, language], outputs[7:12], api_name="show_section")
    apply_text.click(handlers.edit_section_text, [article, section, section_text, language], outputs,
                     api_name="edit_section_text")
    gr.on([search.click, caption.submit], functools.partial(handlers.search_section, tab_context),
          [article, section, caption, folder, language], outputs, api_name="search_again")
    candidates.select(handlers.choose_candidate, [article, section, language], outputs, api_name=False)
    add.click(functools.partial(handlers.add_section_image, tab_context), [article, section, folder, language], outputs,
              api_name="add_image", **ON_MODEL)
    delete.click(handlers.delete_section_image, [article, section, language], outputs, api_name="delete_image")
    save.click(handlers.save_article, [article, language], saved, api_name="save_article")
    language.change(functools.partial(handlers.relabel, tab_context), [language, article, gallery_said],
                    [tab, title, submit, image_count, fixed, advanced, num_beams, repetition_penalty,
                     max_output_tokens, model_selects, do_sample, folder, index, editor, section, caption, search,
                     section_text, apply_text, candidates, add, delete, save, saved, examples.dataset,
                     status, notes, gallery_status])
