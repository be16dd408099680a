"""浦语·灵笔 InternLM-XComposer v1 web demo: multimodal chat about images.

    python apps/xcomposer.py [--model FOLDER_OR_ID] [--num-gpus N] [--port 6006] [--host 127.0.0.1] [--share]

Without --model it uses a downloaded internlm-xcomposer-7b, else a tiny demo model (labelled as such).
Importing this module builds ``demo`` without loading a model or starting a server. Another tab is a
function ``build(app: AppContext)`` that lays itself out inside the Blocks; add it to ``TABS``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so that `python apps/xcomposer.py` finds the package

from dataclasses import dataclass  # noqa: E402
from functools import partial  # noqa: E402

import gradio as gr  # noqa: E402

from apps import xcomposer_handlers as handlers  # noqa: E402
from internlm_demo.errors import ModelFolderError  # noqa: E402
from internlm_demo.settings import Settings  # noqa: E402
from internlm_demo.xcomposer import CONVERSATION_DEFAULTS, load_xcomposer  # noqa: E402
from internlm_demo.xcomposer.preprocess import MAX_FILE_BYTES  # noqa: E402


@dataclass(frozen=True)
class AppContext:
    """What a tab needs from the app: the shared model and the language switch (a State to listen to)."""

    provider: handlers.ModelProvider
    language: gr.State
    gallery: str | None = None  # image folder of the article tab (--gallery); None: the generated demo gallery


def build_chat_tab(app: AppContext) -> None:
    """The "Multimodal chat" tab: the original demo's chat with image upload, streaming and its parameters."""
    t = handlers.TEXTS["English"]
    with gr.Tab(t["tab_chat"], id="chat") as tab:
        session = gr.State(handlers.new_session())
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Accordion(t["parameters"], open=True) as parameters:
                    max_output_tokens = gr.Slider(16, 1024, value=CONVERSATION_DEFAULTS["max_length"], step=16,
                                                  label=t["max_output_tokens"])
                    num_beams = gr.Slider(1, 5, value=CONVERSATION_DEFAULTS["num_beams"], step=1, label=t["num_beams"])
                    repetition_penalty = gr.Slider(1.0, 5.0, value=CONVERSATION_DEFAULTS["repetition_penalty"], step=0.1,
                                                   label=t["repetition_penalty"])
                    do_sample = gr.Checkbox(value=CONVERSATION_DEFAULTS["do_sample"], label=t["do_sample"])
            with gr.Column(scale=6):
                chatbot = gr.Chatbot(label=t["chatbot"], height=560, elem_id="xcomposer-chatbot")
                message = gr.MultimodalTextbox(file_count="single", sources=["upload"],
                                               placeholder=t["input"], show_label=False, elem_id="xcomposer-input")
                with gr.Row():
                    regenerate = gr.Button(t["regenerate"])
                    clear = gr.Button(t["clear"])

    parameters_in = [max_output_tokens, num_beams, repetition_penalty, do_sample]
    # One model serves every session: its events queue behind each other.
    on_model = {"concurrency_id": "xcomposer-model", "concurrency_limit": 1}
    reply = partial(handlers.answer, app.provider)
    message.submit(partial(handlers.add_message, app.provider), [message, session], [chatbot, session, message],
                   api_name="add_message", **on_model).then(
        reply, [session, *parameters_in], [chatbot, session], api_name="answer", **on_model
    )
    regenerate.click(handlers.regenerate, session, [chatbot, session], api_name="regenerate").then(
        reply, [session, *parameters_in], [chatbot, session], api_name="answer_again", **on_model
    )
    clear.click(handlers.clear_history, None, [chatbot, session, message], api_name="clear_history")
    app.language.change(
        handlers.relabel_chat_tab, app.language,
        [tab, chatbot, message, parameters, max_output_tokens, num_beams, repetition_penalty, do_sample, regenerate, clear],
        api_visibility="private",
    )


from apps.xcomposer_article import build_article_tab  # noqa: E402

TABS = (build_chat_tab, build_article_tab)


def build_demo(settings: Settings, provider: handlers.ModelProvider | None = None) -> gr.Blocks:
    """The app's Blocks: header with the model banner and language switch, then one tab per builder in TABS."""
    if provider is None:
        provider = handlers.ModelProvider(
            partial(load_xcomposer, settings.model, device=settings.device, dtype=settings.dtype, num_gpus=settings.num_gpus)
        )
    with gr.Blocks(title="浦语·灵笔 InternLM-XComposer") as demo:
        language = gr.State(handlers.LANGUAGES[0])
        with gr.Row():
            with gr.Column(scale=20):
                gr.Markdown("# 浦语·灵笔 InternLM-XComposer")
                banner = gr.Markdown(elem_id="xcomposer-model-banner")
            language_button = gr.Button(handlers.TEXTS["English"]["switch"], scale=1, min_width=100)
        app = AppContext(provider=provider, language=language, gallery=settings.gallery)
        with gr.Tabs():
            for build_tab in TABS:
                build_tab(app)
        demo.load(partial(handlers.model_banner, provider), None, banner, api_name="model_banner")
        language_button.click(partial(handlers.switch_language, provider), language, [language, language_button, banner],
                              api_name="switch_language")
    return demo


demo = build_demo(Settings.parse([]))


def main(argv: list[str] | None = None) -> None:
    """Load the model (failing early with a readable message), then serve the app."""
    settings = Settings.parse(argv, prog="python apps/xcomposer.py")
    provider = handlers.ModelProvider(
        partial(load_xcomposer, settings.model, device=settings.device, dtype=settings.dtype, num_gpus=settings.num_gpus)
    )
    try:
        provider.get()
    except ModelFolderError as exc:
        sys.exit(f"error: {exc}")
    build_demo(settings, provider).queue().launch(
        server_name=settings.host, server_port=settings.port, share=settings.share, max_file_size=MAX_FILE_BYTES
    )


if __name__ == "__main__":
    main()
