"""What a run holds on the work dir's filesystem (the work-dir quota is enforced by scanning; see README).

Two parts, both needed:

- the tree under the work dir: bytes allocated and entries (``usage``). A directory the scan cannot
  enter - nested past PATH_MAX on the host (ENAMETOOLONG), or made unreadable to the scanning uid -
  would hide everything below it, so the scan reports itself ``blind`` and the run ends.
- files on that filesystem that have no name any more but still take space: unlinked while open or
  mapped, or made with ``O_TMPFILE`` (``held_deleted``). The sandbox's processes are found from its
  pid 1 through the kernel's children lists, and their descriptors and mappings are stat'ed through
  /proc (never opened).

Never follows symlinks.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass

__all__ = ["Usage", "held_deleted", "namespace_pids", "usage"]

_RACED = (errno.ENOENT, errno.ENOTDIR)  # removed or replaced between listing and scanning: nothing hidden


@dataclass(frozen=True)
class Usage:
    bytes: int
    entries: int
    blind: str | None = None  # why a part of the tree could not be scanned (the run must end)


def usage(root: str, max_entries: int) -> Usage:
    """Bytes allocated and entries under ``root``, stopping early past ``max_entries``."""
    total = entries = 0
    stack = [root]
    while stack:
        path = stack.pop()
        try:
            it = os.scandir(path)
        except OSError as exc:
            if exc.errno in _RACED and path != root:
                continue
            return Usage(total, entries, blind=f"{os.strerror(exc.errno or 0)} ({len(path)} characters deep)")
        with it:
            for e in it:
                entries += 1
                if entries > max_entries:
                    return Usage(total, entries)
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError as exc:
                    if exc.errno in _RACED:
                        continue
                    return Usage(total, entries, blind=f"{os.strerror(exc.errno or 0)} ({len(e.path)} characters deep)")
                total += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
    return Usage(total, entries)


def namespace_pids(init_pid: int) -> list[int]:
    """``init_pid`` and its descendants: every process of the sandbox (orphans reparent to its pid 1)."""
    seen = {init_pid}
    todo = [init_pid]
    while todo:
        pid = todo.pop()
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError, ValueError):
                    with open(f"/proc/{pid}/task/{tid}/children") as f:
                        for child in map(int, f.read().split()):
                            if child not in seen:
                                seen.add(child)
                                todo.append(child)
    return sorted(seen)


def held_deleted(pids: list[int], dev: int, unknown_size: int) -> tuple[int, str | None]:
    """Bytes of files on ``dev`` with no link left that ``pids`` hold open or mapped; and a reason if blind.

    A mapped deleted file whose size cannot be read (``map_files`` needs root) counts as
    ``unknown_size`` (the largest file the run may write).
    """
    sizes: dict[int, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except PermissionError:
            if _exited(pid):
                continue  # a zombie's /proc belongs to root; it holds no file any more
            return 0, f"the descriptors of sandbox process {pid} cannot be read"
        except OSError:
            continue  # exited meanwhile
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")  # the file itself, not opened
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 0 and st.st_dev == dev:
                sizes[st.st_ino] = st.st_blocks * 512
        try:
            with open(f"/proc/{pid}/maps", "rb") as f:
                maps = f.read()  # up to vm.max_map_count lines: scanned in C, split only when one matches
        except PermissionError:
            if _exited(pid):
                continue
            return 0, f"the mappings of sandbox process {pid} cannot be read"
        except OSError:
            continue
        if b" (deleted)\n" not in maps:
            continue
        deleted = [line.decode(errors="replace").split() for line in maps.splitlines() if line.endswith(b" (deleted)")]
        for fields in deleted:
            if len(fields) < 6 or fields[4] == "0":
                continue  # anonymous shared memory: memory, not disk
            try:
                st = os.stat(f"/proc/{pid}/map_files/{fields[0]}")
            except PermissionError:
                # only root may stat map_files: judge by the maps line (device, or the path inside)
                major, _, minor = fields[3].partition(":")
                with contextlib.suppress(ValueError):
                    if os.makedev(int(major, 16), int(minor, 16)) == dev or fields[5].startswith("/work/"):
                        sizes.setdefault(int(fields[4]), unknown_size)
                continue
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 0 and st.st_dev == dev:
                sizes[st.st_ino] = st.st_blocks * 512
    return sum(sizes.values()), None


def _exited(pid: int) -> bool:
    """A zombie (or gone): its descriptors and mappings are already released."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True
