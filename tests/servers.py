"""Starting the apps as real servers on 127.0.0.1, and a Chromium to look at them."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from tests.conftest import REPO

CHROMIUM = "/usr/bin/chromium"
# Debian's chromium, run as root in a closed network: no sandbox, no GPU, no background connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def send_json(handler: BaseHTTPRequestHandler, status: int, body: dict) -> None:
    """Answer ``handler``'s request with ``body`` as JSON."""
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def streamlit_command(app: str, port: int, *app_flags: str) -> list[str]:
    """``streamlit run apps/APP`` on 127.0.0.1:PORT, headless, with ``app_flags`` after ``--``."""
    return [sys.executable, "-m", "streamlit", "run", app, "--server.address", "127.0.0.1", "--server.port", str(port),
            "--server.headless", "true", "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
            "--", *app_flags]


@contextlib.contextmanager
def running_server(command: list[str], ready_url: str, env: dict | None = None, timeout_s: float = 90) -> Iterator[subprocess.Popen]:
    """Run ``command`` from the repo root until ``ready_url`` answers 200; stop it afterwards."""
    server = subprocess.Popen(command, cwd=REPO, env={**os.environ, **(env or {})},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    server.kill()
                    pytest.fail(f"{' '.join(command)} did not answer on {ready_url}: {server.stdout.read().decode()}")
                time.sleep(0.2)
        yield server
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """A headless Debian Chromium driven by playwright (never a browser playwright downloads)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
