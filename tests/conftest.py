"""Shared test setup: the golden fixtures, a private cache for generated demo models, output folder."""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections import deque
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES_DIR = REPO.parent / "shared" / "fixtures"
OUTPUT_DIR = REPO / "test-output"


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives a real Chromium through playwright")
    config.addinivalue_line("markers", "sandbox_strict: needs the agent sandbox's strict isolation (a root app with "
                            "namespaces and seccomp, as CI has); fails, saying why, where the machine cannot give it")
    config.addinivalue_line("markers", "sandbox_fallback: runs the agent sandbox in its weak fallback as a root app")
    config.addinivalue_line("markers", "interop: against a real third-party server (llama-cpp-python's, from "
                            "requirements-interop.txt); opt-in: runs only when -m names it")


def pytest_collection_modifyitems(config, items):
    """Interop tests run only when asked for by name (``pytest -m interop``), never in the default run."""
    if "interop" in (config.option.markexpr or ""):
        return
    kept = [item for item in items if not item.get_closest_marker("interop")]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("interop")])
        items[:] = kept


@pytest.fixture(autouse=True)
def required_sandbox_isolation(request):
    """Fail a sandbox test at once, with the reason, where this machine cannot give the isolation it needs."""
    if request.node.get_closest_marker("sandbox_strict"):
        from internlm_demo.agent.sandbox import STRICT, probe_isolation

        isolation = probe_isolation()
        if isolation.level != STRICT:
            pytest.fail(f"this test needs the sandbox's strict isolation level (the app as root, with namespaces "
                        f"and seccomp); here it reaches '{isolation.level}': {isolation.details}", pytrace=False)
    if request.node.get_closest_marker("sandbox_fallback") and os.geteuid() != 0:
        pytest.fail("the fallback tests check the private uid a root app gives the code: run them as root",
                    pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def private_demo_cache(tmp_path_factory):
    """Generated demo models and downloads go to a temporary folder, never the user's cache."""
    cache = tmp_path_factory.mktemp("internlm-demo-cache")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("INTERNLM_DEMO_CACHE", str(cache))
    patcher.setenv("INTERNLM_DEMO_MODELS", str(cache / "models"))
    yield cache
    patcher.undo()


@pytest.fixture
def output_dir(request) -> Path:
    """A folder under test-output/ named after the test, for screenshots and other artefacts."""
    folder = OUTPUT_DIR / request.node.name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def reference(name: str) -> dict:
    """The ``NAME.reference.json`` of a golden fixture."""
    return json.loads((FIXTURES_DIR / f"{name}.reference.json").read_text(encoding="utf-8"))


def copy_fixture(name: str, destination: Path) -> Path:
    """A writable copy of a fixture folder."""
    target = destination / name
    shutil.copytree(FIXTURES_DIR / name, target)
    for path in target.iterdir():
        path.chmod(0o644)
    return target


def last(stream, default=None):
    """The final value a generator yields (``default`` when it yields nothing)."""
    final = deque(stream, maxlen=1)
    return final[0] if final else default


def streamed(model, query, history, meta_instruction=None, **settings) -> str:
    """The reply as ``stream_chat`` ends it (what the pages and the server send): never half a character."""
    return last(model.stream_chat(query, history, meta_instruction, **settings), "")


@pytest.fixture
def listening_server():
    """A TCP server on 127.0.0.1 that accepts for 0.5 s; a test asserts nobody reached it."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.5)
    yield server
    server.close()
