"""The seccomp policy: default allow, an explicit deny list, built once per process.

Why default-allow: the interpreter and arbitrary pure-Python bundles need a wide
and version-dependent set of syscalls; the namespaces, the empty capability
set and the read-only filesystem are the primary walls. This filter removes
the kernel surfaces those walls do not cover (networks other than AF_UNIX,
io_uring, ptrace-like access, keyrings, BPF, perf, userfaultfd, namespace and
mount manipulation, terminal injection, dnotify, disk reserved past RLIMIT_FSIZE,
set-user/group-ID files, descriptors passed in SCM_RIGHTS messages) and kills
on foreign ABIs.
"""

from __future__ import annotations

import errno
import functools
import os
import resource
import socket
import stat
from dataclasses import dataclass

from sandbox._libseccomp import (
    ACT_ALLOW,
    CMP_MASKED_EQ,
    CMP_NE,
    Arg,
    LibseccompError,
    act_errno,
    compile_filter,
)
from sandbox.errors import SandboxError

__all__ = ["CORE_LIMIT", "DENIED", "SeccompProgram", "program", "program_fd"]

_EPERM = act_errno(errno.EPERM)

# Syscalls refused outright with EPERM, grouped by the attack they stop.
DENIED: dict[str, tuple[str, ...]] = {
    "namespaces": ("unshare", "setns"),
    "mounts": ("mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig",
               "fsmount", "fspick", "mount_setattr"),
    "process access": ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "process_madvise"),
    "kernel keyrings": ("keyctl", "add_key", "request_key"),
    "kernel attack surface": ("bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
                              "io_uring_register", "open_by_handle_at", "name_to_handle_at", "lookup_dcookie",
                              "syslog", "uselib", "_sysctl", "nfsservctl", "iopl", "ioperm", "vhangup"),
    # inotify/fanotify marks sit on inodes, not mounts: a watch on a shared read-only file (/usr, the
    # Python installation, /runtime) reports every open and read of it by other runs and the host, a side
    # channel into other tenants' activity and a covert channel between sandboxes.
    # (dnotify, fcntl F_NOTIFY, is the same channel: refused by its command in _rules.)
    "filesystem watches": ("inotify_init", "inotify_init1", "inotify_add_watch", "fanotify_init", "fanotify_mark"),
    # A descriptor in flight in an SCM_RIGHTS message belongs to no process: a file unlinked after being
    # sent that way is in no /proc, so the work dir's disk scan cannot count it (tests/sandbox/
    # test_escapes_session6.py: 8 x 3 MiB held past an 8 MiB quota). sendmsg and sendmmsg are the only
    # calls that carry ancillary data (io_uring is refused above; the i386 socketcall ABI is killed);
    # send/sendto/write, which Python's sockets, asyncio and multiprocessing use, stay allowed.
    "descriptor passing": ("sendmsg", "sendmmsg"),
    "host administration": ("kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
                            "reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd"),
}

_NS_CLONE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
    0x00000080,  # CLONE_NEWTIME
)
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C
_F_NOTIFY = 1026  # F_LINUX_SPECIFIC_BASE + 2
# RLIMIT_CORE as the launcher sets it (hard and soft): the one value at which the kernel drops a piped
# core dump (see _limits). Lowering it to 0 would hand the next crash to the host's core helper again.
CORE_LIMIT = 1
_RLIMIT_CORE = resource.RLIMIT_CORE
_LOW32 = 0xFFFFFFFF


