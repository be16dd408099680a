"""The layering README.md's Layout states: a package of ``internlm_demo`` imports only packages of the layers below
its own (or modules of its own package and layer), and nothing in ``internlm_demo`` imports Streamlit or Gradio."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

# Lowest first; the names of one layer may import each other only where they share the bottom layer.
LAYERS = ({"settings", "errors", "i18n"}, {"models"}, {"generation"}, {"serving", "xcomposer", "agent"}, {"ui"})
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
UI_LIBRARIES = {"streamlit", "gradio", "gradio_client"}


def imported_modules(path: Path, root: Path) -> list[str]:
    """Absolute names of what ``path`` (a module of ``internlm_demo`` under ``root``) imports, relative imports
    resolved."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    package = parts[:-1]  # the package a relative import starts from (an __init__ belongs to its own folder)
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names += [f"{module}.{alias.name}" for alias in node.names]  # the name may be a submodule
    return names


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "internlm_demo" and len(parts) > 1 and parts[1] in RANK else None


def violations(root: Path) -> list[str]:
    found = []
    for path in sorted((root / "internlm_demo").rglob("*.py")):
        own = layer(".".join(path.relative_to(root).with_suffix("").parts))
        for name in imported_modules(path, root):
            other = layer(name)
            if name.split(".")[0] in UI_LIBRARIES:
                found.append(f"{path.relative_to(root)} imports {name}")
            elif own and other and other != own and (RANK[other] > RANK[own] or RANK[other] == RANK[own] > 0):
                found.append(f"{path.relative_to(root)} ({own}) imports {name} ({other})")
    return found


def test_each_package_imports_only_the_layers_below_it():
    assert violations(REPO) == []


def test_the_check_sees_an_upward_and_a_sideways_import(tmp_path):
    for relative, text in {"internlm_demo/models/reader.py": "from ..generation import engine\n",
                           "internlm_demo/agent/loop.py": "from internlm_demo.serving.backend import Budget\n",
                           "internlm_demo/errors.py": "from .settings import Settings\nimport gradio\n",
                           "internlm_demo/xcomposer/gallery/index.py": "from ...i18n import Phrase\n"}.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    assert violations(tmp_path) == [
        "internlm_demo/agent/loop.py (agent) imports internlm_demo.serving.backend.Budget (serving)",
        "internlm_demo/errors.py imports gradio",
        "internlm_demo/models/reader.py (models) imports internlm_demo.generation.engine (generation)",
    ]
