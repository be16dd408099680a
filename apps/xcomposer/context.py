"""What the tabs of the XComposer app share: the model, loaded once per process, and the language switch."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from internlm_demo.xcomposer import XComposer

# One model serves every session: events that run it queue behind each other.
ON_MODEL = {"concurrency_id": "xcomposer-model", "concurrency_limit": 1}


class ModelProvider:
    """Loads the model on first use, once per process; after a failure the next call tries again."""

    def __init__(self, load: Callable[[], XComposer]):
        self._load = load
        self._model: XComposer | None = None
        self._lock = threading.Lock()

    def get(self) -> XComposer:
        with self._lock:
            if self._model is None:
                self._model = self._load()
            return self._model


@dataclass(frozen=True)
class AppContext:
    """What a tab needs from the app: the shared model and the language switch (a State to listen to)."""

    provider: ModelProvider
    language: gr.State
    gallery: str | None = None  # --gallery: the article tab's image folder(s), os.pathsep-joined; None: the demo one
