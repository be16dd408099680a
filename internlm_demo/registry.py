"""Known InternLM models: where to download them, their family and what they need."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

COMPLETE_MARKER = ".internlm-demo-complete"


@dataclass(frozen=True)
class KnownModel:
    """One downloadable model and the facts the apps need before loading it."""

    id: str
    family: str  # "internlm", "internlm2", "internlm3" or "xcomposer"
    openxlab_repo: str
    modelscope_repo: str
    download_gb: float
    fp16_gpu_gb: float
    context_window: int
    description: str


KNOWN_MODELS: dict[str, KnownModel] = {
    m.id: m
    for m in (
        KnownModel("internlm-chat-7b", "internlm", "OpenLMLab/InternLM-chat-7b",
                   "Shanghai_AI_Laboratory/internlm-chat-7b", 15.5, 16, 2048, "InternLM v1 chat, 7B"),
        KnownModel("internlm-chat-7b-8k", "internlm", "OpenLMLab/InternLM-chat-7b-8k",
                   "Shanghai_AI_Laboratory/internlm-chat-7b-8k", 15.5, 16, 8192, "InternLM v1 chat, 7B, 8k context"),
        KnownModel("internlm-chat-20b", "internlm", "OpenLMLab/InternLM-chat-20b",
                   "Shanghai_AI_Laboratory/internlm-chat-20b", 40.3, 42, 16384, "InternLM v1 chat, 20B"),
        KnownModel("internlm2-chat-7b", "internlm2", "OpenLMLab/internlm2-chat-7b",
                   "Shanghai_AI_Laboratory/internlm2-chat-7b", 15.5, 17, 32768, "InternLM2 chat, 7B"),
        KnownModel("internlm2_5-7b-chat", "internlm2", "OpenLMLab/internlm2_5-7b-chat",
                   "Shanghai_AI_Laboratory/internlm2_5-7b-chat", 15.5, 17, 32768, "InternLM2.5 chat, 7B"),
        KnownModel("internlm3-8b-instruct", "internlm3", "OpenLMLab/internlm3-8b-instruct",
                   "Shanghai_AI_Laboratory/internlm3-8b-instruct", 17.6, 19, 32768, "InternLM3 instruct, 8B"),
        KnownModel("internlm-xcomposer-7b", "xcomposer", "InternLM-xcomposer/internlm-xcomposer-7b",
                   "Shanghai_AI_Laboratory/internlm-xcomposer-7b", 18.3, 20, 2048, "InternLM-XComposer v1, 7B"),
        KnownModel("internlm-xcomposer-vl-7b", "xcomposer", "InternLM-xcomposer/internlm-xcomposer-vl-7b",
                   "Shanghai_AI_Laboratory/internlm-xcomposer-vl-7b", 18.3, 20, 2048, "InternLM-XComposer-VL v1, 7B"),
    )
}


def models_dir() -> Path:
    """Where downloaded models live: ``$INTERNLM_DEMO_MODELS`` or ``~/.cache/internlm-demo/models``."""
    configured = os.environ.get("INTERNLM_DEMO_MODELS")
    if configured:
        return Path(configured).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "internlm-demo" / "models"


def downloaded_folder(model_id: str) -> Path | None:
    """The verified local folder of a known model, or None when it was not (fully) downloaded."""
    folder = models_dir() / model_id
    return folder if (folder / COMPLETE_MARKER).is_file() else None