def _rules() -> list[tuple[str, int, tuple[Arg, ...]]]:
    rules: list[tuple[str, int, tuple[Arg, ...]]] = []
    for names in DENIED.values():
        rules += [(n, _EPERM, ()) for n in names]
    # Only AF_UNIX. Compared on all 64 bits, so AF_INET with junk in the upper half is refused too.
    for call in ("socket", "socketpair"):
        rules.append((call, act_errno(errno.EAFNOSUPPORT), (Arg(0, CMP_NE, socket.AF_UNIX),)))
    # clone() with any namespace flag; clone3 hides its flags behind a pointer seccomp cannot read,
    # so it reports ENOSYS and libc falls back to clone().
    rules += [("clone", _EPERM, (Arg(0, CMP_MASKED_EQ, flag, flag),)) for flag in _NS_CLONE_FLAGS]
    rules.append(("clone3", act_errno(errno.ENOSYS), ()))
    # RLIMIT_CORE cannot be changed, in either direction (resource is an unsigned int: low 32 bits only).
    # prlimit64 with a NULL new limit is a read (glibc's getrlimit) and stays allowed.
    rules.append(("setrlimit", _EPERM, (Arg(0, CMP_MASKED_EQ, _LOW32, _RLIMIT_CORE),)))
    rules.append(("prlimit64", _EPERM, (Arg(1, CMP_MASKED_EQ, _LOW32, _RLIMIT_CORE), Arg(2, CMP_NE, 0))))
    # fallocate with any mode but 0. FALLOC_FL_KEEP_SIZE reserves disk blocks without growing the file, so
    # RLIMIT_FSIZE never applies: one call reserved any amount up to the host's free space (INSERT_RANGE and
    # the others have no use here either). Mode 0 grows the file and stays under RLIMIT_FSIZE; it is what
    # glibc's posix_fallocate uses, which falls back to writing zeros on EOPNOTSUPP. mode is an int: one
    # rule per bit of the low half, so junk in the upper half does not matter.
    rules += [("fallocate", act_errno(errno.EOPNOTSUPP), (Arg(1, CMP_MASKED_EQ, 1 << bit, 1 << bit),))
              for bit in range(32)]
    # No set-user-ID or set-group-ID file. /work is a directory on the host filesystem, and the sandbox owns
    # it: it can open it to other users (chmod /work 0755) and leave a copy of /usr/bin/python3 with mode
    # 04755 there. Any host user who runs that file gets the run's pool uid - and keeps it after the run,
    # when the uid serves another tenant's run (its work dir, signals, the uid's process limit). Every call
    # that sets a file mode is refused when the mode carries either bit; openat2 hides its mode in a struct
    # seccomp cannot read, so it reports ENOSYS (Python and glibc do not use it).
    for call, index in (("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("fchmodat2", 2), ("creat", 1), ("open", 2),
                        ("openat", 3), ("mknod", 1), ("mknodat", 2)):
        rules += [(call, _EPERM, (Arg(index, CMP_MASKED_EQ, bit, bit),)) for bit in (stat.S_ISUID, stat.S_ISGID)]
    rules.append(("openat2", act_errno(errno.ENOSYS), ()))
    # ioctl's request is an unsigned int: mask the upper half so TIOCSTI | 1<<32 is still caught.
    for request in (_TIOCSTI, _TIOCLINUX):
        rules.append(("ioctl", _EPERM, (Arg(1, CMP_MASKED_EQ, 0xFFFFFFFF, request),)))
    # dnotify, the old face of the inotify/fanotify watches refused above: fcntl(dir, F_NOTIFY, DN_ACCESS) on a
    # shared read-only directory (/runtime, /usr/lib, the Python installation) signalled every read of a file
    # in it by another run or the host. The command is an unsigned int: low 32 bits only.
    rules.append(("fcntl", _EPERM, (Arg(1, CMP_MASKED_EQ, _LOW32, _F_NOTIFY),)))
    return rules


@dataclass(frozen=True)
class SeccompProgram:
    bpf: bytes
    unknown: tuple[str, ...]  # deny-list names this arch does not have (harmless, reported for the record)


@functools.lru_cache(maxsize=1)
def _build() -> SeccompProgram:
    bpf, unknown = compile_filter(ACT_ALLOW, _rules())
    return SeccompProgram(bpf=bpf, unknown=tuple(unknown))


def program() -> SeccompProgram:
    """The compiled program (built on first use, then reused). Fails closed with SandboxError."""
    try:
        return _build()
    except LibseccompError as exc:
        raise SandboxError("sandbox.unavailable", f"the seccomp filter cannot be built: {exc}") from None


def program_fd() -> int:
    """A fresh readable fd holding the program, positioned at 0, for bwrap's ``--seccomp FD`` (caller closes)."""
    bpf = program().bpf
    fd = os.memfd_create("stockade-seccomp", os.MFD_CLOEXEC)
    try:
        os.write(fd, bpf)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd
