"""A worker's claim on its sandbox uid range, so that two workers on one host never share uids.

Two ``stockade worker`` processes left at the same ``STOCKADE_SANDBOX_UID_BASE`` (both at the default,
or a copied compose service) handed the same uids to runs of different tenants: one run's processes
counted against the other's RLIMIT_NPROC (a fork bomb in one tenant's bundle crashed the other worker's
runs), could signal them, and each worker's start-up reaped the other's live sandboxes as orphans.

The claim is a write lock on the bytes ``[base, base + count)`` of one host-wide file
(``/run/stockade/sandbox-uids.lock``): overlapping ranges conflict, disjoint ones do not. It is an
open-file-description lock (``F_OFD_SETLK``): it conflicts between processes - and between two claims
of one process that overlap without being the same range - and goes with the process, however it
ends (no stale lock after a crash). Claims of the very same range in one process share one lock
(the in-process nodes of a test run). Workers in separate containers see separate ``/run``s: give each
its own base there, as compose.yaml does.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import threading
from pathlib import Path

from sandbox.errors import SandboxError

__all__ = ["DEFAULT_LOCK_FILE", "UidClaim", "claim_uid_range"]

DEFAULT_LOCK_FILE = Path("/run/stockade/sandbox-uids.lock")
_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)  # Linux; the constant since Python 3.9
_FLOCK = "hhqqi4x"  # struct flock on 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid (+ padding)

_held: dict[tuple[str, int, int], list[int]] = {}  # (file, base, count) -> [fd, claims]
_guard = threading.Lock()


class UidClaim:
    def __init__(self, key: tuple[str, int, int]) -> None:
        self._key: tuple[str, int, int] | None = key

    def release(self) -> None:
        with _guard:
            if self._key is None:
                return
            held = _held[self._key]
            held[1] -= 1
            if held[1] == 0:
                os.close(held[0])  # the lock goes with its open file description
                del _held[self._key]
            self._key = None


def claim_uid_range(base: int, count: int, lock_file: Path = DEFAULT_LOCK_FILE) -> UidClaim:
    """Claim ``[base, base + count)`` on this host, or ``SandboxError("sandbox.uids_taken")``."""
    key = (str(lock_file), base, count)
    with _guard:
        if key in _held:
            _held[key][1] += 1
            return UidClaim(key)
        lock_file.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.fcntl(fd, _F_OFD_SETLK, struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, base, count, 0))
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise SandboxError(
                    "sandbox.uids_taken",
                    f"sandbox uids {base}..{base + count - 1} overlap the range of another Stockade worker on this "
                    "host: give each worker its own STOCKADE_SANDBOX_UID_BASE (ranges of STOCKADE_SANDBOX_UID_COUNT "
                    "uids that do not overlap)") from None
            raise
        _held[key] = [fd, 1]
        return UidClaim(key)
