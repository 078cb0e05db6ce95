"""Cgroup placement: one cgroup per run for the total memory, process count and CPU share of the run.

rlimits are per process (RLIMIT_AS, RLIMIT_CPU) or per uid (RLIMIT_NPROC); a cgroup bounds the
run as a whole, tmpfs pages included. CPU: without a cpu cgroup the scheduler's unit of fairness
is the session (autogroup), and a run that calls setsid() in each of its max_procs processes
counts as that many sessions, leaving the supervisor and the API a few percent of the machine.
In its own cpu cgroup the whole run weighs what one ordinary session weighs (``CPU_SHARES``).
This host has cgroup v1 ``memory``, ``pids`` and ``cpu`` controllers (the v2 hierarchy has
none of them), writable by root only, so placement happens only when the supervisor is root;
otherwise rlimits alone apply. Run cgroups are created under the supervisor's own cgroup of each
controller, so any limit placed on the supervisor still covers its sandboxes.
The forked child joins them before exec (its ``cgroup.procs`` is chowned to the
run's uid for that), so bwrap and everything it starts are inside from the start.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

from sandbox._plan import Plan
from sandbox.spec import SandboxSpec

__all__ = ["Placement", "place"]

_V1_ROOT = Path("/sys/fs/cgroup")
_PREFIX = "stockade-"
_counter = itertools.count()
_OPTIONAL = ("memory.memsw.limit_in_bytes", "memory.swappiness")  # absent without swap accounting
CPU_SHARES = 1024  # the kernel's default weight: the whole run competes like one nice-0 session


@dataclass
class Placement:
    dirs: list[Path]
    memory_dir: Path | None

    def oom_killed(self) -> bool:
        if self.memory_dir is None:
            return False
        with contextlib.suppress(OSError, ValueError):
            for line in (self.memory_dir / "memory.oom_control").read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1]) > 0
        return False

    def remove(self) -> None:
        for d in self.dirs:
            with contextlib.suppress(OSError):
                d.rmdir()
        self.dirs = []


def _own_path(controller: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, names, path = line.split(":", 2)
            if controller in names.split(","):
                return path
    return None


def _sweep(parent: Path) -> None:
    """Remove run cgroups left behind by supervisors that died (named after their pid)."""
    with contextlib.suppress(OSError):
        for d in parent.iterdir():
            if not d.name.startswith(_PREFIX):
                continue
            pid = d.name[len(_PREFIX):].split("-")[0]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                with contextlib.suppress(OSError):
                    d.rmdir()


def _make(controller: str, settings: dict[str, int], uid: int, gid: int, n: int) -> Path | None:
    own = _own_path(controller)
    base = _V1_ROOT / controller
    if own is None or not (base / "cgroup.procs").exists():
        return None
    parent = base / own.lstrip("/")
    if not os.access(parent, os.W_OK):
        return None
    _sweep(parent)
    d = parent / f"{_PREFIX}{os.getpid()}-{n}"
    d.mkdir(mode=0o755)
    try:
        for name, value in settings.items():
            try:
                (d / name).write_text(str(value))
            except OSError:
                if name not in _OPTIONAL:
                    raise
        os.chown(d / "cgroup.procs", uid, gid)
    except OSError:
        with contextlib.suppress(OSError):
            d.rmdir()
        raise
    return d


def place(spec: SandboxSpec, plan: Plan) -> Placement | None:
    """Create the run's cgroups and make the child join them; None when not root or no v1 controllers."""
    ident = plan.identity
    if not ident.switch or os.geteuid() != 0:
        return None
    lim = spec.limits
    mem_bytes = (lim.memory_mb + lim.tmpfs_mb) * 1024 * 1024
    made: list[Path] = []
    memory_dir = None
    n = next(_counter)
    try:
        memory_dir = _make("memory", {"memory.limit_in_bytes": mem_bytes, "memory.memsw.limit_in_bytes": mem_bytes,
                                      "memory.swappiness": 0}, ident.uid, ident.gid, n)
        if memory_dir:
            made.append(memory_dir)
        pids_dir = _make("pids", {"pids.max": lim.max_procs + 1}, ident.uid, ident.gid, n)
        if pids_dir:
            made.append(pids_dir)
    except OSError:
        for d in made:
            with contextlib.suppress(OSError):
                d.rmdir()
        return None
    with contextlib.suppress(OSError):  # a fair share is worth having, not worth losing the bounds above for
        cpu_dir = _make("cpu", {"cpu.shares": CPU_SHARES}, ident.uid, ident.gid, n)
        if cpu_dir:
            made.append(cpu_dir)
    if not made:
        return None
    plan.cgroup_procs += [str(d / "cgroup.procs") for d in made]
    return Placement(dirs=made, memory_dir=memory_dir)
