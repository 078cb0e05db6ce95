"""A minimal ctypes binding to libseccomp.so.2: build a filter, export it as BPF bytes.

Only the supervisor-side half uses this (to produce the program bwrap loads with
``--seccomp FD``); nothing inside the jail needs libseccomp.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ACT_ALLOW", "ACT_KILL_PROCESS", "CMP_EQ", "CMP_MASKED_EQ", "CMP_NE", "Arg", "LibseccompError",
           "act_errno", "compile_filter"]

ACT_KILL_PROCESS = 0x80000000
ACT_ALLOW = 0x7FFF0000
CMP_NE, CMP_EQ, CMP_MASKED_EQ = 1, 4, 7
_ATTR_ACT_BADARCH = 2
_ATTR_CTL_NNP = 3
_NR_SCMP_ERROR = -1
# Syscalls added since Linux 5.1 have one number on every architecture but alpha. An older libseccomp
# does not know the newest of them (fchmodat2 needs 2.5.5): a deny rule for a name it cannot resolve
# would be skipped, and the call allowed. These numbers are used instead.
_UNIFIED_NR = {"pidfd_send_signal": 424, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
               "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
               "pidfd_open": 434, "clone3": 435, "openat2": 437, "pidfd_getfd": 438, "process_madvise": 440,
               "mount_setattr": 442, "quotactl_fd": 443, "memfd_secret": 447, "fchmodat2": 452}
_UNIFIED_ARCHES = ("x86_64", "aarch64")


def act_errno(errno: int) -> int:
    return 0x00050000 | (errno & 0xFFFF)


class LibseccompError(RuntimeError):
    pass


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


@dataclass(frozen=True)
class Arg:
    """One argument comparison: ``args[index] <op> a`` (MASKED_EQ: ``args[index] & a == b``)."""

    index: int
    op: int
    a: int
    b: int = 0


def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise LibseccompError(f"libseccomp is not installed ({exc}); install the libseccomp2 package") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def compile_filter(default_action: int, rules: Sequence[tuple[str, int, Sequence[Arg]]]) -> tuple[bytes, list[str]]:
    """Return (BPF program bytes for the native arch, syscall names unknown on this arch).

    Foreign-arch syscalls (i386 ``int 0x80``, x32) kill the process: a filter that
    only speaks x86_64 numbers must not be sidestepped through another ABI.
    """
    lib = _lib()
    ctx = lib.seccomp_init(default_action)
    if not ctx:
        raise LibseccompError("seccomp_init failed")
    unknown: list[str] = []
    try:
        _check(lib.seccomp_attr_set(ctx, _ATTR_ACT_BADARCH, ACT_KILL_PROCESS), "set bad-arch action")
        _check(lib.seccomp_attr_set(ctx, _ATTR_CTL_NNP, 1), "set NO_NEW_PRIVS")
        for name, action, args in rules:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr == _NR_SCMP_ERROR and name in _UNIFIED_NR and os.uname().machine in _UNIFIED_ARCHES:
                nr = _UNIFIED_NR[name]
            if nr == _NR_SCMP_ERROR:
                unknown.append(name)
                continue
            arr = (_ArgCmp * max(1, len(args)))(*[_ArgCmp(a.index, a.op, a.a, a.b) for a in args])
            _check(lib.seccomp_rule_add_array(ctx, action, nr, len(args), arr), f"add rule for {name}")
        fd = os.memfd_create("stockade-seccomp", os.MFD_CLOEXEC)
        try:
            _check(lib.seccomp_export_bpf(ctx, fd), "export BPF")
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)
    program = b"".join(chunks)
    if not program or len(program) % 8:
        raise LibseccompError("libseccomp exported an empty or malformed BPF program")
    return program, unknown


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise LibseccompError(f"libseccomp could not {what}: {os.strerror(-rc)}")
