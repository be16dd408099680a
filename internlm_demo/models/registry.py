"""Known InternLM models: where to download them, their family and what they need."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

COMPLETE_MARKER = ".internlm-demo-complete"


@dataclass(frozen=True)
class KnownModel:
    """One downloadable model and the facts the apps need before loading it.

    Sizes are in GB (10^9 bytes): ``download_gb`` is what the repository weighs,
    ``fp16_gpu_gb`` the GPU memory it needs to chat in float16. An empty repo string
    means the model is not published on that source.
    """

    id: str
    family: str  # "internlm", "internlm2", "internlm3" or "xcomposer"
    openxlab_repo: str
    modelscope_repo: str
    download_gb: float
    fp16_gpu_gb: float
    context_window: int
    description: str

    def repo_on(self, source: str) -> str:
        """The repository id on ``source`` ("openxlab" or "modelscope"); "" when not published there."""
        return {"openxlab": self.openxlab_repo, "modelscope": self.modelscope_repo}[source]


# Repository ids as linked from the official InternLM / InternLM-XComposer READMEs and model cards.
# InternLM3 is published on ModelScope (and Modelers), not on openxlab.
# The openxlab id of internlm-xcomposer-vl-7b follows the organisation's naming; its README links only the 7b page.
KNOWN_MODELS: dict[str, KnownModel] = {
    m.id: m
    for m in (
        KnownModel("internlm-chat-7b", "internlm", "OpenLMLab/InternLM-chat-7b",
                   "Shanghai_AI_Laboratory/internlm-chat-7b", 14.6, 16, 2048, "InternLM v1 chat, 7B"),
        KnownModel("internlm-chat-7b-8k", "internlm", "OpenLMLab/InternLM-chat-7b-8k",
                   "Shanghai_AI_Laboratory/internlm-chat-7b-8k", 14.6, 16, 8192, "InternLM v1 chat, 7B, 8k context"),
        KnownModel("internlm-chat-20b", "internlm", "OpenLMLab/InternLM-chat-20b",
                   "Shanghai_AI_Laboratory/internlm-chat-20b", 40.2, 42, 16384, "InternLM v1 chat, 20B"),
        KnownModel("internlm2-chat-7b", "internlm2", "OpenLMLab/internlm2-chat-7b",
                   "Shanghai_AI_Laboratory/internlm2-chat-7b", 15.5, 17, 32768, "InternLM2 chat, 7B"),
        KnownModel("internlm2_5-7b-chat", "internlm2", "OpenLMLab/internlm2_5-7b-chat",
                   "Shanghai_AI_Laboratory/internlm2_5-7b-chat", 15.5, 17, 32768, "InternLM2.5 chat, 7B"),
        KnownModel("internlm3-8b-instruct", "internlm3", "",
                   "Shanghai_AI_Laboratory/internlm3-8b-instruct", 17.6, 19, 32768, "InternLM3 instruct, 8B"),
        KnownModel("internlm-xcomposer-7b", "xcomposer", "InternLM-xcomposer/internlm-xcomposer-7b",
                   "Shanghai_AI_Laboratory/internlm-xcomposer-7b", 18.3, 20, 2048, "InternLM-XComposer v1, 7B"),
        KnownModel("internlm-xcomposer-vl-7b", "xcomposer", "InternLM-xcomposer/internlm-xcomposer-vl-7b",
                   "Shanghai_AI_Laboratory/internlm-xcomposer-vl-7b", 18.3, 20, 2048, "InternLM-XComposer-VL v1, 7B"),
    )
}


def find_model(name: str) -> KnownModel | None:
    """The known model named by its id or by its openxlab/modelscope repo id (any case), else None."""
    wanted = name.strip().lower()
    if not wanted:
        return None
    for model in KNOWN_MODELS.values():
        if wanted in (model.id.lower(), model.openxlab_repo.lower(), model.modelscope_repo.lower()):
            return model
    return None


def models_dir() -> Path:
    """Where downloaded models live: ``$INTERNLM_DEMO_MODELS`` or ``~/.cache/internlm-demo/models``."""
    configured = os.environ.get("INTERNLM_DEMO_MODELS")
    if configured:
        return Path(configured).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "internlm-demo" / "models"


def read_complete_marker(folder: Path) -> dict | None:
    """The record ``download.py`` left in a finished folder, or None when absent or unreadable."""
    try:
        record = json.loads((folder / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` carries the complete marker and every file it lists still has its recorded size and
    modification time (a file changed or replaced since the download makes the folder incomplete again)."""
    files = (read_complete_marker(folder) or {}).get("files")
    if not isinstance(files, dict) or not files:
        return False
    for name, facts in files.items():
        try:
            stat = (folder / name).stat()
        except OSError:
            return False
        if not isinstance(facts, dict) or (stat.st_size, stat.st_mtime_ns) != (facts.get("size"), facts.get("mtime_ns")):
            return False
    return True


def downloaded_folder(model_id: str) -> Path | None:
    """The verified local folder of a known model, or None when it was not (fully) downloaded."""
    folder = models_dir() / model_id
    return folder if is_complete(folder) else None
