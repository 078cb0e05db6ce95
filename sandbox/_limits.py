"""Resource limits applied to bwrap (and so to everything it starts) before it runs.

They are set in the forked child after it switched to the run's uid and before
exec, so there is no window in which a sandbox process runs unlimited.
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Callable

from sandbox._plan import Plan, Rlimit
from sandbox.seccomp import CORE_LIMIT
from sandbox.spec import SandboxSpec

__all__ = ["SIGPENDING", "apply", "preexec"]

SIGPENDING = 1024

_MB = 1024 * 1024


def _own_tasks(uid: int) -> int:
    """Tasks (threads count) the uid already runs; see the RLIMIT_NPROC note below."""
    n = 0
    with os.scandir("/proc") as it:
        for entry in it:
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat().st_uid == uid:
                    n += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                continue
    return n


def apply(spec: SandboxSpec, plan: Plan) -> None:
    lim = spec.limits
    cpu = max(1, math.ceil(lim.cpu_s))
    nproc = lim.max_procs + 1  # bwrap's host process runs as the same uid
    if not plan.identity.switch:
        # RLIMIT_NPROC counts every task of the uid, up the user-namespace chain. Without root the
        # sandbox shares the supervisor's uid, so the budget is what the uid runs now plus max_procs.
        nproc += _own_tasks(plan.identity.uid)
    plan.rlimits += [
        Rlimit(resource.RLIMIT_AS, lim.memory_mb * _MB, lim.memory_mb * _MB),
        Rlimit(resource.RLIMIT_NPROC, nproc, nproc),
        Rlimit(resource.RLIMIT_NOFILE, lim.max_open_files, lim.max_open_files),
        Rlimit(resource.RLIMIT_FSIZE, lim.max_file_mb * _MB, lim.max_file_mb * _MB),
        # soft: SIGXCPU (default action: terminate); hard, one second later: SIGKILL
        Rlimit(resource.RLIMIT_CPU, cpu, cpu + 1),
        # No core of bundle memory anywhere on the host. 0 is not enough: for a piped core_pattern
        # (apport, systemd-coredump, abrt) the kernel ignores RLIMIT_CORE and hands the whole image to a
        # root helper, except when the limit is exactly 1, which aborts the dump (a file dump needs at
        # least a page). seccomp keeps the sandbox from changing it (seccomp.CORE_LIMIT).
        Rlimit(resource.RLIMIT_CORE, CORE_LIMIT, CORE_LIMIT),
        Rlimit(resource.RLIMIT_MEMLOCK, 0, 0),
        # queued signals and POSIX timers (each holds kernel memory): the default (~96k here) lets one
        # run pin tens of MB of unswappable kernel memory; a bundle needs a handful
        Rlimit(resource.RLIMIT_SIGPENDING, SIGPENDING, SIGPENDING),
    ]


def preexec(plan: Plan) -> Callable[[], None]:
    """The function the forked child runs before exec (after the uid switch): join cgroups, set limits."""
    rlimits = [(r.resource, (r.soft, r.hard)) for r in plan.rlimits]
    procs = list(plan.cgroup_procs)

    def _child() -> None:
        for path in procs:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        for res, pair in rlimits:
            resource.setrlimit(res, pair)

    return _child
