"""ctypes wrappers for the Linux calls the ``os`` module lacks: unshare, mount, prctl."""

from __future__ import annotations

import ctypes
import functools
import os
import re
from dataclasses import dataclass

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_RELATIME = 0x200000

PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.unshare.argtypes = [ctypes.c_int]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return libc


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def unshare(flags: int) -> None:
    """Move this process into the new namespaces named by ``CLONE_NEW*`` ``flags``."""
    _check(_libc().unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    """mount(2); ``None`` stands for a NULL argument."""
    def encode(text):
        return text.encode() if text is not None else None

    _check(_libc().mount(encode(source), encode(target), encode(fstype), flags, encode(data)), f"mount {target}")


def prctl(option: int, value: int, pointer: int = 0) -> None:
    """prctl(2) with one value and, for ``PR_SET_SECCOMP``, the address of a filter."""
    _check(_libc().prctl(option, value, pointer, 0, 0), f"prctl({option})")


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    root: str  # the folder of the filesystem mounted here
    point: str
    fstype: str
    options: tuple[str, ...]  # the filesystem's own (super block) options


def mounts() -> list[Mount]:
    """This process's mount table."""
    def unescape(field: str) -> str:
        return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)

    table = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            separator = fields.index("-")
            table.append(Mount(unescape(fields[3]), unescape(fields[4]), fields[separator + 1],
                               tuple(fields[separator + 3].split(","))))
    return table
