"""The seccomp filter of the sandboxed code: the system calls that RLIMIT_AS, the network namespace
or the pid namespace cannot see are refused by the kernel before they run.

A dozen rules on one architecture need no library: the filter is a short classic-BPF program built
here and loaded with prctl(PR_SET_SECCOMP) after PR_SET_NO_NEW_PRIVS, which an unprivileged process
may do. Calls of another ABI (i386 or x32 on x86_64) are refused as a whole, so no number escapes
the table through a second syscall table.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from .kernel import PR_SET_SECCOMP, prctl

# Socket families the code may create: local sockets and IP (which the empty network namespace
# leaves without a route). AF_VSOCK reaches the host of a VM; netlink, packet, ALG, XDP, CAN, ...
# are kernel interfaces no standard-library code needs.
ALLOWED_SOCKET_FAMILIES = (1, 2, 10)  # AF_UNIX, AF_INET, AF_INET6

# name: (x86_64 number, aarch64 number). aarch64 uses the kernel's generic table.
_SYSCALLS = {
    # Memory that belongs to no process's address space, so RLIMIT_AS cannot count it.
    "memfd_create": (319, 279),
    "memfd_secret": (447, 447),
    "shmget": (29, 194),
    "msgget": (68, 186),
    "semget": (64, 190),
    # io_uring can open sockets (IORING_OP_SOCKET) without the socket() call checked below.
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    # New namespaces: a nested user namespace would give the code capabilities over new mounts.
    "unshare": (272, 97),
    "setns": (308, 268),
    # Kernel interfaces with a history of exploits that the standard library never uses.
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "keyctl": (250, 219),
}
_CHECKED = {"socket": (41, 198), "socketpair": (53, 199), "clone": (56, 220), "clone3": (435, 435)}
_ARCHITECTURES = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}  # column, AUDIT_ARCH_*
_X32_SYSCALL_BIT = 0x40000000
_NAMESPACE_FLAGS = 0x7E020080  # every CLONE_NEW* flag (ns, cgroup, uts, ipc, user, pid, net, time)

_LOAD_WORD = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JUMP_EQUAL = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JUMP_AT_LEAST = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JUMP_ANY_BIT = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RETURN = 0x06  # BPF_RET | BPF_K
_ALLOW = 0x7FFF0000
_KILL_PROCESS = 0x80000000
_ERRNO = 0x00050000
# Offsets in struct seccomp_data: nr, arch, then the arguments (the low half of the first, little-endian).
_NR, _ARCH, _FIRST_ARGUMENT = 0, 4, 16


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def supported() -> bool:
    """True when this machine's architecture has a table here."""
    return os.uname().machine in _ARCHITECTURES


def install() -> None:
    """Load the filter into this process; it holds for every process it starts. Raises OSError."""
    buffer = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *op) for op in _filter_program()))
    program = _Program(len(buffer) // 8, ctypes.addressof(buffer))
    prctl(PR_SET_SECCOMP, 2, ctypes.addressof(program))  # SECCOMP_MODE_FILTER


def _filter_program() -> list[tuple[int, int, int, int]]:
    """The filter as (code, jump if true, jump if false, constant) instructions."""
    machine = os.uname().machine
    if machine not in _ARCHITECTURES:
        raise OSError(errno.ENOSYS, f"no seccomp table for {machine}")
    column, audit_arch = _ARCHITECTURES[machine]

    def refuse(code: int) -> tuple[int, int, int, int]:
        return (_RETURN, 0, 0, _ERRNO | code)

    def number(name: str) -> int:
        return {**_SYSCALLS, **_CHECKED}[name][column]

    program = [(_LOAD_WORD, 0, 0, _ARCH), (_JUMP_EQUAL, 1, 0, audit_arch), (_RETURN, 0, 0, _KILL_PROCESS),
               (_LOAD_WORD, 0, 0, _NR)]
    if machine == "x86_64":
        program += [(_JUMP_AT_LEAST, 0, 1, _X32_SYSCALL_BIT), refuse(errno.ENOSYS)]
    for name in _SYSCALLS:
        program += [(_JUMP_EQUAL, 0, 1, number(name)), refuse(errno.EPERM)]
    # glibc falls back from clone3 (whose flags sit in memory a filter cannot read) to clone.
    program += [(_JUMP_EQUAL, 0, 1, number("clone3")), refuse(errno.ENOSYS)]
    families = ALLOWED_SOCKET_FAMILIES
    program += [(_JUMP_EQUAL, 1, 0, number("socket")), (_JUMP_EQUAL, 0, len(families) + 3, number("socketpair")),
                (_LOAD_WORD, 0, 0, _FIRST_ARGUMENT)]
    program += [(_JUMP_EQUAL, len(families) - index, 0, family) for index, family in enumerate(families)]
    program += [refuse(errno.EPERM), (_RETURN, 0, 0, _ALLOW)]
    program += [(_JUMP_EQUAL, 0, 3, number("clone")), (_LOAD_WORD, 0, 0, _FIRST_ARGUMENT),
                (_JUMP_ANY_BIT, 0, 1, _NAMESPACE_FLAGS), refuse(errno.EPERM)]
    return program + [(_RETURN, 0, 0, _ALLOW)]
