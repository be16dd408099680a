"""Hostile tests for the agent's Python sandbox at its strict level (a root app with namespaces).

Every case starts real sandboxed processes and checks containment from the
host side (files, processes, sockets), not only the sandbox's own report.
Every test here needs the strict level and fails, saying why, on a machine that
cannot provide it; the weak fallback has its own tests (test_sandbox_fallback.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from internlm_demo.agent.sandbox import (
    KILLED_CPU_LIMIT,
    KILLED_OUTPUT_LIMIT,
    KILLED_TIMEOUT,
    STRICT,
    PythonInterpreter,
    SandboxLimits,
    interpreter,
)
from tests.conftest import REPO
from tests.sandbox_helpers import (
    TIMEOUT_S,
    assert_no_processes_left,
    assert_server_saw_no_connection,
    host_pids_with_cmdline,
    run,
    wait_until,
)

pytestmark = pytest.mark.sandbox_strict


@pytest.fixture
def project_tmp():
    """A directory outside /tmp, so a private /tmp in the sandbox cannot hide it."""
    path = Path(tempfile.mkdtemp(prefix=".sandbox-probe-", dir=Path(__file__).parent))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


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
    assert "internlm_demo" not in observation and "_runner_main" not in observation


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


def test_isolation_level_and_mechanisms_are_reported():
    result = run("pass")
    assert result.ok and result.isolation.level == STRICT
    details = result.isolation.details
    assert details.startswith("user: uid ") and "(dropped from root)" in details
    for mechanism in ("namespaces: net, pid, ipc, mount", "network: none", "read-only mounts", "own read-only /proc",
                      "syscall filter: seccomp", "oom_score_adj: 1000"):
        assert mechanism in details


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
    assert uid == euid == gid and int(uid) >= interpreter.SANDBOX_UID_BASE
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
    for target in targets:
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
    assert result.ok, result
    assert not Path("/tmp", name).exists() and not Path("/dev/shm", name).exists()


# --------------------------------------------------------------------------
# Secrets.


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
        with open("/proc/net/dev") as interfaces:  # of the code's own network namespace
            print("interfaces:", [line.split(":")[0].strip() for line in interfaces.readlines()[2:]])
        """
    )
    assert result.ok, result
    connect_line, dns_line, interfaces_line = result.stdout.splitlines()
    assert connect_line.startswith("failed")
    assert float(connect_line.split()[-1]) < 0.5, "must fail at once, not by timing out"
    assert dns_line.startswith("dns failed")
    assert interfaces_line == "interfaces: ['lo']"
    assert int(connect_line.split()[2]) == 101  # ENETUNREACH: there is no route at all


# --------------------------------------------------------------------------
# Memory outside the address space, the OOM killer, kernel interfaces.


def test_shared_memory_cannot_bypass_the_memory_limit():
    # SysV shm and memfd pages are in no process's address space: RLIMIT_AS cannot see them.
    result = run(
        """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        libc.shmat.restype = ctypes.c_void_p
        held, errors = {"shm": 0, "memfd": 0}, {}
        for _ in range(8):
            segment = libc.shmget(0, 32 << 20, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
            if segment < 0:
                errors["shm"] = ctypes.get_errno()
                break
            address = libc.shmat(segment, None, 0)
            ctypes.memset(address, 1, 32 << 20)
            libc.shmdt(ctypes.c_void_p(address))
            held["shm"] += 32
        files = []
        for _ in range(16):
            try:
                files.append(os.memfd_create("fill"))
            except OSError as exc:
                errors["memfd"] = exc.errno
                break
            os.write(files[-1], bytes(8 << 20))
            held["memfd"] += 8
        print(held, errors)
        """,
        memory_mb=128,
    )
    assert result.ok, result
    assert result.stdout == "{'shm': 0, 'memfd': 0} {'shm': 1, 'memfd': 1}\n"  # EPERM from the filter


def test_the_sandbox_as_a_whole_is_held_to_its_memory_limit():
    # Each child fits RLIMIT_AS on its own; three of them do not fit the sandbox's 200 MiB.
    result = run(
        """
        import os, time
        children = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                data = b"x" * (150 << 20)
                time.sleep(0.5)
                os._exit(0)
            children.append(pid)
        print([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children])
        """,
        memory_mb=200,
        timeout_s=10,  # ends long before; the margin is for a loaded machine
    )
    assert result.ok, result
    assert "memory: cgroup" in result.isolation.details, (
        "this test needs a memory cgroup the app may create (root with a writable cgroup v1 memory hierarchy, or "
        f"cgroup v2 delegation; docs/agent-sandbox.md): {result.isolation.details}")
    statuses = json.loads(result.stdout)
    assert statuses.count(0) <= 1 and statuses.count(-9) >= 2, statuses  # the OOM killer's SIGKILL


