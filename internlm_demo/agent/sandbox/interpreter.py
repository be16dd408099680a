"""Run model-written Python code in a throw-away, resource-limited sandbox: the app's side.

Every call starts a new process tree (``bootstrap.py``) and a new, empty working directory;
nothing survives between calls, so each call is stateless. Only the standard library is
importable. ``docs/agent-sandbox.md`` describes the containment and what each isolation level
guarantees.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .isolation import MINIMUM_LEVEL, WEAK, Isolation
from .limits import MemoryCgroup, SandboxLimits

# Interpreter for the sandbox. It may live anywhere the app's user can read: with a mount
# namespace the sandbox binds it back into folders it hides (home, /tmp).
PYTHON_EXECUTABLE = sys.executable

# A root parent runs each sandbox as uid/gid SANDBOX_UID_BASE + pid of its
# bootstrap process: no account and no concurrent sandbox shares that uid, so
# RLIMIT_NPROC counts only this sandbox's processes and sandboxes cannot signal
# or trace each other.
SANDBOX_UID_BASE = 1_800_000_000

KILLED_TIMEOUT = "timeout"
KILLED_OUTPUT_LIMIT = "output_limit"
KILLED_CPU_LIMIT = "cpu_limit"

# The bootstrap imports this package from the folder that holds it (``-I`` ignores PYTHONPATH).
_BOOTSTRAP = ("import sys; sys.path.insert(0, {root!r}); "
              "from internlm_demo.agent.sandbox.bootstrap import main; main()")
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])
_DRAIN_AFTER_KILL_S = 0.5
_UNREPORTED = Isolation(WEAK, "unknown: the sandbox stopped before reporting its isolation")
_PROBED: list[Isolation] = []  # probe_isolation's answer, once there is one


@dataclass(frozen=True)
class ExecutionResult:
    """What one sandboxed run produced and how it ended."""

    stdout: str
    stderr: str
    exit_code: int | None  # None when the code was killed or never ran
    error: str | None  # why the run was stopped or could not start; None otherwise
    timed_out: bool
    killed_reason: str | None  # KILLED_* constant or "signal SIGxxx"
    truncated: bool
    duration_s: float
    isolation: Isolation  # the level and the mechanisms that were in force

    @property
    def ok(self) -> bool:
        """True when the code ran to completion with exit code 0."""
        return self.exit_code == 0 and self.error is None

    def to_observation(self) -> str:
        """Format the result as the observation text shown to the model."""
        parts = [text.rstrip() for text in (self.stdout, self.stderr) if text.strip()]
        if self.error:
            parts.append(f"[sandbox] {self.error}")
        elif self.exit_code and not self.stderr.strip():
            parts.append(f"[sandbox] exit code {self.exit_code}")
        return "\n".join(parts) if parts else "(no output)"


def run_python(
    code: str,
    limits: SandboxLimits | None = None,
    *,
    namespaces: bool = True,
    minimum_level: str = MINIMUM_LEVEL,
) -> ExecutionResult:
    """Run ``code`` in a fresh sandbox and return its result; never raises for hostile code.

    If ``code`` defines ``solution()`` and does not call it, it is called and its
    return value printed; otherwise the code runs as a script and, as in a REPL,
    the value of a final bare expression is printed.  Blocking, bounded by
    ``limits.timeout_s`` and safe to call from several threads.  Where the sandbox
    cannot reach ``minimum_level`` the code is not run and ``error`` says why.
    ``namespaces=False`` forces the weak fallback used where the kernel refuses namespaces.
    """
    limits = limits or SandboxLimits()
    started = time.monotonic()
    try:
        return _run(code, limits, namespaces, minimum_level, started)
    except Exception as exc:  # noqa: BLE001 - the app must get a result, whatever happened
        return ExecutionResult(
            stdout="",
            stderr="",
            exit_code=None,
            error=f"sandbox failure: {exc!r}",
            timed_out=False,
            killed_reason=None,
            truncated=False,
            duration_s=time.monotonic() - started,
            isolation=_UNREPORTED,
        )


def probe_isolation() -> Isolation:
    """The isolation this machine gives the sandbox, found by running an empty program; kept once reported."""
    if not _PROBED:
        isolation = run_python("pass", minimum_level=WEAK).isolation
        if isolation is _UNREPORTED:
            return isolation  # e.g. a loaded machine timed the probe out: ask again next time
        _PROBED.append(isolation)
    return _PROBED[0]


class PythonInterpreter:
    """Agent tool that runs Python code in the sandbox and returns an observation string."""

    name = "PythonInterpreter"

    def __init__(self, limits: SandboxLimits | None = None, minimum_level: str = MINIMUM_LEVEL) -> None:
        self.limits = limits or SandboxLimits()
        self.minimum_level = minimum_level
        self.description = (
            "Runs Python 3 code in an isolated sandbox and returns what it printed. "
            "Either define `def solution():` that returns the answer, or write a script that "
            "prints its results (the value of a final bare expression is shown, as in a REPL). "
            "Only the standard library is available, there is no network access, every call "
            "starts from a clean state, and a call is stopped after "
            f"{self.limits.timeout_s:g} seconds."
        )

    def __call__(self, code: str) -> str:
        return run_python(_strip_code_fence(code), self.limits, minimum_level=self.minimum_level).to_observation()


def _strip_code_fence(code: str) -> str:
    match = re.fullmatch(r"\s*```[\w+-]*\n(.*?)\n?```\s*", code, flags=re.DOTALL)
    return match.group(1) if match else code


# --------------------------------------------------------------------------
# Parent side: runs in the app process.


def _run(code: str, limits: SandboxLimits, namespaces: bool, minimum_level: str, started: float) -> ExecutionResult:
    workdir = tempfile.mkdtemp(prefix="sandbox-")
    status_read, status_write = os.pipe()
    cgroup = None
    try:
        cgroup = MemoryCgroup.create(limits.memory_mb)
        config = {
            "status_fd": status_write,
            "workdir": workdir,
            "namespaces": namespaces,
            "minimum_level": minimum_level,
            "private_dirs": [os.path.expanduser("~")],
            "uid_base": SANDBOX_UID_BASE,
            "limits": dataclasses.asdict(limits),
            "cgroup": cgroup and {"path": cgroup.path, "description": cgroup.describe()},
        }
        proc = subprocess.Popen(
            [PYTHON_EXECUTABLE, "-I", "-S", "-c", _BOOTSTRAP.format(root=_PACKAGE_ROOT), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(status_write,),
            env=_minimal_env(),
            cwd="/",
            start_new_session=True,
        )
        os.close(status_write)
        status_write = -1
        with proc, selectors.DefaultSelector() as selector:
            return _supervise_run(proc, selector, status_read, code, limits, cgroup, started)
    finally:
        if cgroup:
            cgroup.remove()
        for fd in (status_read, status_write):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(workdir, onerror=_make_writable_and_retry)


def _supervise_run(
    proc: subprocess.Popen,
    selector: selectors.BaseSelector,
    status_read: int,
    code: str,
    limits: SandboxLimits,
    cgroup: MemoryCgroup | None,
    started: float,
) -> ExecutionResult:
    try:
        proc.stdin.write(code.encode("utf-8", "surrogatepass"))
        proc.stdin.close()
    except BrokenPipeError:
        pass  # the bootstrap died early; its status report says why
    buffers = {"stdout": bytearray(), "stderr": bytearray(), "status": bytearray()}
    selector.register(proc.stdout, selectors.EVENT_READ, "stdout")
    selector.register(proc.stderr, selectors.EVENT_READ, "stderr")
    selector.register(status_read, selectors.EVENT_READ, "status")
    cap = limits.max_output_bytes

    # The status pipe closes when the supervisor is done; the code's leftover
    # processes may keep stdout open, but they are killed next anyway.
    outcome = _pump(selector, buffers, started + limits.timeout_s, cap, wait_for={"status"})
    killed_reason = {"overflow": KILLED_OUTPUT_LIMIT, "deadline": KILLED_TIMEOUT}.get(outcome)
    # Kill before reaping the bootstrap: while it is unreaped, no other process can
    # get its pid, so neither its process group id nor the sandbox uid can be reused.
    _kill_group(proc.pid)
    if cgroup:
        cgroup.kill_all()
    if os.geteuid() == 0 and not _parse_status(buffers["status"]).get("pid_namespace"):
        # Without a pid namespace, processes that left the process group survive killpg.
        _kill_processes_of_uid(SANDBOX_UID_BASE + proc.pid)
    proc.wait()
    _pump(selector, buffers, time.monotonic() + _DRAIN_AFTER_KILL_S, cap, wait_for=set(buffers))

    status = _parse_status(buffers["status"])
    stdout, stdout_truncated = _decode_capped(buffers["stdout"], cap, "stdout")
    stderr, stderr_truncated = _decode_capped(buffers["stderr"], cap, "stderr")
    if killed_reason is None:
        killed_reason = _signal_reason(status, limits)
    return ExecutionResult(
        stdout=stdout,
        stderr=stderr,
        exit_code=None if killed_reason or "error" in status else status.get("exit_code"),
        error=_describe_error(killed_reason, status, limits, proc.returncode),
        timed_out=killed_reason == KILLED_TIMEOUT,
        killed_reason=killed_reason,
        truncated=stdout_truncated or stderr_truncated,
        duration_s=time.monotonic() - started,
        isolation=Isolation(**status["isolation"]) if "isolation" in status else _UNREPORTED,
    )


def _pump(
    selector: selectors.BaseSelector,
    buffers: dict[str, bytearray],
    until: float,
    cap: int,
    wait_for: set[str],
) -> str:
    """Read the registered pipes into ``buffers`` until the ``wait_for`` ones are closed.

    Returns "closed", "deadline" when ``until`` passed first, or "overflow" when
    stdout or stderr exceeded ``cap``.
    """
    while any(key.data in wait_for for key in selector.get_map().values()):
        remaining = until - time.monotonic()
        if remaining <= 0:
            return "deadline"
        for key, _ in selector.select(remaining):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                selector.unregister(key.fileobj)
                continue
            buffer = buffers[key.data]
            buffer += chunk
            if key.data != "status" and len(buffer) > cap:
                return "overflow"
    return "closed"


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _kill_processes_of_uid(uid: int) -> None:
    # A fork bomb can fork between scan and kill; with RLIMIT_NPROC this converges quickly.
    for _ in range(50):
        victims = [pid for pid, state in _processes_of_uid(uid) if state != "Z"]
        if not victims:
            return
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _processes_of_uid(uid: int) -> list[tuple[int, str]]:
    """(pid, state letter) of every process whose real uid is ``uid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as status_file:
                fields = dict(line.split(":", 1) for line in status_file if ":" in line)
        except OSError:
            continue
        if int(fields["Uid"].split()[0]) == uid:
            found.append((int(entry), fields["State"].split()[0]))
    return found


