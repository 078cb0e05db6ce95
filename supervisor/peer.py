"""Who is on the other end of a run's socket? Asked of the kernel, never of the peer.

On accept the supervisor reads SO_PEERCRED (pid, uid, gid as of connect()) and,
where the kernel offers it, SO_PEERPIDFD (option 77; Python 3.11 lacks the
constant): a pidfd naming exactly the connecting process, immune to pid reuse.
The peer is accepted only if it is alive, is a descendant of the run's bwrap
process and (when the run has its own uid) runs as that uid. A peer that has
already been reaped still yields a pidfd; its fdinfo then says ``Pid: -1``.
Keep the pidfd for the connection's lifetime (``PeerIdentity.close()`` at the end)
and use ``peer_alive`` to ask again later.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from dataclasses import dataclass

from supervisor.errors import StockadeError

__all__ = ["SO_PEERPIDFD", "PeerIdentity", "peer_alive", "verify_peer"]

SO_PEERPIDFD = 77
_OVERFLOW_UID = 65534
_MAX_DEPTH = 64  # bwrap -> pid 1 -> command -> ... ; a deeper chain is not worth walking


@dataclass(frozen=True)
class PeerIdentity:
    pid: int  # as the supervisor's pid namespace sees it
    uid: int
    gid: int
    pidfd: int | None  # owned by the caller once returned

    def close(self) -> None:
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)


def _reject(reason: str, pidfd: int | None = None) -> StockadeError:
    if pidfd is not None:
        with contextlib.suppress(OSError):
            os.close(pidfd)
    return StockadeError("peer.rejected", reason)


def _pidfd_pid(pidfd: int) -> int | None:
    """The pid a pidfd refers to now: -1 once the process is gone; None if unknown."""
    try:
        with open(f"/proc/self/fdinfo/{pidfd}") as f:
            for line in f:
                if line.startswith("Pid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("PPid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return line.split()[1] in ("Z", "X")
    except (OSError, IndexError):
        return True
    return True


def _descends_from(pid: int, ancestor: int) -> bool:
    cur = pid
    for _ in range(_MAX_DEPTH):
        parent = _ppid(cur)
        if parent is None or parent <= 0:
            return False
        if parent == ancestor:
            return True
        cur = parent
    return False


def _peer_pidfd(sock: socket.socket) -> int | None:
    try:
        fd = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError:
        return None  # kernel older than 6.5: pid + ancestry alone
    return fd if fd >= 0 else None


def verify_peer(sock: socket.socket, *, expected_uid: int | None, sandbox_pid: int) -> PeerIdentity:
    """Accept the peer of ``sock`` as the sandbox rooted at ``sandbox_pid`` or raise ``peer.rejected``."""
    if sock.family != socket.AF_UNIX:
        raise _reject("the run's socket is not a Unix socket")
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    if pid <= 0:
        raise _reject("the peer's pid is not visible from the supervisor's pid namespace")
    if uid == _OVERFLOW_UID and expected_uid != _OVERFLOW_UID:
        raise _reject("the peer's uid is not mapped into the supervisor's user namespace")
    if expected_uid is not None and uid != expected_uid:
        raise _reject(f"the peer runs as uid {uid}, not as the run's uid")
    if pid == sandbox_pid:
        raise _reject("the peer is the sandbox launcher itself, not a process inside the sandbox")
    pidfd = _peer_pidfd(sock)
    if pidfd is not None:
        now = _pidfd_pid(pidfd)
        if now is not None and now != pid:
            raise _reject("the peer process has exited" if now == -1 else "the peer's pidfd names another process",
                          pidfd)
    if _zombie_or_gone(pid):
        # it connected, then exited (perhaps handing the socket to another process): not this peer any more
        raise _reject("the peer process has exited", pidfd)
    if not _descends_from(pid, sandbox_pid):
        raise _reject("the peer is not a process of this run's sandbox", pidfd)
    # Re-check after the walk: if the peer had died meanwhile its pid could name someone else.
    if pidfd is not None and _pidfd_pid(pidfd) != pid:
        raise _reject("the peer process has exited", pidfd)
    return PeerIdentity(pid=pid, uid=uid, gid=gid, pidfd=pidfd)


def peer_alive(identity: PeerIdentity) -> bool:
    """Is the verified peer still running (not exited, not merely a zombie's pid reused)?"""
    if identity.pidfd is not None:
        now = _pidfd_pid(identity.pidfd)
        if now is not None and now != identity.pid:
            return False
    return not _zombie_or_gone(identity.pid)
