"""How a gallery image is described by text: its folder and file names, a sidecar file, a caption; and the terms
a description or a query is split into (words, and CJK characters and bigrams)."""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

SIDECAR_SUFFIXES = (".txt", ".json")
SIDECAR_JSON_KEYS = ("caption", "description", "title", "alt", "tags", "keywords")
SIDECAR_MAX_CHARS = 2000
CJK_RUN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
TERM_PATTERN = re.compile(f"[{CJK_RUN}]+|[^\\W_]+")
CJK_PATTERN = re.compile(f"[{CJK_RUN}]")
# Tokens in camera and screenshot file names that say nothing about the picture.
NAME_NOISE = re.compile(r"^(img|image|dsc|dscn|dscf|pxl|mvimg|photo|pic|screenshot|wp|vid|copy|\d+|[a-f0-9]{8,})$")


def text_terms(text: str) -> list[str]:
    """Words (lower-case, plural s dropped) and, for Chinese/Japanese/Korean runs, characters and bigrams."""
    terms: list[str] = []
    for run in TERM_PATTERN.findall(unicodedata.normalize("NFKC", text).lower()):
        if CJK_PATTERN.match(run):
            terms.extend(run)
            terms.extend(run[i:i + 2] for i in range(len(run) - 1))
        elif not run.isdigit():
            terms.append(run[:-1] if len(run) > 3 and run.endswith("s") and not run.endswith("ss") else run)
    return terms


def name_text(relative_path: str) -> str:
    """Folder and file names as words: ``海边/sunset_beach-02.jpg`` → ``海边 sunset beach``."""
    parts = Path(relative_path).with_suffix("").parts
    words = []
    for part in parts:
        for word in re.split(r"[\s_\-.+()\[\]]+", part):
            if word and not NAME_NOISE.match(word.lower()):
                words.append(word)
    return " ".join(words)


def read_sidecar(image_path: Path) -> tuple[str, int]:
    """(text, mtime_ns) of ``<name>.txt`` or ``<name>.json`` beside an image; ("", 0) when there is none."""
    for suffix in SIDECAR_SUFFIXES:
        sidecar = image_path.with_suffix(suffix)
        try:
            raw = sidecar.read_text(encoding="utf-8", errors="replace")
            mtime = sidecar.stat().st_mtime_ns
        except OSError:
            continue
        if suffix == ".json":
            raw = sidecar_json_text(raw)
        return " ".join(raw.split())[:SIDECAR_MAX_CHARS], mtime
    return "", 0


def sidecar_json_text(raw: str) -> str:
    """The descriptive fields of a JSON sidecar: a string, or an object with caption/description/title/tags."""
    try:
        data = json.loads(raw)
    except ValueError:
        return ""
    if isinstance(data, str):
        return data
    if not isinstance(data, dict):
        return ""
    values = []
    for key in SIDECAR_JSON_KEYS:
        value = data.get(key)
        if isinstance(value, str):
            values.append(value)
        elif isinstance(value, list):
            values.extend(str(item) for item in value)
    return " ".join(values)


def describe(relative_path: str, sidecar: str, caption: str) -> str:
    return " . ".join(text for text in (name_text(relative_path), sidecar, caption) if text.strip())
