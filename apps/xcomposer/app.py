"""The XComposer app's Blocks: a header with the model banner and the language switch, then one tab per builder.

A tab is a function ``build(app: AppContext)`` that lays itself out inside the Blocks; add it to ``TABS``.
"""

from __future__ import annotations

import os
from functools import partial

import gradio as gr

from internlm_demo.settings import Settings
from internlm_demo.i18n import LANGUAGES, labels
from internlm_demo.xcomposer import load_xcomposer

from . import chat_handlers as handlers
from .article_tab import build_article_tab
from .chat_tab import build_chat_tab
from .context import AppContext, ModelProvider

TITLE = "浦语·灵笔 InternLM-XComposer"
TABS = (build_chat_tab, build_article_tab)


def model_provider(settings: Settings) -> ModelProvider:
    """The model ``settings`` name, loaded on first use."""
    return ModelProvider(
        partial(load_xcomposer, settings.model, device=settings.device, dtype=settings.dtype, num_gpus=settings.num_gpus)
    )


def build_demo(settings: Settings, provider: ModelProvider | None = None) -> gr.Blocks:
    """The app's Blocks; without ``provider`` the model ``settings`` name is loaded when first needed."""
    provider = provider or model_provider(settings)
    with gr.Blocks(title=TITLE, analytics_enabled=os.environ.get("GRADIO_ANALYTICS_ENABLED") == "True") as demo:
        language = gr.State(LANGUAGES[0])
        with gr.Row():
            with gr.Column(scale=20):
                gr.Markdown(f"# {TITLE}")
                banner = gr.Markdown(elem_id="xcomposer-model-banner")
            language_button = gr.Button(labels(LANGUAGES[0], "xcomposer")("switch"), scale=1, min_width=100)
        app = AppContext(provider=provider, language=language, gallery=settings.gallery)
        with gr.Tabs():
            for build_tab in TABS:
                build_tab(app)
        demo.load(partial(handlers.model_banner, provider), None, banner, api_name="model_banner")
        language_button.click(partial(handlers.switch_language, provider), language, [language, language_button, banner],
                              api_name="switch_language")
    return demo
