"""Hostile tests for the agent's Python sandbox.

Every case starts real sandboxed processes and checks containment from the
host side (files, processes, sockets), not only the sandbox's own report.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from internlm_demo.agent import sandbox
from internlm_demo.agent.sandbox import (
    KILLED_CPU_LIMIT,
    KILLED_OUTPUT_LIMIT,
    KILLED_TIMEOUT,
    ExecutionResult,
    PythonInterpreter,
    SandboxLimits,
    run_python,
)

IS_ROOT = os.geteuid() == 0
TIMEOUT_S = 2.0


def run(code: str, *, namespaces: bool = True, **limits) -> ExecutionResult:
    limits.setdefault("timeout_s", TIMEOUT_S)
    return run_python(textwrap.dedent(code), SandboxLimits(**limits), namespaces=namespaces)


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
    if sandbox_uid == os.getuid():
        return  # not root: the code ran as our own uid, so the uid proves nothing
    assert wait_until(lambda: not host_pids_with_uid(sandbox_uid)), host_pids_with_uid(sandbox_uid)


@pytest.fixture
def project_tmp():
    """A directory outside /tmp, so a private /tmp in the sandbox cannot hide it."""
    path = Path(tempfile.mkdtemp(prefix=".sandbox-probe-", dir=Path(__file__).parent))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def listening_server():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.5)
    yield server
    server.close()


def assert_server_saw_no_connection(server: socket.socket) -> None:
    with pytest.raises(socket.timeout):
        connection, _ = server.accept()
        connection.close()


@pytest.fixture(scope="module")
def fallback_interpreter() -> str:
    """An interpreter the fallback mode can run, which needs no namespaces at all."""
    probe = run("print('ok')", namespaces=False)
    if probe.ok:
        return sandbox.PYTHON_EXECUTABLE
    if probe.error and "cannot run" in probe.error and Path("/usr/bin/python3").exists():
        # Here the default interpreter lives under /root, which the sandbox user cannot
        # read without the mount namespace; the system interpreter is world-readable.
        return "/usr/bin/python3"
    pytest.skip(f"fallback mode cannot run here: {probe.error}")


@pytest.fixture
def run_fallback(monkeypatch, fallback_interpreter):
    """Run code without namespaces, i.e. in the audit-hook fallback mode."""
    monkeypatch.setattr(sandbox, "PYTHON_EXECUTABLE", fallback_interpreter)

    def run_without_namespaces(code: str, **limits) -> ExecutionResult:
        return run(code, namespaces=False, **limits)

    return run_without_namespaces


# --------------------------------------------------------------------------
# Normal code keeps working.


def test_print_and_stdlib_imports():
    result = run(
        """
        import json, math, statistics
        print(math.factorial(20), json.dumps({"a": 1}), statistics.mean([1, 2, 3]))
        """
    )
    assert result.ok, result
    assert result.stdout == '2432902008176640000 {"a": 1} 2\n'
    assert result.duration_s < TIMEOUT_S
    assert result.to_observation() == '2432902008176640000 {"a": 1} 2'


def test_solution_function_is_called_and_its_value_printed():
    result = run(
        """
        def solution():
            import math
            return math.gcd(84, 36)
        """
    )
    assert result.ok, result
    assert result.stdout.strip() == "12"


def test_solution_called_by_the_code_itself_runs_once():
    result = run(
        """
        def solution():
            print("computing")
            return 42

        print(solution())
        """
    )
    assert result.stdout.splitlines() == ["computing", "42"]


def test_final_expression_is_echoed_like_a_repl():
    result = run("values = [3, 1, 2]\nsorted(values)")
    assert result.stdout == "[1, 2, 3]\n"


def test_exception_comes_back_as_a_traceback_of_the_user_code():
    result = run(
        """
        def divide(a, b):
            return a / b

        divide(1, 0)
        """
    )
    assert result.exit_code == 1
    assert result.error is None and not result.timed_out
    observation = result.to_observation()
    assert observation.startswith("Traceback (most recent call last):")
    assert 'File "<code>", line 3, in divide' in observation
    assert "return a / b" in observation
    assert observation.rstrip().endswith("ZeroDivisionError: division by zero")
    assert "sandbox.py" not in observation and "_runner_main" not in observation


def test_syntax_error_is_reported():
    result = run("print('unclosed'")
    assert result.exit_code == 1
    assert "SyntaxError" in result.to_observation()


def test_exit_code_is_reported():
    result = run("import sys\nsys.exit(3)")
    assert result.exit_code == 3 and result.error is None
    assert result.to_observation() == "[sandbox] exit code 3"


def test_stdin_is_empty():
    result = run("input()")
    assert "EOFError" in result.stderr


def test_interpreter_tool_returns_an_observation():
    tool = PythonInterpreter(SandboxLimits(timeout_s=TIMEOUT_S))
    assert tool.name == "PythonInterpreter"
    assert "sandbox" in tool.description and "solution()" in tool.description
    assert tool("```python\ndef solution():\n    return 'forty-two'\n```") == "forty-two"
    assert tool("pass") == "(no output)"


def test_calls_from_several_threads_are_independent():
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda n: run(f"import os\nprint({n}, os.getuid())"), range(4)))
    assert all(result.ok for result in results), results
    assert [int(result.stdout.split()[0]) for result in results] == [0, 1, 2, 3]
    if IS_ROOT:
        uids = {result.stdout.split()[1] for result in results}
        assert len(uids) == 4, "each concurrent sandbox gets its own uid"


def test_no_state_is_kept_between_calls():
    first = run("import os\nopen('note.txt', 'w').write('x')\nprint(os.getcwd())")
    second = run("import os\nprint(os.getcwd(), os.listdir('.'))")
    assert first.ok and second.ok
    assert first.stdout != second.stdout.split()[0]
    assert second.stdout.split(maxsplit=1)[1].strip() == "[]"


# --------------------------------------------------------------------------
# Privileges and isolation report.


def test_isolation_mechanism_is_reported():
    result = run("pass")
    assert result.isolation.startswith("user: uid ")
    assert "network: " in result.isolation
    if IS_ROOT:
        assert "(dropped from root)" in result.isolation


@pytest.mark.skipif(not IS_ROOT, reason="dropping privileges only applies to a root parent")
def test_code_runs_without_root_privileges():
    result = run(
        """
        import os
        print(os.getuid(), os.geteuid(), os.getgid(), os.getgroups())
        try:
            os.setuid(0)
            print("BECAME ROOT")
        except PermissionError:
            print("setuid refused")
        """
    )
    uid, euid, gid, groups = result.stdout.split(maxsplit=3)
    assert uid == euid == gid and int(uid) >= sandbox.SANDBOX_UID_BASE
    assert groups.startswith("[]")
    assert "setuid refused" in result.stdout and "BECAME ROOT" not in result.stdout


# --------------------------------------------------------------------------
# Time limits.


def test_infinite_python_loop_is_killed_near_the_timeout():
    result = run("while True:\n    pass")
    assert result.timed_out and result.killed_reason == KILLED_TIMEOUT
    assert result.exit_code is None
    assert TIMEOUT_S <= result.duration_s < TIMEOUT_S + 1.0
    assert "timed out after 2 s" in result.to_observation()


def test_c_level_loop_is_killed_by_the_wall_clock():
    # One C call that never returns to the interpreter: only killing the process helps.
    result = run("print('start', flush=True)\nsum(range(4 * 10**9))")
    assert result.timed_out and result.killed_reason == KILLED_TIMEOUT
    assert TIMEOUT_S <= result.duration_s < TIMEOUT_S + 1.0
    assert result.stdout == "start\n", "output written before the kill is kept"


def test_cpu_time_limit_stops_a_busy_loop_before_the_wall_clock():
    result = run("while True:\n    pass", cpu_s=1, timeout_s=10)
    assert result.killed_reason == KILLED_CPU_LIMIT and not result.timed_out
    assert "CPU time limit" in result.to_observation()


# --------------------------------------------------------------------------
# Processes.


def test_process_limit_is_enforced():
    result = run(
        """
        import os, time
        children = 0
        try:
            for _ in range(50):
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                children += 1
        except OSError as exc:
            print("fork refused:", exc.errno)
        print("children:", children)
        """,
        max_processes=5,
    )
    assert "fork refused: 11" in result.stdout  # EAGAIN from RLIMIT_NPROC
    children = int(result.stdout.split("children:")[1])
    assert children <= 4, "the worker itself counts as one of the 5 processes"


def test_fork_bomb_is_bounded_and_cleaned_up():
    result = run(
        """
        import os
        print(os.getuid(), flush=True)
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """,
        max_processes=8,
    )
    assert result.timed_out
    assert_no_processes_left(int(result.stdout.split()[0]))
    subprocess.run(["true"], check=True, timeout=5)  # the host can still fork
    assert run("print('alive')").stdout == "alive\n"


def test_background_processes_die_with_the_sandbox():
    marker = f"sandbox-marker-{uuid.uuid4().hex}"
    result = run(
        f"""
        import os, subprocess
        subprocess.Popen(["sh", "-c", "sleep 60; echo {marker}"], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.fork() or os.setsid()
        print(os.getuid(), flush=True)
        """
    )
    assert result.ok and not result.timed_out, result
    assert wait_until(lambda: not host_pids_with_cmdline(marker)), host_pids_with_cmdline(marker)
    assert_no_processes_left(int(result.stdout.split()[0]))


def test_shell_is_contained():
    result = run(
        """
        import os, subprocess
        shell = subprocess.run(["sh", "-c", "echo hi from sh; id -u"], capture_output=True, text=True)
        print(shell.stdout, end="")
        print("os.system:", os.system("echo hi from os.system"))
        """
    )
    assert result.ok, result
    lines = result.stdout.splitlines()
    assert lines[0] == "hi from sh"
    assert lines[1] != "0", "the shell must not run as root"
    assert "hi from os.system" in result.stdout


def test_code_cannot_signal_host_processes():
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        result = run(
            f"""
            import os, signal, time
            for target in ({bystander.pid}, os.getppid(), 1):
                try:
                    os.kill(target, signal.SIGKILL)
                    print(target, "signalled")
                except OSError as exc:
                    print(target, type(exc).__name__)
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            os.kill(-1, signal.SIGKILL)  # every process this user may signal, except itself
            print("kill(-1) sent")
            """
        )
        assert result.ok, result
        assert f"{bystander.pid} signalled" not in result.stdout
        assert "kill(-1) sent" in result.stdout
        assert bystander.poll() is None, "the host process must survive"
    finally:
        bystander.kill()
        bystander.wait()


# --------------------------------------------------------------------------
# Memory.


def test_memory_bomb_hits_the_memory_limit():
    result = run(
        """
        import resource
        chunks = []
        try:
            while True:
                chunks.append(bytearray(16 * 1024 * 1024))
        except MemoryError:
            allocated = len(chunks) * 16
            chunks.clear()
            peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
            print("MemoryError after", allocated, "MiB; peak", peak_mib, "MiB")
        """,
        memory_mb=256,
    )
    assert result.ok, result
    words = result.stdout.split()
    assert words[0] == "MemoryError"
    assert int(words[2]) < 256 and int(words[5]) < 256
    assert run("print('alive')").stdout == "alive\n"


def test_single_huge_allocation_fails_cleanly():
    result = run("x = bytearray(8 * 1024**3)", memory_mb=256)
    assert result.exit_code == 1 and "MemoryError" in result.stderr
    assert result.duration_s < TIMEOUT_S


# --------------------------------------------------------------------------
# Output.


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_output_flood_is_truncated_and_killed(stream):
    result = run(f"import sys\nwhile True:\n    sys.{stream}.write('x' * 1000 + '\\n')",
                 max_output_bytes=4096)
    assert result.truncated and result.killed_reason == KILLED_OUTPUT_LIMIT
    flooded = getattr(result, stream)
    assert flooded.startswith("x" * 1000)
    assert 4096 < len(flooded) < 4096 + 100 and "truncated" in flooded
    assert result.duration_s < TIMEOUT_S, "killed for flooding, not at the timeout"
    assert "output exceeded 4096 bytes" in result.to_observation()


def test_single_huge_write_is_truncated():
    result = run("print('y' * 10**7)", max_output_bytes=4096)
    assert result.truncated
    assert len(result.stdout) < 4096 + 100


# --------------------------------------------------------------------------
# Files.


def test_cannot_write_outside_the_working_directory(tmp_path, project_tmp):
    locked_dir = tmp_path / "locked"
    locked_dir.mkdir()
    locked_dir.chmod(0o555)
    open_dir = project_tmp / "world-writable"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    name = f"escape-{uuid.uuid4().hex}"
    targets = [Path("/etc") / name, locked_dir / name, project_tmp / name, open_dir / name]
    result = run(
        f"""
        for path in {[str(target) for target in targets]!r}:
            try:
                with open(path, "w") as file:
                    file.write("escaped")
                print("WROTE", path)
            except OSError as exc:
                print("blocked", type(exc).__name__, path)
        """
    )
    assert result.ok, result
    blocked = result.stdout.splitlines()
    protected = targets if "read-only mounts" in result.isolation else targets[:3]
    for target in protected:
        assert not target.exists(), target
        assert any(line.startswith("blocked") and line.endswith(str(target)) for line in blocked)


def test_file_size_limit():
    result = run(
        """
        with open("big.bin", "wb") as file:
            file.write(b"0" * (2 * 1024 * 1024))
        """,
        file_size_mb=1,
    )
    assert result.exit_code == 1 and "File too large" in result.stderr


def test_working_directory_is_fresh_and_removed_afterwards():
    result = run(
        """
        import os
        print(os.getcwd())
        print(os.listdir("."))
        with open("scratch.txt", "w") as file:
            file.write("data")
        print(os.environ["HOME"] == os.getcwd())
        """
    )
    workdir, listing, home_is_workdir = result.stdout.splitlines()
    assert listing == "[]" and home_is_workdir == "True"
    assert Path(workdir).name.startswith("sandbox-")
    assert not Path(workdir).exists()


def test_private_scratch_space_does_not_leak_to_the_host():
    name = f"sandbox-leak-{uuid.uuid4().hex}"
    result = run(f"open('/tmp/{name}', 'w').write('x')\nopen('/dev/shm/{name}', 'w').write('x')")
    if "private" not in result.isolation:
        pytest.skip("no mount namespace: /tmp is the host's (see docs/agent-sandbox.md)")
    assert result.ok, result
    assert not Path("/tmp", name).exists() and not Path("/dev/shm", name).exists()


# --------------------------------------------------------------------------
# Secrets.


@pytest.mark.skipif(not IS_ROOT, reason="without root the code runs as the app's own user")
def test_secret_files_are_unreadable(tmp_path, project_tmp, monkeypatch):
    secret = f"secret-{uuid.uuid4().hex}"
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    secret_files = [home / ".ssh" / "id_rsa", project_tmp / "id_rsa"]
    for path in secret_files:
        path.write_text(secret)
        path.chmod(0o600)
    result = run(
        f"""
        import os
        for path in {[str(path) for path in secret_files]!r} + [os.path.expanduser("~/.ssh/id_rsa")]:
            try:
                print("READ", open(path).read())
            except OSError as exc:
                print("blocked", type(exc).__name__)
        """
    )
    assert result.ok, result
    assert secret not in result.stdout + result.stderr
    assert result.stdout.count("blocked") == 3


def test_environment_secrets_are_not_inherited(monkeypatch):
    token = f"token-{uuid.uuid4().hex}"
    monkeypatch.setenv("SECRET_TOKEN", token)
    result = run(
        f"""
        import json, os
        print(json.dumps(dict(os.environ)))
        leaks = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            for name in ("environ", "cmdline"):
                try:
                    with open(f"/proc/{{pid}}/{{name}}", "rb") as file:
                        if {token!r}.encode() in file.read():
                            leaks.append((pid, name))
                except OSError:
                    pass
        print("leaks:", leaks)
        """
    )
    assert result.ok, result
    environment_line, leaks_line = result.stdout.splitlines()
    environment = json.loads(environment_line)
    assert "SECRET_TOKEN" not in environment
    assert set(environment) <= {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "PWD"}
    assert leaks_line == "leaks: []"


# --------------------------------------------------------------------------
# Network.


def test_cannot_connect_to_localhost(listening_server):
    port = listening_server.getsockname()[1]
    result = run(
        f"""
        import socket
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=1)
            print("CONNECTED")
        except OSError as exc:
            print("refused", type(exc).__name__, exc.errno)
        """
    )
    assert result.ok, result
    assert result.stdout.startswith("refused") and "CONNECTED" not in result.stdout
    assert_server_saw_no_connection(listening_server)


def test_outside_address_fails_fast_and_never_leaves():
    # 192.0.2.1 is TEST-NET-1 (RFC 5737) and is only ever the target inside the sandbox.
    result = run(
        """
        import socket, time
        started = time.monotonic()
        try:
            socket.create_connection(("192.0.2.1", 80), timeout=1.5)
            print("CONNECTED")
        except OSError as exc:
            print("failed", type(exc).__name__, exc.errno, round(time.monotonic() - started, 3))
        try:
            socket.getaddrinfo("example.com", 80)
            print("RESOLVED")
        except OSError as exc:
            print("dns failed", type(exc).__name__)
        try:
            print("interfaces:", [name for _, name in socket.if_nameindex()])
        except OSError as exc:
            print("interfaces:", type(exc).__name__)
        """
    )
    assert result.ok, result
    connect_line, dns_line, interfaces_line = result.stdout.splitlines()
    assert connect_line.startswith("failed")
    assert float(connect_line.split()[-1]) < 0.5, "must fail at once, not by timing out"
    assert dns_line.startswith("dns failed")
    if "empty network namespace" in result.isolation:
        assert interfaces_line == "interfaces: ['lo']"
        assert int(connect_line.split()[2]) == 101  # ENETUNREACH: there is no route at all


# --------------------------------------------------------------------------
# Fallback without namespaces (what runs where the kernel refuses them).


def test_fallback_reports_the_audit_hook(run_fallback):
    result = run_fallback("pass")
    assert "namespaces: none" in result.isolation
    assert "audit hook" in result.isolation


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
    if IS_ROOT:
        assert int(uid) >= sandbox.SANDBOX_UID_BASE
    assert_no_processes_left(int(uid))
    assert not Path(workdir).exists()
