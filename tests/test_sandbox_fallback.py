"""The sandbox's weak fallback, forced with ``namespaces=False``: what still holds without namespaces.

Run as root (the fallback then still gives the code a private uid); ``-m sandbox_fallback`` selects them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from internlm_demo.agent.sandbox import MINIMUM_LEVEL, WEAK, ExecutionResult, interpreter, run_python
from tests.sandbox_helpers import (
    assert_no_processes_left,
    assert_server_saw_no_connection,
    run,
)

pytestmark = pytest.mark.sandbox_fallback


@pytest.fixture(scope="module")
def fallback_interpreter() -> str:
    """An interpreter the fallback can run: without a mount namespace it must be world-readable."""
    probe = run("print('ok')", namespaces=False, minimum_level=WEAK)
    if probe.ok:
        return interpreter.PYTHON_EXECUTABLE
    # The default interpreter may live under /root, which the sandbox user cannot traverse
    # without the mount namespace; the system interpreter is world-readable.
    assert Path("/usr/bin/python3").exists(), f"the fallback cannot run here: {probe.error}"
    return "/usr/bin/python3"


@pytest.fixture
def run_fallback(monkeypatch, fallback_interpreter):
    """Run code without namespaces, i.e. in the weak fallback, accepting that level."""
    monkeypatch.setattr(interpreter, "PYTHON_EXECUTABLE", fallback_interpreter)

    def run_without_namespaces(code: str, **limits) -> ExecutionResult:
        return run(code, namespaces=False, minimum_level=WEAK, **limits)

    return run_without_namespaces


def test_below_the_minimum_level_the_code_does_not_run(monkeypatch, fallback_interpreter, tmp_path):
    monkeypatch.setattr(interpreter, "PYTHON_EXECUTABLE", fallback_interpreter)
    marker = tmp_path / "ran"
    tmp_path.chmod(0o777)
    code = f"open({str(marker)!r}, 'w').write('x')\nprint('RAN')"
    result = run_python(code, namespaces=False)  # the default minimum, as the agent app uses it
    assert result.isolation.level == WEAK
    assert result.stdout == "" and result.exit_code is None and not marker.exists()
    assert f"only the 'weak' isolation level, below the '{MINIMUM_LEVEL}'" in result.error
    assert "--allow-weak-sandbox" in result.error


def test_fallback_reports_the_audit_hook(run_fallback):
    result = run_fallback("pass")
    assert result.ok and result.isolation.level == WEAK
    assert "namespaces: none" in result.isolation.details
    assert "audit hook" in result.isolation.details
    assert "syscall filter: seccomp" in result.isolation.details


def test_fallback_blocks_sockets_subprocesses_and_ctypes(run_fallback, listening_server):
    port = listening_server.getsockname()[1]
    result = run_fallback(
        f"""
        import os
        attempts = {{
            "socket": lambda: __import__("socket").create_connection(("127.0.0.1", {port}), 1),
            "raw socket": lambda: __import__("_socket").socket(),
            "subprocess": lambda: __import__("subprocess").run(["true"]),
            "os.system": lambda: os.system("true"),
            "exec": lambda: os.execv("/bin/true", ["true"]),
            "ctypes": lambda: __import__("ctypes"),
        }}
        for name, attempt in attempts.items():
            try:
                attempt()
                print("ALLOWED", name)
            except PermissionError:
                print("blocked", name)
        """
    )
    assert result.ok, result
    assert result.stdout.count("blocked") == 6 and "ALLOWED" not in result.stdout
    assert_server_saw_no_connection(listening_server)


def test_fallback_still_enforces_limits_and_cleans_up(run_fallback):
    result = run_fallback(
        """
        import os, time
        print(os.getuid(), os.getcwd(), flush=True)
        if os.fork() == 0:
            os.setsid()  # leaves the process group the parent kills
            time.sleep(60)
        while True:
            pass
        """
    )
    assert result.timed_out
    uid, workdir = result.stdout.split()
    assert_no_processes_left(int(uid))
    assert not Path(workdir).exists()
