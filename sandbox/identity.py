"""Who the sandbox is on the host.

When the supervisor runs as root every concurrent run gets its own host uid
(and the same number as gid) from a pool, so the kernel's SO_PEERCRED names
the run, RLIMIT_NPROC counts only that run's processes, and files it writes
are owned by it. Numeric ids only: no /etc/passwd entry is needed or made.
Without root, the sandbox runs as the supervisor's own uid inside a user
namespace; the peer's pid ancestry (and pidfd) then identifies the run.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from sandbox.errors import SandboxError
from sandbox.spec import SandboxSpec

__all__ = ["HostIdentity", "UidPool", "host_identity"]

_OVERFLOW_ID = 65534  # the kernel's overflowuid: never hand it out, peer checks treat it as "unmapped"


class UidPool:
    """``count`` consecutive uids from ``base``; ``acquire`` hands out a free one, ``release`` returns it.

    Thread-safe. Exhaustion raises ``SandboxError("sandbox.unavailable")`` rather than
    sharing a uid between two live runs (which would let one signal or ptrace the other).
    """

    def __init__(self, base: int, count: int) -> None:
        if base < 1000 or count < 1 or base + count > 2**32 - 2:
            raise ValueError(f"uid pool [{base}, {base + count}) is not a range of unprivileged uids")
        if base <= _OVERFLOW_ID < base + count:
            raise ValueError(f"uid pool [{base}, {base + count}) contains the overflow uid {_OVERFLOW_ID}")
        self.base = base
        self.count = count
        self._free = list(range(base + count - 1, base - 1, -1))  # pop() hands out the lowest first
        self._used: set[int] = set()
        self._lock = threading.Lock()

    def acquire(self) -> int:
        with self._lock:
            if not self._free:
                raise SandboxError("sandbox.unavailable",
                                   f"all {self.count} sandbox uids are in use; raise STOCKADE_SANDBOX_UID_COUNT")
            uid = self._free.pop()
            self._used.add(uid)
            return uid

    def release(self, uid: int) -> None:
        with self._lock:
            if uid not in self._used:
                raise ValueError(f"uid {uid} was not acquired from this pool")
            self._used.remove(uid)
            self._free.append(uid)

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and self.base <= uid < self.base + self.count

    @property
    def in_use(self) -> int:
        with self._lock:
            return len(self._used)


@dataclass(frozen=True)
class HostIdentity:
    uid: int  # the host uid every process of the sandbox runs as
    gid: int
    switch: bool  # True: the launcher must setuid/setgid to it (we are root)


def host_identity(spec: SandboxSpec) -> HostIdentity:
    """The identity step of the pipeline: decide and validate the host uid/gid."""
    me = os.geteuid()
    if spec.uid is None or spec.gid is None:
        if me == 0:
            # root without a pool uid would run bundle code as host root inside a userns: refuse
            raise SandboxError("sandbox.unavailable",
                               "the supervisor runs as root but no sandbox uid was given; use a UidPool")
        return HostIdentity(uid=os.getuid(), gid=os.getgid(), switch=False)
    if spec.uid in (0, _OVERFLOW_ID) or spec.gid in (0, _OVERFLOW_ID):
        raise SandboxError("sandbox.unavailable", f"uid/gid {spec.uid}/{spec.gid} may not run a sandbox")
    if me != 0:
        if spec.uid != os.getuid():
            raise SandboxError("sandbox.unavailable",
                               f"switching to uid {spec.uid} needs root; the supervisor runs as uid {me}")
        return HostIdentity(uid=spec.uid, gid=spec.gid, switch=False)
    return HostIdentity(uid=spec.uid, gid=spec.gid, switch=True)
