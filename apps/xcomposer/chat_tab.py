"""The "Multimodal chat" tab: the original demo's chat with image upload, streaming and its parameters."""

from __future__ import annotations

from functools import partial

import gradio as gr

from internlm_demo.i18n import LANGUAGES, labels
from internlm_demo.xcomposer import CONVERSATION_DEFAULTS

from . import chat_handlers as handlers
from .context import ON_MODEL, AppContext


def build_chat_tab(app: AppContext) -> None:
    """Lay out the tab inside the app's Blocks and wire its events."""
    t = labels(LANGUAGES[0], "xcomposer")
    with gr.Tab(t("tab_chat"), id="chat") as tab:
        session = gr.State(handlers.new_session(), delete_callback=handlers.forget_session)  # on the tab's close
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Accordion(t("parameters"), open=True) as parameters:
                    max_output_tokens = gr.Slider(16, 1024, value=CONVERSATION_DEFAULTS["max_length"], step=16,
                                                  label=t("max_output_tokens"), elem_id="xcomposer-max-tokens")
                    num_beams = gr.Slider(1, 5, value=CONVERSATION_DEFAULTS["num_beams"], step=1, label=t("num_beams"),
                                          elem_id="xcomposer-beams")
                    repetition_penalty = gr.Slider(1.0, 5.0, value=CONVERSATION_DEFAULTS["repetition_penalty"], step=0.1,
                                                   label=t("repetition_penalty"))
                    do_sample = gr.Checkbox(value=CONVERSATION_DEFAULTS["do_sample"], label=t("do_sample"))
            with gr.Column(scale=6):
                # Grows with the conversation up to most of the window, then scrolls.
                chatbot = gr.Chatbot(label=t("chatbot"), height="auto", min_height=360, max_height="85vh",
                                     elem_id="xcomposer-chatbot")
                message = gr.MultimodalTextbox(file_count="single", sources=["upload"],
                                               placeholder=t("input"), show_label=False, elem_id="xcomposer-input")
                with gr.Row():
                    stop = gr.Button(t("stop"), elem_id="xcomposer-stop")
                    regenerate = gr.Button(t("regenerate"))
                    clear = gr.Button(t("clear"))

    parameters_in = [max_output_tokens, num_beams, repetition_penalty, do_sample]

    def reply(session, max_output_tokens, num_beams, repetition_penalty, do_sample, language, request: gr.Request):
        # a plain function, not a partial, so that Gradio passes the request (Stop finds the reply by its session)
        yield from handlers.answer(app.provider, session, max_output_tokens, num_beams, repetition_penalty, do_sample,
                                   language, request)

    message.submit(partial(handlers.add_message, app.provider), [message, session, app.language],
                   [chatbot, session, message], api_name="add_message", **ON_MODEL).then(
        reply, [session, *parameters_in, app.language], [chatbot, session], api_name="answer", **ON_MODEL
    )
    regenerate.click(handlers.regenerate, [session, app.language], [chatbot, session], api_name="regenerate").then(
        reply, [session, *parameters_in, app.language], [chatbot, session], api_name="answer_again", **ON_MODEL
    )
    stop.click(handlers.stop_reply, None, None, api_name="stop", queue=False)
    clear.click(handlers.clear_history, [session], [chatbot, session, message], api_name="clear_history")
    app.language.change(
        handlers.relabel_chat_tab, app.language,
        [tab, chatbot, message, parameters, max_output_tokens, num_beams, repetition_penalty, do_sample, stop,
         regenerate, clear],
        api_visibility="private",
    )
