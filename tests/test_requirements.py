"""Every package the code imports is declared: in requirements.txt, requirements-dev.txt, or installed by name in
scripts/install.sh (the --no-deps ones), so that nothing works only because another package happened to bring it."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys

from tests.conftest import REPO

SOURCES = [*(REPO / "internlm_demo").rglob("*.py"), *(REPO / "apps").rglob("*.py"), REPO / "download.py"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    names = set()
    for requirements in ("requirements.txt", "requirements-dev.txt"):
        for line in (REPO / requirements).read_text().splitlines():
            match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#")[0])
            if match:
                names.add(canonical(match.group(1)))
    for pinned in re.findall(r'"([A-Za-z0-9._-]+)==', (REPO / "scripts" / "install.sh").read_text()):
        names.add(canonical(pinned))
    return names


def imported_modules() -> set[str]:
    modules = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"internlm_demo", "apps", "download"}


def test_every_imported_package_is_declared():
    distributions = importlib.metadata.packages_distributions()
    undeclared = {}
    for module in sorted(imported_modules()):
        owners = {canonical(name) for name in distributions.get(module, [module])}
        if not owners & declared():
            undeclared[module] = sorted(owners)
    assert undeclared == {}, f"imported but not declared (module: distributions): {undeclared}"


def test_the_check_sees_the_server_packages():
    assert {"fastapi", "uvicorn", "starlette", "pydantic", "anyio"} <= imported_modules()
