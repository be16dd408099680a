"""浦语·灵笔 InternLM-XComposer v1 web demo: multimodal chat about images, and an illustrated-article writer.

    python -m apps.xcomposer [--model FOLDER_OR_ID] [--gallery FOLDER] [--num-gpus N] [--port 6008] [--share]

``app.build_demo`` lays out the Blocks (one tab per builder in ``app.TABS``); ``chat_tab`` and
``article_tab`` lay out and wire, ``chat_handlers`` and ``article_handlers`` are plain functions.
"""

import os

# Gradio reports each start to its servers unless told not to; a local demo makes no outside request unless
# asked (GRADIO_ANALYTICS_ENABLED=True asks). Set before any module of the package imports gradio.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
