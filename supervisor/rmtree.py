"""``remove_tree``: ``shutil.rmtree(path, ignore_errors=True)`` for a tree a sandbox made, of any depth.

Before Python 3.12 ``shutil.rmtree`` recurses once per directory level: a tree ~1,000 deep (sandboxed
code makes one in milliseconds) raises ``RecursionError`` - ``ignore_errors`` or not - and whatever the
caller meant to do after it (give a uid back to its pool) was skipped. The common case still goes
through ``shutil.rmtree``; what it leaves is flattened: every directory is moved into one staging
directory at the top (renamed by directory descriptor, never by path: no path grows past PATH_MAX, no
link is followed), emptied and removed, with three descriptors open at most.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path

__all__ = ["remove_tree"]

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything under it, as far as possible; never raises."""
    try:
        shutil.rmtree(path, ignore_errors=True)
        return
    except RecursionError:
        pass
    with contextlib.suppress(OSError):
        _flatten(path)
    with contextlib.suppress(OSError):
        shutil.rmtree(path, ignore_errors=True)  # all shallow now


def _flatten(path: Path) -> None:
    top = os.open(path, _DIR)
    try:
        stage_name = ".rmtree-" + secrets.token_hex(8)
        os.mkdir(stage_name, 0o700, dir_fd=top)
        stage = os.open(stage_name, _DIR, dir_fd=top)
        try:
            moved = 0
            queue: list[str] = []

            def empty(fd: int, skip: str | None = None) -> None:
                nonlocal moved
                with os.scandir(fd) as it:
                    entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
                for name, is_dir in entries:
                    if name == skip:
                        continue
                    with contextlib.suppress(OSError):
                        if is_dir:
                            moved += 1
                            os.rename(name, str(moved), src_dir_fd=fd, dst_dir_fd=stage)  # stage names are ours
                            queue.append(str(moved))
                        else:
                            os.unlink(name, dir_fd=fd)

            empty(top, skip=stage_name)
            while queue:
                name = queue.pop()
                with contextlib.suppress(OSError):
                    fd = os.open(name, _DIR, dir_fd=stage)
                    try:
                        empty(fd)
                    finally:
                        os.close(fd)
                    os.rmdir(name, dir_fd=stage)
        finally:
            os.close(stage)
        os.rmdir(stage_name, dir_fd=top)
    finally:
        os.close(top)
