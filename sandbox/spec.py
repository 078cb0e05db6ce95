"""The declarative description of one sandbox: what it may see and how much it may use.

Everything the launcher does is derived from a ``SandboxSpec``; nothing else
(no host environment, no global flags) shapes a sandbox.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Limits", "SandboxSpec"]


@dataclass(frozen=True)
class Limits:
    memory_mb: int = 512  # RLIMIT_AS per process (+ cgroup v1 memory for the whole run when root)
    max_procs: int = 64  # RLIMIT_NPROC of the run's uid (+ cgroup v1 pids when root)
    max_open_files: int = 256  # RLIMIT_NOFILE
    max_file_mb: int = 64  # RLIMIT_FSIZE: largest single file
    cpu_s: float = 300  # RLIMIT_CPU per process (SIGXCPU, then SIGKILL one second later)
    wall_s: float = 600  # wall clock; the launcher kills the whole pid namespace
    workdir_mb: int = 256  # bytes under /work, checked by a periodic scan (see README)
    tmpfs_mb: int = 64  # size of the /tmp tmpfs
    max_output_bytes: int = 8 * 1024 * 1024  # stdout + stderr; the real channel is the socket

    def __post_init__(self) -> None:
        for name in ("memory_mb", "max_procs", "max_open_files", "max_file_mb", "workdir_mb", "tmpfs_mb",
                     "max_output_bytes"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"Limits.{name} must be a positive integer, got {v!r}")
        for name in ("cpu_s", "wall_s"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                raise ValueError(f"Limits.{name} must be a positive number, got {v!r}")
        if self.memory_mb < 16:
            raise ValueError("Limits.memory_mb must be at least 16 (the interpreter needs it to start)")


@dataclass(frozen=True)
class SandboxSpec:
    argv: tuple[str, ...]  # inside the jail, e.g. (python, "-I", "-S", "/runtime/boot.py")
    work_dir: Path  # host dir, bound read-write at /work (the cwd)
    bundle_dir: Path | None  # host dir, bound read-only at /bundle
    runtime_dir: Path | None  # host dir, bound read-only at /runtime (the SDK, stdlib only)
    socket_dir: Path | None  # host dir holding the run's socket, at /run/stockade; None = no door at all
    env: Mapping[str, str]  # the ONLY environment inside (nothing from the host)
    limits: Limits
    uid: int | None = None  # host uid from the pool (supervisor runs as root); None = our own uid
    gid: int | None = None
    hostname: str = "sandbox"
    python_home: Path | None = None  # Python installation bound read-only at the same path; None = sys.base_prefix
    extra_ro_binds: tuple[tuple[Path, str], ...] = ()  # (host path, path inside)

    def __post_init__(self) -> None:
        if not self.argv or not all(isinstance(a, str) and "\0" not in a for a in self.argv):
            raise ValueError("SandboxSpec.argv must be a non-empty tuple of strings without NUL")
        if (self.uid is None) != (self.gid is None):
            raise ValueError("SandboxSpec.uid and gid must be given together")
        for k, v in self.env.items():
            if not k or "=" in k or "\0" in k or "\0" in v:
                raise ValueError(f"SandboxSpec.env has an invalid entry {k!r}")
        for _, inside in self.extra_ro_binds:
            if not inside.startswith("/") or ".." in inside.split("/"):
                raise ValueError(f"SandboxSpec.extra_ro_binds target {inside!r} must be an absolute path without '..'")
