"""Can a given host uid reach a path? (bwrap runs as the run's uid, so its bind sources must be reachable.)"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["unreachable_part"]


def unreachable_part(path: Path, uid: int, gid: int, *, need_read: bool = False) -> Path | None:
    """The first directory on the way to ``path`` that ``uid``/``gid`` may not search (None: all fine).

    Checks classic mode bits only (no ACLs), which is what decides for the pool uids
    the supervisor creates: they own nothing on the host.
    """
    path = Path(os.path.realpath(path))
    parts = [*reversed(path.parents), path]
    for i, part in enumerate(parts):
        try:
            st = os.stat(part)
        except OSError:
            return part
        last = i == len(parts) - 1
        if not stat.S_ISDIR(st.st_mode) and not last:
            return part
        want = 0
        if stat.S_ISDIR(st.st_mode):
            want |= 1  # search
        if last and need_read:
            want |= 4
        if not want:
            continue
        if st.st_uid == uid:
            bits = (st.st_mode >> 6) & 7
        elif st.st_gid == gid:
            bits = (st.st_mode >> 3) & 7
        else:
            bits = st.st_mode & 7
        if bits & want != want:
            return part
    return None
