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
import itertools
import os
import re
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


# No run needs more: past these the scan would cost the node seconds (a run can map one page 65,530 times
# in each of its processes), so a run holding more is ended as one the scan cannot see through.
MAX_DELETED_MAPPINGS = 100_000  # lines of deleted work-dir files in the sandbox's mappings, all processes
MAX_DELETED_FILES = 4_096  # distinct such files
_IN_WORK = re.compile(rb"^(\S+) \S+ \S+ \S+ (\d+) +/work/.* \(deleted\)$", re.M)


def held_deleted(pids: list[int], dev: int, unknown_size: int) -> tuple[int, str | None]:
    """Bytes of files on ``dev`` with no link left that ``pids`` hold open or mapped; and a reason if blind.

    Every thread of each process is looked at: a thread cloned without CLONE_FILES has a descriptor table
    of its own, and a process whose main thread has exited (a zombie leader, its /proc/<pid>/fd unreadable
    and its maps empty) lives on in its other threads. A mapped deleted file whose size cannot be read
    (``map_files`` needs root) counts as ``unknown_size`` (the largest file the run may write).
    """
    sizes: dict[int, int] = {}
    mapped: dict[int, str] = {}  # inode -> a /proc map_files path of one of its mappings
    lines = 0
    dev_field = f"{os.major(dev):02x}:{os.minor(dev):02x}".encode()
    on_dev = re.compile(rb"^(\S+) \S+ \S+ " + re.escape(dev_field) + rb" (\d+) .* \(deleted\)$", re.M)
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue  # exited meanwhile
        maps_read = False
        for tid in tids:
            task = f"/proc/{pid}/task/{tid}"
            try:
                fds = os.listdir(f"{task}/fd")
            except PermissionError:
                if _exited(task):
                    continue  # a zombie's /proc belongs to root; it holds no file any more
                return 0, f"the descriptors of sandbox process {pid} (thread {tid}) cannot be read"
            except OSError:
                continue  # exited meanwhile
            for fd in fds:
                try:
                    st = os.stat(f"{task}/fd/{fd}")  # the file itself, not opened
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_nlink == 0 and st.st_dev == dev:
                    sizes[st.st_ino] = st.st_blocks * 512
            if maps_read:  # the threads of a process share its mappings: one live thread's list is all of them
                continue
            try:
                with open(f"{task}/maps", "rb") as f:
                    maps = f.read()  # up to vm.max_map_count lines: searched in C, never split
            except PermissionError:
                if _exited(task):
                    continue
                return 0, f"the mappings of sandbox process {pid} cannot be read"
            except OSError:
                continue
            if not maps:
                continue  # a zombie leader's: its live threads' list has them
            maps_read = True
            if b" (deleted)\n" not in maps:
                continue
            found = [on_dev.finditer(maps)] if dev_field in maps else []  # (memfd, shared memory: on no disk)
            if b" /work/" in maps:  # by the path the sandbox sees (the line's device may be a lower layer's)
                found.append(_IN_WORK.finditer(maps))
            for m in itertools.chain(*found):
                lines += 1
                if lines > MAX_DELETED_MAPPINGS:
                    return 0, f"more than {MAX_DELETED_MAPPINGS} mappings of deleted work-dir files"
                ino = int(m.group(2))
                if ino and ino not in mapped:
                    # (by the thread's own id: a zombie leader's map_files are empty, as its maps)
                    mapped[ino] = f"/proc/{tid}/map_files/{m.group(1).decode()}"
                    if len(mapped) > MAX_DELETED_FILES:
                        return 0, f"more than {MAX_DELETED_FILES} deleted work-dir files mapped"
    for ino, path in mapped.items():
        if ino in sizes:
            continue  # also held open: sized from its descriptor
        try:
            st = os.stat(path)
        except PermissionError:  # only root may stat map_files: the line's device (or path) says it is ours
            sizes[ino] = unknown_size
            continue
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 0 and st.st_dev == dev:
            sizes[st.st_ino] = st.st_blocks * 512
    return sum(sizes.values()), None


def _exited(task: str) -> bool:
    """The task (``/proc/<pid>/task/<tid>``) is a zombie (or gone): its descriptors and mappings are released."""
    try:
        with open(f"{task}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True
