"""Run model-written Python code in a throw-away, resource-limited sandbox.

Every call starts a new process tree and a new, empty working directory; nothing
survives between calls, so each call is stateless.  Only the standard library is
importable.  ``docs/agent-sandbox.md`` describes the containment mechanism
and its limits.

Process tree of one call (Linux only)::

    app thread --Popen--> bootstrap    (this file run as a script, app's uid)
                            |  unshare(): net, pid, ipc, mount (+ user when not root)
                            +-> supervisor   (pid 1 of the new pid namespace)
                                  |  mounts, status reporting, reaps orphans
                                  +-> worker: rlimits, drop to a private uid,
                                      exec a fresh ``python -I -S`` running the code
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import json
import math
import os
import re
import resource
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

# Interpreter for the sandbox.  Without mount namespaces its standard library
# must be readable by an unprivileged user (with them it is exposed on demand).
PYTHON_EXECUTABLE = sys.executable

# A root parent runs each sandbox as uid/gid SANDBOX_UID_BASE + pid of its
# bootstrap process: no account and no concurrent sandbox shares that uid, so
# RLIMIT_NPROC counts only this sandbox's processes and sandboxes cannot signal
# or trace each other.
SANDBOX_UID_BASE = 1_800_000_000

KILLED_TIMEOUT = "timeout"
KILLED_OUTPUT_LIMIT = "output_limit"
KILLED_CPU_LIMIT = "cpu_limit"

_THIS_FILE = os.path.abspath(__file__)
_CODE_FILENAME = "<code>"
_MAX_OPEN_FILES = 256
_DRAIN_AFTER_KILL_S = 0.5

_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000

_MS_RDONLY = 0x1
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
_MS_REMOUNT = 0x20
_MS_NOATIME = 0x400
_MS_NODIRATIME = 0x800
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000
_MS_RELATIME = 0x200000
# A remount inside a user namespace must repeat these flags or the kernel refuses it.
_PRESERVED_MOUNT_FLAGS = (
    (os.ST_NOSUID, _MS_NOSUID),
    (os.ST_NODEV, _MS_NODEV),
    (os.ST_NOEXEC, _MS_NOEXEC),
    (os.ST_NOATIME, _MS_NOATIME),
    (os.ST_NODIRATIME, _MS_NODIRATIME),
    (os.ST_RELATIME, _MS_RELATIME),
)

_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one sandboxed run (cpu, memory and file size apply per process)."""

    timeout_s: float = 10.0
    cpu_s: float | None = None  # None: timeout_s + 1, so the wall clock normally fires first
    memory_mb: int = 512  # address space (RLIMIT_AS)
    file_size_mb: int = 16
    max_processes: int = 16
    max_output_bytes: int = 64 * 1024  # per stream; more output kills the run
    scratch_mb: int = 64  # private tmpfs for the working dir and /tmp (mount namespace only)

    @property
    def cpu_limit_s(self) -> int:
        """CPU seconds per process as an integer, as RLIMIT_CPU needs it."""
        return math.ceil(self.cpu_s if self.cpu_s is not None else self.timeout_s + 1)


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
    isolation: str  # containment that was active, e.g. for logging

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
    code: str, limits: SandboxLimits | None = None, *, namespaces: bool = True
) -> ExecutionResult:
    """Run ``code`` in a fresh sandbox and return its result; never raises for hostile code.

    If ``code`` defines ``solution()`` and does not call it, it is called and its
    return value printed; otherwise the code runs as a script and, as in a REPL,
    the value of a final bare expression is printed.  Blocking, bounded by
    ``limits.timeout_s`` and safe to call from several threads.  ``namespaces=False``
    forces the weaker fallback used where the kernel refuses namespaces.
    """
    limits = limits or SandboxLimits()
    started = time.monotonic()
    try:
        return _run(code, limits, namespaces, started)
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
            isolation="unknown",
        )


