"""Resource limits of one sandboxed run: rlimits per process and, where the host lets the app make
one, a memory cgroup that holds the whole process tree (tmpfs files included) to ``memory_mb``."""

from __future__ import annotations

import math
import os
import resource
import signal
import time
import uuid
from dataclasses import dataclass

from .kernel import mounts

_MAX_OPEN_FILES = 256
_MIB = 1024 * 1024


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one sandboxed run (cpu and file size apply per process)."""

    timeout_s: float = 10.0
    cpu_s: float | None = None  # None: timeout_s + 1, so the wall clock normally fires first
    memory_mb: int = 512  # address space per process (RLIMIT_AS); with a memory cgroup, the whole sandbox too
    file_size_mb: int = 16
    max_processes: int = 16
    max_output_bytes: int = 64 * 1024  # per stream; more output kills the run
    scratch_mb: int = 64  # private tmpfs for the working dir and /tmp (mount namespace only)

    @property
    def cpu_limit_s(self) -> int:
        """CPU seconds per process as an integer, as RLIMIT_CPU needs it."""
        return math.ceil(self.cpu_s if self.cpu_s is not None else self.timeout_s + 1)


def apply_rlimits(limits: SandboxLimits) -> None:
    """Set this process's rlimits (inherited by the code), never above a hard limit already in force."""
    for limit, soft, hard in (
        (resource.RLIMIT_CPU, limits.cpu_limit_s, limits.cpu_limit_s + 1),
        (resource.RLIMIT_AS, limits.memory_mb * _MIB, limits.memory_mb * _MIB),
        (resource.RLIMIT_FSIZE, limits.file_size_mb * _MIB, limits.file_size_mb * _MIB),
        (resource.RLIMIT_NPROC, limits.max_processes, limits.max_processes),
        (resource.RLIMIT_NOFILE, _MAX_OPEN_FILES, _MAX_OPEN_FILES),
        (resource.RLIMIT_CORE, 0, 0),
    ):
        current_hard = resource.getrlimit(limit)[1]
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(limit, (soft, hard))


@dataclass(frozen=True)
class MemoryCgroup:
    """A memory cgroup for one run, made below the app's own cgroup; the bootstrap joins it first thing."""

    path: str
    version: int
    limit_mb: int

    @classmethod
    def create(cls, limit_mb: int) -> MemoryCgroup | None:
        """A new cgroup limited to ``limit_mb`` (no swap), or None where the app may not make one.

        cgroup v2 needs the app's cgroup to hand the memory controller to its children (true of
        the root cgroup); cgroup v1 needs a writable memory hierarchy, as a root app usually has.
        """
        for version, parent in _memory_cgroup_parents():
            path = os.path.join(parent, f"internlm-sandbox-{uuid.uuid4().hex[:12]}")
            try:
                os.mkdir(path, 0o755)
            except OSError:
                continue
            try:
                files = (("memory.max", "memory.swap.max") if version == 2
                         else ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"))
                _write(os.path.join(path, files[0]), str(limit_mb * _MIB))
                if os.path.exists(os.path.join(path, files[1])):
                    _write(os.path.join(path, files[1]), "0" if version == 2 else str(limit_mb * _MIB))
            except OSError:
                os.rmdir(path)
                continue
            return cls(path, version, limit_mb)
        return None

    def describe(self) -> str:
        return f"cgroup v{self.version} limit of {self.limit_mb} MiB for the whole sandbox, tmpfs included"

    def kill_all(self) -> None:
        """SIGKILL every process in the cgroup, including ones that left the process group."""
        for _ in range(50):  # a fork bomb can fork between read and kill; RLIMIT_NPROC makes this converge
            pids = self._pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.002)

    def remove(self) -> None:
        """Remove the cgroup once its processes are gone (they exit asynchronously after SIGKILL)."""
        deadline = time.monotonic() + 2.0
        while True:
            try:
                os.rmdir(self.path)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                self.kill_all()
                time.sleep(0.01)

    def _pids(self) -> list[int]:
        with open(os.path.join(self.path, "cgroup.procs")) as procs:
            return [int(line) for line in procs if line.strip()]


def join_cgroup(path: str) -> None:
    """Move this process (and so everything it starts) into the cgroup at ``path``."""
    _write(os.path.join(path, "cgroup.procs"), str(os.getpid()))


def _memory_cgroup_parents() -> list[tuple[int, str]]:
    """(version, directory of this process's cgroup) for each hierarchy that can limit memory, v2 first."""
    with open("/proc/self/cgroup") as own:
        memberships = [line.rstrip("\n").split(":", 2) for line in own]
    found = []
    for mount in mounts():
        root = mount.root.rstrip("/")
        for _, controllers, cgroup in memberships:
            if mount.fstype == "cgroup2" and controllers == "":
                version = 2
            elif mount.fstype == "cgroup" and "memory" in mount.options and "memory" in controllers.split(","):
                version = 1
            else:
                continue
            if not (cgroup + "/").startswith(root + "/"):
                continue
            directory = os.path.join(mount.point, cgroup[len(root):].lstrip("/"))
            if version == 1 or _delegates_memory(directory):
                found.append((version, directory))
    return sorted(found)[::-1]


def _delegates_memory(directory: str) -> bool:
    subtree = os.path.join(directory, "cgroup.subtree_control")
    try:
        with open(subtree) as control:
            if "memory" in control.read().split():
                return True
        _write(subtree, "+memory")  # refused for a cgroup that holds processes, except the root
        return True
    except OSError:
        return False


def _write(path: str, text: str) -> None:
    with open(path, "w") as file:
        file.write(text)