def test_code_cannot_make_itself_unkillable():
    # Lowering oom_score_adj to -1000 would make the OOM killer spare the code and pick the app.
    result = run(
        """
        import os
        def write(value):
            try:
                fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
            except OSError as exc:
                return exc.errno
            try:
                os.write(fd, value)
                return "written"
            except OSError as exc:
                return exc.errno
            finally:
                os.close(fd)
        def read():
            return open("/proc/self/oom_score_adj").read().strip()
        print(read(), write(b"-1000"), write(b"0"), read())
        if os.fork() == 0:
            print("child", read(), write(b"-1000"), read(), flush=True)
            os._exit(0)
        _ = os.wait()
        """
    )
    assert result.ok, result
    assert result.stdout == "1000 30 30 1000\nchild 1000 30 1000\n"  # EROFS: the sandbox's /proc is read-only


def test_only_unix_and_ip_sockets_can_be_created():
    result = run(
        """
        import socket
        families = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16, "AF_PACKET": 17,
                    "AF_CAN": 29, "AF_TIPC": 30, "AF_ALG": 38, "AF_VSOCK": 40, "AF_XDP": 44}
        for name, family in families.items():
            try:
                socket.socket(family, socket.SOCK_DGRAM if name != "AF_ALG" else socket.SOCK_SEQPACKET).close()
                print(name, "created")
            except OSError as exc:
                print(name, exc.errno)
        try:
            socket.socketpair(40, socket.SOCK_STREAM)
        except OSError as exc:
            print("socketpair AF_VSOCK", exc.errno)
        """
    )
    assert result.ok, result
    assert result.stdout.splitlines() == [
        "AF_UNIX created", "AF_INET created", "AF_INET6 created", "AF_NETLINK 1", "AF_PACKET 1", "AF_CAN 1",
        "AF_TIPC 1", "AF_ALG 1", "AF_VSOCK 1", "AF_XDP 1", "socketpair AF_VSOCK 1",
    ]


def test_kernel_interfaces_that_would_bypass_the_filter_are_refused():
    result = run(
        """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        params = ctypes.create_string_buffer(120)
        calls = {
            "io_uring_setup": lambda: libc.syscall(425, 4, params),  # IORING_OP_SOCKET skips socket()
            "unshare user+net": lambda: libc.unshare(0x10000000 | 0x40000000),
            "msgget": lambda: libc.msgget(0, 0o1600),
            "semget": lambda: libc.semget(0, 1, 0o1600),
        }
        for name, call in calls.items():
            print(name, call(), ctypes.get_errno())
        """
    )
    assert result.ok, result
    assert result.stdout.splitlines() == [
        "io_uring_setup -1 1", "unshare user+net -1 1", "msgget -1 1", "semget -1 1",
    ]


# --------------------------------------------------------------------------
# Where the interpreter lives.


def make_venv(folder: Path, *options: str) -> Path:
    """A virtual environment made by ``python -m venv`` (as scripts/install.sh makes .venv); its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", *options, str(folder)], check=True, timeout=120)
    return folder / "bin" / "python"


def test_a_clone_under_tmp_runs_code():
    # The sandbox's private /tmp used to hide a project (and its .venv) cloned under /tmp.
    with tempfile.TemporaryDirectory(dir="/tmp") as clone:
        clone = Path(clone)
        shutil.copytree(REPO / "internlm_demo", clone / "internlm_demo", ignore=shutil.ignore_patterns("__pycache__"))
        python = make_venv(clone / ".venv")
        app = ("from internlm_demo.agent.sandbox import run_python\n"
               "result = run_python('import os; print(6 * 7, os.path.exists(\"/tmp/x\"))')\n"
               "print(result.stdout.strip(), result.error, result.isolation.level)")
        environment = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
        completed = subprocess.run([str(python), "-c", app], cwd=clone, env=environment, capture_output=True,
                                   text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "42 False None strict\n"


def test_python_in_a_private_folder_runs_or_the_error_names_the_fix(monkeypatch):
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        private = Path(folder) / "private"  # closed to others, like a home folder
        python = make_venv(private / "venv", "--copies")  # the binary itself lives there
        private.chmod(0o700)
        monkeypatch.setattr(interpreter, "PYTHON_EXECUTABLE", str(python))
        exposed = run("import sys; print(sys.version_info[0])")
        (private / "venv").chmod(0o700)  # now the interpreter's own folder is closed too
        refused = run("print('RAN')")
    assert exposed.ok and exposed.stdout == "3\n", exposed
    assert "interpreter bound back read-only: " in exposed.isolation.details
    assert str(private / "venv") in exposed.isolation.details
    assert refused.stdout == "" and refused.exit_code is None
    assert refused.error.startswith("the sandbox user (uid 18")
    assert f") cannot run {python}: {private / 'venv'} is closed to it" in refused.error
    assert f"chmod o+rX {private / 'venv'}" in refused.error
