"""Bytes and entries under the work dir (the work-dir quota is enforced by scanning; see README)."""

from __future__ import annotations

import os

__all__ = ["usage"]


def usage(root: str, max_entries: int) -> tuple[int, int]:
    """(bytes allocated, entries) under ``root``, stopping early past ``max_entries``. Never follows symlinks."""
    total = entries = 0
    stack = [root]
    while stack:
        path = stack.pop()
        try:
            it = os.scandir(path)
        except OSError:
            continue
        with it:
            for e in it:
                entries += 1
                if entries > max_entries:
                    return total, entries
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                total += st.st_blocks * 512
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
    return total, entries
