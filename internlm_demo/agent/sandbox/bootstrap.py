"""The sandbox's own processes, and how each one confines the next (Linux only)::

    app thread --Popen--> bootstrap    (python -I -S, the app's uid): joins the memory cgroup,
                            |          sets oom_score_adj 1000, unshare(): net, pid, ipc, mount
                            |          (+ user when the app is not root)
                            +-> supervisor   (pid 1 of the new pid namespace)
                                  |  mounts, status reporting, reaps orphans
                                  +-> worker: rlimits, a private uid, no_new_privs, seccomp,
                                      reports the isolation, exec a fresh ``python -I -S``

Everything is reported to the app as JSON lines on the status pipe. Nothing of the model's code
runs before the worker's exec.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
from dataclasses import dataclass

from . import seccomp
from .isolation import Facts
from .kernel import (
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    MS_BIND,
    MS_NOATIME,
    MS_NODEV,
    MS_NODIRATIME,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_RELATIME,
    MS_REMOUNT,
    PR_SET_NO_NEW_PRIVS,
    PR_SET_PDEATHSIG,
    mount,
    mounts,
    prctl,
    unshare,
)
from .limits import SandboxLimits, apply_rlimits, join_cgroup
from .runner import runner_source

# A remount inside a user namespace must repeat these flags or the kernel refuses it.
_PRESERVED_MOUNT_FLAGS = (
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)
_SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # one private tmpfs in the mount namespace
_CAP_SYS_RESOURCE = 24


class NotRun(Exception):
    """The code must not run; the message is the whole explanation for the user."""


@dataclass
class _Plan:
    """One run as the bootstrap sets it up; the supervisor and the worker inherit it by fork."""

    status_fd: int
    limits: SandboxLimits
    workdir: str  # on the host; the supervisor moves it onto the private tmpfs
    private_dirs: list[str]
    minimum_level: str
    is_root: bool
    uid: int
    gid: int
    namespaces: list[str]
    python: str  # the interpreter binary, symlinks resolved before any mount could hide them
    stdlib: str
    python_dirs: list[str]  # the folders the interpreter needs: its own prefix and its stdlib's
    memory: str
    oom_score_adj_raised: bool
    oom_score_adj_locked: bool
    code: bytes
    runner: str


def main() -> None:
    """The bootstrap process; its configuration is the last command-line argument."""
    config = json.loads(sys.argv[-1])
    status_fd = config["status_fd"]
    os.set_inheritable(status_fd, False)  # closed when the worker execs the code
    try:
        plan = _plan(config)
        supervisor = os.fork()
        if supervisor == 0:
            _in_child(status_fd, _supervise, plan)
        os.waitpid(supervisor, 0)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent instead
        _report(status_fd, error=f"sandbox setup failed: {exc}")
    os._exit(0)


def _plan(config: dict) -> _Plan:
    limits = SandboxLimits(**config["limits"])
    memory = f"RLIMIT_AS of {limits.memory_mb} MiB per process only (no memory cgroup)"
    if config["cgroup"]:
        join_cgroup(config["cgroup"]["path"])  # first, so that everything started from here is held by it
        memory = config["cgroup"]["description"]
    try:
        _write_file("/proc/self/oom_score_adj", "1000")  # the OOM killer's first choice
        oom_score_adj_raised = True
    except OSError:  # e.g. a read-only /proc in a container
        oom_score_adj_raised = False
    is_root = os.geteuid() == 0
    python = os.path.realpath(sys.executable)
    return _Plan(
        status_fd=config["status_fd"],
        limits=limits,
        workdir=config["workdir"],
        private_dirs=config["private_dirs"],
        minimum_level=config["minimum_level"],
        is_root=is_root,
        uid=config["uid_base"] + os.getpid() if is_root else os.getuid(),
        gid=config["uid_base"] + os.getpid() if is_root else os.getgid(),
        namespaces=_enter_namespaces(is_root) if config["namespaces"] else [],
        python=python,
        stdlib=os.path.dirname(os.path.realpath(os.__file__)),
        python_dirs=sorted({os.path.realpath(sys.base_prefix), os.path.dirname(os.path.dirname(python))}),
        memory=memory,
        oom_score_adj_raised=oom_score_adj_raised,
        # Written with CAP_SYS_RESOURCE, 1000 is also the lowest value the kernel lets the code write.
        oom_score_adj_locked=oom_score_adj_raised and _has_capability(_CAP_SYS_RESOURCE),
        code=sys.stdin.buffer.read(),
        runner=runner_source(),  # read now: the worker may no longer be able to read this package
    )


def _in_child(status_fd: int, target, *args) -> None:
    """Run ``target`` in a forked child, which must never return into its parent's code."""
    try:
        target(*args)
    except NotRun as exc:
        _report(status_fd, error=str(exc))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent instead
        _report(status_fd, error=f"sandbox setup failed: {exc}")
    finally:
        os._exit(70)


def _enter_namespaces(is_root: bool) -> list[str]:
    """Move this process into new namespaces; returns their names, or [] if the kernel refuses."""
    flags = CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWNS
    names = ["net", "pid", "ipc", "mount"]
    uid, gid = os.getuid(), os.getgid()
    if not is_root:
        # Unprivileged users may create these only inside a user namespace they own.
        flags |= CLONE_NEWUSER
        names.insert(0, "user")
    try:
        unshare(flags)
    except OSError:
        return []
    if not is_root:
        _write_file("/proc/self/setgroups", "deny")
        _write_file("/proc/self/uid_map", f"{uid} {uid} 1")
        _write_file("/proc/self/gid_map", f"{gid} {gid} 1")
    return names


def _supervise(plan: _Plan) -> None:
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if "mount" in plan.namespaces:
        filesystem = _prepare_filesystem(plan)
    else:
        filesystem = {"workdir": plan.workdir, "read_only_mounts": False, "private_tmp": False,
                      "own_proc": False, "hidden": (), "exposed": ()}
    if plan.is_root:
        os.chown(filesystem["workdir"], plan.uid, plan.gid)
    code_fd = os.memfd_create("sandbox-code")
    os.write(code_fd, plan.code)
    os.lseek(code_fd, 0, os.SEEK_SET)
    worker = os.fork()
    if worker == 0:
        _in_child(plan.status_fd, _exec_worker, plan, filesystem, code_fd)
    os.close(code_fd)
    # As pid 1 of the namespace this also reaps orphaned grandchildren.
    while True:
        pid, wait_status, usage = os.wait4(-1, 0)
        if pid == worker:
            break
    cpu_s = usage.ru_utime + usage.ru_stime
    if os.WIFSIGNALED(wait_status):
        _report(plan.status_fd, signal=os.WTERMSIG(wait_status), cpu_s=cpu_s)
    else:
        _report(plan.status_fd, exit_code=os.WEXITSTATUS(wait_status), cpu_s=cpu_s)
    # Leaving pid 1 makes the kernel kill whatever the code left running.
    os._exit(0)


def _prepare_filesystem(plan: _Plan) -> dict:
    """Inside the new mount namespace: read-only mounts, private scratch space, a read-only own /proc.

    The app user's home, folders the sandbox user cannot traverse and the scratch folders are
    covered; interpreter folders inside them (a ``.venv`` or a clone under /tmp, ``~/.pyenv``) are
    bound back read-only first.
    """
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount may propagate to the host
    read_only_root = False
    for entry in mounts():
        if entry.point == "/proc" or entry.point.startswith("/proc/"):
            continue  # replaced below
        try:
            _remount_read_only(entry.point)
            read_only_root = read_only_root or entry.point == "/"
        except OSError:
            pass  # e.g. a mount a user namespace may not change; permissions still apply
    scratch = [path for path in _SCRATCH_DIRS if os.path.isdir(path)]
    hidden = [path for path in _folders_to_hide(plan) if not any(_is_inside(path, tmp) for tmp in scratch)]
    exposed = [path for path in plan.python_dirs if any(_is_inside(path, cover) for cover in hidden + scratch)]
    kept = {path: os.open(path, os.O_PATH) for path in exposed}
    try:
        for path in hidden:
            mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
        mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
              f"size={plan.limits.scratch_mb}m,nr_inodes=8192,mode=1777")
        for path in scratch[1:]:
            mount("/tmp", path, None, MS_BIND)
        for path, fd in kept.items():
            os.makedirs(path, mode=0o755, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            _remount_read_only(path)
        for path in hidden:
            _remount_read_only(path)
    finally:
        for fd in kept.values():
            os.close(fd)
    workdir = os.path.join("/tmp", os.path.basename(plan.workdir))
    os.mkdir(workdir, 0o700)
    try:
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
        own_proc = True
    except OSError:
        own_proc = False
    return {"workdir": workdir, "read_only_mounts": read_only_root, "private_tmp": True, "own_proc": own_proc,
            "hidden": tuple(hidden), "exposed": tuple(exposed)}


def _remount_read_only(path: str) -> None:
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY
    current = os.statvfs(path).f_flag
    for statvfs_flag, mount_flag in _PRESERVED_MOUNT_FLAGS:
        if current & statvfs_flag:
            flags |= mount_flag
    mount(None, path, None, flags)


def _folders_to_hide(plan: _Plan) -> list[str]:
    """The app user's home and the outermost folders the sandbox user cannot traverse on the way to Python."""
    candidates = {path for path in plan.private_dirs if os.path.isdir(path)}
    candidates |= {_first_untraversable_ancestor(path, plan.uid, plan.gid) for path in plan.python_dirs}
    candidates -= {None, "/"}
    return sorted(path for path in candidates
                  if not any(other != path and _is_inside(path, other) for other in candidates))


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


def _exec_worker(plan: _Plan, filesystem: dict, code_fd: int) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    apply_rlimits(plan.limits)
    workdir = filesystem.pop("workdir")
    os.chdir(workdir)
    if plan.is_root:
        os.setgroups([])
        os.setresgid(plan.gid, plan.gid, plan.gid)
        os.setresuid(plan.uid, plan.uid, plan.uid)
        if os.getuid() == 0 or os.geteuid() == 0:
            raise PermissionError("could not drop root privileges")
    prctl(PR_SET_NO_NEW_PRIVS, 1)  # setuid binaries such as su cannot regain privileges; seccomp needs it
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # set after the uid change, which clears it
    os.umask(0o077)
    try:
        seccomp.install()
        seccomp_problem = None
    except OSError as exc:
        seccomp_problem = str(exc)
    isolation = Facts(uid=plan.uid, private_uid=plan.is_root, namespaces=tuple(plan.namespaces),
                      seccomp=seccomp_problem, memory=plan.memory, oom_score_adj_raised=plan.oom_score_adj_raised,
                      oom_score_adj_locked=plan.oom_score_adj_locked,
                      scratch_mb=plan.limits.scratch_mb, **filesystem).isolation()
    _report(plan.status_fd, isolation={"level": isolation.level, "details": isolation.details},
            pid_namespace="pid" in plan.namespaces)
    _check_interpreter_is_readable(plan)
    if not isolation.at_least(plan.minimum_level):
        raise NotRun(
            f"the sandbox reached only the '{isolation.level}' isolation level, below the '{plan.minimum_level}' "
            f"this caller requires, so the code was not run ({isolation.details}). docs/agent-sandbox.md says what "
            "each level needs; the agent app's --allow-weak-sandbox accepts the weak level."
        )
    os.set_inheritable(code_fd, True)
    env = dict(os.environ, HOME=workdir, TMPDIR=workdir, PWD=workdir)  # the app passes a minimal environment
    argv = [plan.python, "-I", "-S", "-u", "-X", "utf8", "-c", plan.runner, str(code_fd),
            str(int("net" not in plan.namespaces))]
    os.execve(plan.python, argv, env)


def _check_interpreter_is_readable(plan: _Plan) -> None:
    """Refuse with the fix when the sandbox user cannot run the interpreter or read its standard library."""
    for path, access, verb in ((plan.python, os.X_OK, "run"), (plan.stdlib, os.R_OK | os.X_OK, "read")):
        current = "/"
        for part in path.strip("/").split("/"):
            current = os.path.join(current, part)
            if os.access(current, access if current == path else os.X_OK):
                continue
            fix = (f"make it readable by others (chmod o+rX {current}, and chmod -R o+rX on the Python "
                   "installation below it) or run the app with a Python installed in a world-readable place "
                   "such as /usr/bin/python3")
            if "mount" not in plan.namespaces:
                fix += "; with mount namespaces the sandbox exposes a Python inside a private folder by itself"
            raise NotRun(f"the sandbox user (uid {plan.uid}) cannot {verb} {path}: {current} is closed to it; "
                         f"{fix}")


def _has_capability(number: int) -> bool:
    with open("/proc/self/status") as status:
        effective = next(line.split()[1] for line in status if line.startswith("CapEff:"))
    return bool(int(effective, 16) >> number & 1)


def _write_file(path: str, text: str) -> None:
    with open(path, "w") as file:
        file.write(text)


def _report(status_fd: int, **message) -> None:
    os.write(status_fd, (json.dumps(message) + "\n").encode())
