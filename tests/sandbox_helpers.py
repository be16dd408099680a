"""What the sandbox tests share: running code, and looking at the host from outside the sandbox."""

from __future__ import annotations

import socket
import textwrap
import time
from pathlib import Path

import pytest

from internlm_demo.agent.sandbox import STRICT, ExecutionResult, SandboxLimits, run_python
from internlm_demo.agent.sandbox.interpreter import SANDBOX_UID_BASE

TIMEOUT_S = 2.0


def run(code: str, *, namespaces: bool = True, minimum_level: str = STRICT, **limits) -> ExecutionResult:
    """Run dedented ``code`` with a short timeout; by default only at the strict level."""
    limits.setdefault("timeout_s", TIMEOUT_S)
    return run_python(textwrap.dedent(code), SandboxLimits(**limits), namespaces=namespaces,
                      minimum_level=minimum_level)


def wait_until(condition, timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def host_pids_with_uid(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            lines = (entry / "status").read_text().splitlines()
        except (OSError, NotADirectoryError):
            continue
        uid_line = next(line for line in lines if line.startswith("Uid:"))
        if int(uid_line.split()[1]) == uid:
            pids.append(int(entry.name))
    return pids


def host_pids_with_cmdline(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if marker.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except (OSError, NotADirectoryError):
            continue
    return pids


def assert_no_processes_left(sandbox_uid: int) -> None:
    """The sandbox's private uid must own no process on the host any more."""
    assert sandbox_uid >= SANDBOX_UID_BASE, f"uid {sandbox_uid} is not a sandbox's private uid"
    assert wait_until(lambda: not host_pids_with_uid(sandbox_uid)), host_pids_with_uid(sandbox_uid)


def assert_server_saw_no_connection(server: socket.socket) -> None:
    with pytest.raises(socket.timeout):
        connection, _ = server.accept()
        connection.close()
