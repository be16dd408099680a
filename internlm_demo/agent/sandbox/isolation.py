"""Isolation levels of the sandbox: what one run actually got, named and ranked.

``docs/agent-sandbox.md`` lists what each level guarantees. The level is worked out inside the
sandbox, from what the kernel granted, just before the code would run; a run below the level its
caller requires never starts the code.
"""

from __future__ import annotations

from dataclasses import dataclass

STRICT = "strict"  # root app: namespaces, a private uid, read-only mounts and /proc, the seccomp filter
USERNS = "userns"  # the same inside a user namespace, running as the app's own uid
WEAK = "weak"  # what is left without namespaces or seccomp: rlimits, an audit hook, cleanup
LEVELS = (WEAK, USERNS, STRICT)  # weakest first
MINIMUM_LEVEL = USERNS  # below this, the agent app refuses to run model code unless told otherwise

_CONTAINING_NAMESPACES = {"net", "pid", "ipc", "mount"}


@dataclass(frozen=True)
class Isolation:
    """The isolation level one run had and, in words, each mechanism that was in force."""

    level: str
    details: str

    def at_least(self, level: str) -> bool:
        """True when this isolation is ``level`` or stronger."""
        return LEVELS.index(self.level) >= LEVELS.index(level)


@dataclass(frozen=True)
class Facts:
    """What the kernel granted one run; gathered by the sandbox's own processes."""

    uid: int
    private_uid: bool  # a root app's throw-away uid rather than the app's own
    namespaces: tuple[str, ...]
    read_only_mounts: bool
    private_tmp: bool
    own_proc: bool  # a read-only /proc of the sandbox's own pid namespace
    hidden: tuple[str, ...]  # folders covered by an empty tmpfs
    exposed: tuple[str, ...]  # interpreter folders bound back into covered places
    seccomp: str | None  # why the filter is missing; None when it is loaded
    memory: str
    oom_score_adj_raised: bool  # set to 1000, so the OOM killer picks the sandbox first
    oom_score_adj_locked: bool  # set with CAP_SYS_RESOURCE, so the code cannot write a lower value
    scratch_mb: int

    def isolation(self) -> Isolation:
        """The level these facts reach, with their description."""
        contained = (_CONTAINING_NAMESPACES <= set(self.namespaces) and self.read_only_mounts and self.private_tmp
                     and self.own_proc and self.seccomp is None)
        if contained and self.private_uid:
            level = STRICT
        elif contained and "user" in self.namespaces:
            level = USERNS
        else:
            level = WEAK
        return Isolation(level, self._describe())

    def _describe(self) -> str:
        owner = "dropped from root" if self.private_uid else "the app's own user"
        user = f"uid {self.uid} ({owner})"
        if "net" in self.namespaces:
            network = "none (empty network namespace)"
        else:
            network = "audit hook blocks sockets, subprocesses and ctypes (no network namespace)"
        if "mount" in self.namespaces:
            filesystem = ", ".join([
                "read-only mounts" if self.read_only_mounts else "writable host mounts (remount refused)",
                f"private {self.scratch_mb} MiB tmpfs for the working dir, /tmp, /var/tmp, /dev/shm"
                if self.private_tmp else "host /tmp",
                f"hidden: {', '.join(self.hidden) or 'nothing'}",
                *([f"interpreter bound back read-only: {', '.join(self.exposed)}"] if self.exposed else []),
                "own read-only /proc" if self.own_proc else "host /proc",
            ])
        else:
            filesystem = "host filesystem, protected by permissions only"
        if not self.oom_score_adj_raised:
            oom = "the app's (could not be raised)"
        elif self.oom_score_adj_locked or self.own_proc:
            oom = "1000, cannot be lowered"
        else:
            oom = "1000, can be lowered to the app's own minimum"
        return "; ".join([
            f"user: {user}",
            f"namespaces: {', '.join(self.namespaces) or 'none'}",
            f"network: {network}",
            f"filesystem: {filesystem}",
            "syscall filter: seccomp (memfd, System V IPC, io_uring, new namespaces and socket families other "
            "than unix/IPv4/IPv6 refused)" if self.seccomp is None else f"syscall filter: none ({self.seccomp})",
            f"memory: {self.memory}",
            f"oom_score_adj: {oom}",
        ])
