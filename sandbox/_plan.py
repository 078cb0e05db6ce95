"""The plan the pipeline stages fill in: bwrap options, fds to hand over, rlimits, identity."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from sandbox.identity import HostIdentity

__all__ = ["Plan", "Rlimit"]


@dataclass(frozen=True)
class Rlimit:
    resource: int
    soft: int
    hard: int


@dataclass
class Plan:
    bwrap: str
    identity: HostIdentity
    options: list[str] = field(default_factory=list)  # bwrap options, handed over through --args FD
    command: tuple[str, ...] = ()  # the argv inside the jail
    rlimits: list[Rlimit] = field(default_factory=list)
    cgroup_procs: list[str] = field(default_factory=list)  # cgroup.procs files the child joins before exec
    cgroup_dirs: list[str] = field(default_factory=list)  # removed after the sandbox is gone
    fds: list[int] = field(default_factory=list)  # owned here; inherited by bwrap only

    def add(self, *args: str) -> None:
        self.options.extend(args)

    def data_fd(self, content: bytes) -> int:
        """A fresh memfd holding ``content`` at offset 0, passed to bwrap (for --ro-bind-data, --seccomp, --args)."""
        fd = os.memfd_create("stockade", os.MFD_CLOEXEC)
        self.fds.append(fd)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def own_fd(self, fd: int) -> int:
        self.fds.append(fd)
        return fd

    def close(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def argv(self) -> list[str]:
        """bwrap's own argv. Options travel through a memfd so /proc/1/cmdline inside shows no host paths."""
        blob = b"".join(a.encode() + b"\0" for a in self.options)
        return [self.bwrap, "--args", str(self.data_fd(blob)), "--", *self.command]
