"""Starting the apps as scripts/run.sh does (``python -m apps.launch APP [flags]``): each app on its own port,
and a taken port reported in one line, naming the flag and the variable, before any model loads."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from internlm_demo.errors import PortInUseError
from internlm_demo.settings import APP_PORTS, Settings
from tests.conftest import REPO
from tests.servers import free_port, running_server


def test_each_app_has_its_own_default_port_and_chat_keeps_6006():
    ports = {app: Settings.parse([], {}, app=app).port for app in APP_PORTS}
    assert ports["chat"] == 6006 and len(set(ports.values())) == len(ports)
    assert Settings.parse([], {"INTERNLM_DEMO_PORT": "7001"}, app="agent").port == 7001
    assert Settings.parse(["--port", "7002"], {"INTERNLM_DEMO_PORT": "7001"}, app="agent").port == 7002


def test_check_port_refuses_a_listening_port_with_the_flag_and_the_variable():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUseError) as refused:
            Settings(port=port).check_port()
    message = str(refused.value)
    assert f"Port {port} on 127.0.0.1 is already in use" in message
    assert "--port" in message and "INTERNLM_DEMO_PORT" in message and "\n" not in message
    Settings(port=free_port()).check_port()  # a free one passes


def test_a_host_that_is_not_here_is_named_with_its_flag():
    with pytest.raises(PortInUseError, match="--host or INTERNLM_DEMO_HOST"):
        Settings(host="192.0.2.1", port=free_port()).check_port()  # TEST-NET-1: never a local address


def launch(*args: str, cache, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    environ = {**os.environ, "INTERNLM_DEMO_CACHE": str(cache), "INTERNLM_DEMO_MODELS": str(cache / "models"),
               **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=environ, capture_output=True, text=True,
                          timeout=timeout)


def test_a_second_app_on_a_taken_port_fails_fast_with_one_line_before_loading_a_model(tmp_path):
    """The chat app runs (started by the launcher on a chosen port); every app started on that port again stops
    at once with one line, and no model was generated or loaded (the model cache stays empty)."""
    port = free_port()
    first_cache, cache = tmp_path / "first", tmp_path / "second"
    cache.mkdir()
    command = [sys.executable, "-m", "apps.launch", "chat", "--port", str(port)]
    with running_server(command, f"http://127.0.0.1:{port}/_stcore/health",
                        env={"INTERNLM_DEMO_CACHE": str(first_cache)}, timeout_s=60):
        attempts = {
            "launcher, xcomposer": ("-m", "apps.launch", "xcomposer", "--port", str(port)),
            "launcher, agent, port from the environment": ("-m", "apps.launch", "agent"),
            "launcher, server": ("-m", "apps.launch", "server", "--port", str(port)),
            "launcher, chat": ("-m", "apps.launch", "chat", "--port", str(port)),
            "python -m apps.xcomposer": ("-m", "apps.xcomposer", "--port", str(port)),
            "the server module": ("-m", "internlm_demo.serving.openai_server", "--port", str(port)),
        }
        for name, args in attempts.items():
            result = launch(*args, cache=cache, env={"INTERNLM_DEMO_PORT": str(port)})
            lines = result.stderr.strip().splitlines()
            assert result.returncode != 0, name
            assert lines == [f"error: Port {port} on 127.0.0.1 is already in use (another app?): "
                             "choose another with --port N or INTERNLM_DEMO_PORT=N."], (name, result.stderr)
            assert "Traceback" not in result.stdout + result.stderr
        assert list(cache.iterdir()) == []  # nothing was generated, downloaded or converted


def test_the_launcher_names_the_apps_when_given_another():
    result = subprocess.run([sys.executable, "-m", "apps.launch", "notebook"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0 and "chat|agent|xcomposer|server" in result.stderr