class PythonInterpreter:
    """Agent tool that runs Python code in the sandbox and returns an observation string."""

    name = "PythonInterpreter"

    def __init__(self, limits: SandboxLimits | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self.description = (
            "Runs Python 3 code in an isolated sandbox and returns what it printed. "
            "Either define `def solution():` that returns the answer, or write a script that "
            "prints its results (the value of a final bare expression is shown, as in a REPL). "
            "Only the standard library is available, there is no network access, every call "
            "starts from a clean state, and a call is stopped after "
            f"{self.limits.timeout_s:g} seconds."
        )

    def __call__(self, code: str) -> str:
        return run_python(_strip_code_fence(code), self.limits).to_observation()


def _strip_code_fence(code: str) -> str:
    match = re.fullmatch(r"\s*```[\w+-]*\n(.*?)\n?```\s*", code, flags=re.DOTALL)
    return match.group(1) if match else code


# --------------------------------------------------------------------------
# Parent side: runs in the app process.


def _run(code: str, limits: SandboxLimits, namespaces: bool, started: float) -> ExecutionResult:
    workdir = tempfile.mkdtemp(prefix="sandbox-")
    status_read, status_write = os.pipe()
    try:
        config = {
            "status_fd": status_write,
            "workdir": workdir,
            "namespaces": namespaces,
            "private_dirs": [os.path.expanduser("~")],
            "uid_base": SANDBOX_UID_BASE,
            "limits": dataclasses.asdict(limits),
        }
        proc = subprocess.Popen(
            [PYTHON_EXECUTABLE, "-I", "-S", _THIS_FILE, "--bootstrap", json.dumps(config)],
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
            return _supervise_run(proc, selector, status_read, code, limits, started)
    finally:
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
        isolation=status.get("isolation", "unknown (the sandbox stopped before reporting)"),
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


# --------------------------------------------------------------------------
# Sandbox side: runs in the bootstrap, supervisor and worker processes.


def _bootstrap(config: dict) -> None:
    """Entry point of the sandbox process tree; runs before any untrusted code."""
    status_fd = config["status_fd"]
    os.set_inheritable(status_fd, False)  # closed when the worker execs the code
    try:
        code = sys.stdin.buffer.read()
        runner = _runner_source()  # read now: the worker may no longer be able to read this file
        is_root = os.geteuid() == 0
        if is_root:
            uid = gid = config["uid_base"] + os.getpid()
        else:
            uid, gid = os.getuid(), os.getgid()
        namespaces = _enter_namespaces(is_root) if config["namespaces"] else []
        supervisor = os.fork()
        if supervisor == 0:
            _in_child(status_fd, _supervise, config, code, runner, uid, gid, namespaces, is_root)
        os.waitpid(supervisor, 0)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent instead
        _report(status_fd, error=f"sandbox setup failed: {exc}")
    os._exit(0)


def _in_child(status_fd: int, target, *args) -> None:
    """Run ``target`` in a forked child, which must never return into its parent's code."""
    try:
        target(status_fd, *args)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent instead
        _report(status_fd, error=f"sandbox setup failed: {exc}")
    finally:
        os._exit(70)


def _enter_namespaces(is_root: bool) -> list[str]:
    """Move this process into new namespaces; returns their names, or [] if the kernel refuses."""
    flags = _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC | _CLONE_NEWNS
    names = ["net", "pid", "ipc", "mount"]
    uid, gid = os.getuid(), os.getgid()
    if not is_root:
        # Unprivileged users may create these only inside a user namespace they own.
        flags |= _CLONE_NEWUSER
        names.insert(0, "user")
    if _libc().unshare(flags) != 0:
        return []
    if not is_root:
        _write_file("/proc/self/setgroups", "deny")
        _write_file("/proc/self/uid_map", f"{uid} {uid} 1")
        _write_file("/proc/self/gid_map", f"{gid} {gid} 1")
    return names


def _supervise(
    status_fd: int,
    config: dict,
    code: bytes,
    runner: str,
    uid: int,
    gid: int,
    namespaces: list[str],
    is_root: bool,
) -> None:
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    limits = SandboxLimits(**config["limits"])
    if "mount" in namespaces:
        workdir, filesystem = _prepare_filesystem(
            config["workdir"], config["private_dirs"], uid, gid, limits.scratch_mb
        )
    else:
        workdir, filesystem = config["workdir"], "host filesystem, protected by permissions only"
    if is_root:
        os.chown(workdir, uid, gid)
    block_escape = "net" not in namespaces
    _report(
        status_fd,
        isolation=_describe_isolation(uid, namespaces, filesystem, is_root, block_escape),
        pid_namespace="pid" in namespaces,
    )

    code_fd = os.memfd_create("sandbox-code")
    os.write(code_fd, code)
    os.lseek(code_fd, 0, os.SEEK_SET)
    worker = os.fork()
    if worker == 0:
        _in_child(
            status_fd, _exec_worker, runner, code_fd, workdir, uid, gid, limits, is_root, block_escape
        )
    os.close(code_fd)
    # As pid 1 of the namespace this also reaps orphaned grandchildren.
    while True:
        pid, wait_status, usage = os.wait4(-1, 0)
        if pid == worker:
            break
    cpu_s = usage.ru_utime + usage.ru_stime
    if os.WIFSIGNALED(wait_status):
        _report(status_fd, signal=os.WTERMSIG(wait_status), cpu_s=cpu_s)
    else:
        _report(status_fd, exit_code=os.WEXITSTATUS(wait_status), cpu_s=cpu_s)
    # Leaving pid 1 makes the kernel kill whatever the code left running.
    os._exit(0)


def _describe_isolation(
    uid: int, namespaces: list[str], filesystem: str, is_root: bool, block_escape: bool
) -> str:
    user = f"uid {uid} (dropped from root)" if is_root else f"uid {uid} (the app's own user)"
    if block_escape:
        network = "audit hook blocks sockets, subprocesses and ctypes (no network namespace)"
    else:
        network = "none (empty network namespace)"
    return "; ".join(
        [
            f"user: {user}",
            f"namespaces: {', '.join(namespaces) or 'none'}",
            f"network: {network}",
            f"filesystem: {filesystem}",
        ]
    )


def _prepare_filesystem(
    host_workdir: str, private_dirs: list[str], uid: int, gid: int, scratch_mb: int
) -> tuple[str, str]:
    """Inside the new mount namespace: read-only mounts, private scratch space, own /proc."""
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing we mount may propagate to the host
    read_only_root = False
    for mount_point in _mount_points():
        if mount_point == "/proc" or mount_point.startswith("/proc/"):
            continue  # replaced below
        try:
            _remount_read_only(mount_point)
            read_only_root = read_only_root or mount_point == "/"
        except OSError:
            pass  # e.g. a mount a user namespace may not change; permissions still apply
    hidden = _hide_private_dirs(private_dirs, uid, gid)
    _mount("tmpfs", "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV,
           f"size={scratch_mb}m,nr_inodes=8192,mode=1777")
    for shared_dir in ("/var/tmp", "/dev/shm"):
        if os.path.isdir(shared_dir):
            _mount("/tmp", shared_dir, None, _MS_BIND)
    workdir = os.path.join("/tmp", os.path.basename(host_workdir))
    os.mkdir(workdir, 0o700)
    parts = [
        "read-only mounts" if read_only_root else "writable host mounts (remount refused)",
        f"private {scratch_mb} MiB tmpfs for the working dir, /tmp, /var/tmp, /dev/shm",
        f"hidden: {', '.join(hidden) or 'nothing'}",
    ]
    try:
        _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
        parts.append("own /proc")
    except OSError:
        parts.append("host /proc")
    return workdir, ", ".join(parts)


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as mountinfo:
        fields = [line.split()[4] for line in mountinfo]
    return [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field) for field in fields]


def _remount_read_only(path: str) -> None:
    flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY
    current = os.statvfs(path).f_flag
    for statvfs_flag, mount_flag in _PRESERVED_MOUNT_FLAGS:
        if current & statvfs_flag:
            flags |= mount_flag
    _mount(None, path, None, flags)


def _hide_private_dirs(private_dirs: list[str], uid: int, gid: int) -> list[str]:
    """Cover the app user's home and directories the sandbox user cannot traverse with empty,
    read-only tmpfs, binding the interpreter back if it lives inside (e.g. ~/.pyenv)."""
    python_dirs = {
        sys.base_prefix,
        os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))),  # venv with copies
    }
    candidates = {path for path in private_dirs if os.path.isdir(path)}
    candidates |= {_first_untraversable_ancestor(path, uid, gid) for path in python_dirs}
    candidates -= {None, "/"}
    hidden = sorted(
        path for path in candidates
        if not any(other != path and _is_inside(path, other) for other in candidates)
    )
    kept = {path: os.open(path, os.O_PATH) for path in python_dirs
            if any(_is_inside(path, private) for private in hidden)}
    try:
        for path in hidden:
            _mount("tmpfs", path, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
        for path, fd in kept.items():
            os.makedirs(path, mode=0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
        for path in hidden:
            _remount_read_only(path)
    finally:
        for fd in kept.values():
            os.close(fd)
    return hidden


def _is_inside(path: str, directory: str) -> bool:
    return os.path.commonpath([path, directory]) == directory


def _first_untraversable_ancestor(path: str, uid: int, gid: int) -> str | None:
    current = "/"
    for part in path.strip("/").split("/")[:-1]:
        current = os.path.join(current, part)
        info = os.stat(current)
        if info.st_uid == uid:
            permitted = info.st_mode & stat.S_IXUSR
        elif info.st_gid == gid:
            permitted = info.st_mode & stat.S_IXGRP
        else:
            permitted = info.st_mode & stat.S_IXOTH
        if not permitted:
            return current
    return None


def _exec_worker(
    status_fd: int,
    runner: str,
    code_fd: int,
    workdir: str,
    uid: int,
    gid: int,
    limits: SandboxLimits,
    is_root: bool,
    block_escape: bool,
) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    _apply_limits(limits)
    os.chdir(workdir)
    if is_root:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        if os.getuid() == 0 or os.geteuid() == 0:
            raise PermissionError("could not drop root privileges")
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)  # setuid binaries such as su cannot regain privileges
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # set after the uid change, which clears it
    os.umask(0o077)
    python = os.path.realpath(sys.executable)
    stdlib = os.path.dirname(os.__file__)
    if not (os.access(python, os.X_OK) and os.access(stdlib, os.R_OK | os.X_OK)):
        raise PermissionError(
            f"the sandbox user cannot run {python} or read {stdlib}; install Python in a "
            "world-readable location or allow mount namespaces"
        )
    os.set_inheritable(code_fd, True)
    env = dict(os.environ, HOME=workdir, TMPDIR=workdir, PWD=workdir)
    argv = [python, "-I", "-S", "-u", "-X", "utf8", "-c", runner, str(code_fd), str(int(block_escape))]
    os.execve(python, argv, env)


def _apply_limits(limits: SandboxLimits) -> None:
    mib = 1024 * 1024
    for limit, soft, hard in (
        (resource.RLIMIT_CPU, limits.cpu_limit_s, limits.cpu_limit_s + 1),
        (resource.RLIMIT_AS, limits.memory_mb * mib, limits.memory_mb * mib),
        (resource.RLIMIT_FSIZE, limits.file_size_mb * mib, limits.file_size_mb * mib),
        (resource.RLIMIT_NPROC, limits.max_processes, limits.max_processes),
        (resource.RLIMIT_NOFILE, _MAX_OPEN_FILES, _MAX_OPEN_FILES),
        (resource.RLIMIT_CORE, 0, 0),
    ):
        current_hard = resource.getrlimit(limit)[1]
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(limit, (soft, hard))


def _runner_source() -> str:
    import inspect
    import textwrap

    return textwrap.dedent(inspect.getsource(_runner_main)) + "\n_runner_main()\n"


def _runner_main() -> None:
    # Shipped as source to ``python -c`` and run as the unprivileged user in a fresh
    # interpreter, so it must be self-contained and cannot import this module.
    import ast
    import builtins
    import linecache
    import sys
    import traceback
    import types

    code_fd, block_escape = int(sys.argv[1]), sys.argv[2] == "1"
    with open(code_fd, "rb") as code_file:
        source = code_file.read().decode("utf-8", "replace")

    if block_escape:
        # Fallback without a network namespace.  Audit hooks cannot be removed from
        # Python code; ctypes and raw fork_exec could bypass them, so they are blocked too.
        blocked_events = {
            "socket.__new__", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
            "subprocess.Popen", "ctypes.dlopen",
        }
        blocked_imports = {"ctypes", "_ctypes", "_posixsubprocess"}

        def audit(event, args):
            if event == "import" and args[0] in blocked_imports:
                raise PermissionError(f"importing {args[0]} is blocked in this sandbox")
            if event in blocked_events:
                raise PermissionError(f"{event} is blocked in this sandbox")

        sys.addaudithook(audit)

    filename = "<code>"
    sys.argv = [filename]
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    try:
        tree = ast.parse(source, filename)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        top_level = [stmt for stmt in tree.body + [last] if stmt is not None
                     and not (isinstance(stmt, ast.FunctionDef) and stmt.name == "solution")]
        calls_solution = any(
            isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "solution"
            for stmt in top_level for node in ast.walk(stmt)
        )
        exec(compile(tree, filename, "exec"), main.__dict__)  # noqa: S102 - the purpose of the sandbox
        if last is not None:
            value = eval(compile(ast.Expression(last.value), filename, "eval"), main.__dict__)
            if value is not None:
                print(repr(value))
        solution = main.__dict__.get("solution")
        if callable(solution) and not calls_solution:
            answer = solution()
            if answer is not None:
                print(answer)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - reported like an uncaught exception
        frames = exc.__traceback__
        while frames is not None and frames.tb_frame.f_code.co_filename != filename:
            frames = frames.tb_next  # hide the runner's own frames
        traceback.print_exception(type(exc), exc, frames)
        sys.exit(1)


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                           ctypes.c_ulong, ctypes.c_char_p]
    libc.unshare.argtypes = [ctypes.c_int]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong,
                           ctypes.c_ulong, ctypes.c_ulong]
    return libc


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    def encode(text):
        return text.encode() if text is not None else None

    if _libc().mount(encode(source), encode(target), encode(fstype), flags, encode(data)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {target}: {os.strerror(errno)}")


def _prctl(option: int, value: int) -> None:
    if _libc().prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}): {os.strerror(errno)}")


def _write_file(path: str, text: str) -> None:
    with open(path, "w") as file:
        file.write(text)


def _report(status_fd: int, **message) -> None:
    os.write(status_fd, (json.dumps(message) + "\n").encode())


if __name__ == "__main__" and sys.argv[1:2] == ["--bootstrap"]:
    _bootstrap(json.loads(sys.argv[2]))