def _parse_status(raw: bytes) -> dict:
    status: dict = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        try:
            status.update(json.loads(line))
        except ValueError:
            continue
    return status


def _decode_capped(data: bytearray, cap: int, name: str) -> tuple[str, bool]:
    if len(data) <= cap:
        return data.decode("utf-8", "replace"), False
    text = bytes(data[:cap]).decode("utf-8", "replace")
    return f"{text}\n[... {name} truncated: more than {cap} bytes ...]", True


def _signal_reason(status: dict, limits: SandboxLimits) -> str | None:
    signum = status.get("signal")
    if signum is None:
        return None
    # RLIMIT_CPU sends SIGXCPU, then SIGKILL at the hard limit if SIGXCPU was ignored.
    if signum == signal.SIGXCPU or (
        signum == signal.SIGKILL and status.get("cpu_s", 0) >= limits.cpu_limit_s
    ):
        return KILLED_CPU_LIMIT
    return f"signal {signal.Signals(signum).name}"


def _describe_error(
    killed_reason: str | None, status: dict, limits: SandboxLimits, returncode: int
) -> str | None:
    if "error" in status:
        return status["error"]
    if killed_reason == KILLED_TIMEOUT:
        return f"timed out after {limits.timeout_s:g} s; the code was killed"
    if killed_reason == KILLED_OUTPUT_LIMIT:
        return f"output exceeded {limits.max_output_bytes} bytes; the code was killed"
    if killed_reason == KILLED_CPU_LIMIT:
        return f"CPU time limit of {limits.cpu_limit_s} s exceeded; the code was killed"
    if killed_reason:
        return f"the code was killed by {killed_reason}"
    if "exit_code" not in status:
        return f"the sandbox exited without reporting a result (status {returncode})"
    return None


def _minimal_env() -> dict[str, str]:
    # Built from scratch so no secret of the app's environment reaches the code.
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def _make_writable_and_retry(function, path, _exc_info) -> None:
    # Code running as the app's own uid may chmod its directories to 0.
    os.chmod(os.path.dirname(path), stat.S_IRWXU)
    if os.path.isdir(path) and not os.path.islink(path):
        os.chmod(path, stat.S_IRWXU)
    function(path)
