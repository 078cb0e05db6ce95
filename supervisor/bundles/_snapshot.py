"""Read a bundle folder into memory once: the bytes we validate, hash and store are the same bytes.

Reading each file exactly once closes the gap between "validated" and
"copied" (a file edited mid-registration cannot slip into the store under a
digest of other content). Links and special files are refused, like in
archives; the folder given may itself be a symlink (operators link bundles
in), nothing inside it may.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from supervisor.bundles._ignore import is_ignored
from supervisor.errors import StockadeError

__all__ = ["snapshot_dir"]

_CHUNK = 1 << 16


def _fail(message: str) -> StockadeError:
    return StockadeError("bundle.invalid", message)


class _Walk:
    def __init__(self, max_files: int, max_bytes: int) -> None:
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.entries = 0
        self.total = 0
        self.files: dict[str, bytes] = {}

    def count(self) -> None:
        self.entries += 1
        if self.entries > self.max_files:
            raise _fail(f"the bundle has more than {self.max_files} files")

    def read(self, path: str, rel: str) -> None:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            raise _fail(f"cannot read {rel}: {exc.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped for a fifo/device after the scan
                raise _fail(f"{rel} is not a regular file")
            chunks: list[bytes] = []
            while chunk := os.read(fd, _CHUNK):
                self.total += len(chunk)
                if self.total > self.max_bytes:
                    raise _fail(f"the bundle is larger than {self.max_bytes} bytes")
                chunks.append(chunk)
        finally:
            os.close(fd)
        self.files[rel] = b"".join(chunks)

    def walk(self, path: str, prefix: str) -> None:
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as exc:
            raise _fail(f"cannot list {prefix or 'the bundle folder'}: {exc.strerror}") from None
        for entry in entries:
            name = entry.name
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise _fail(f"a file name in {prefix or 'the bundle'} is not valid UTF-8") from None
            rel = prefix + name
            if entry.is_symlink():
                if is_ignored(name, is_dir=False) or is_ignored(name, is_dir=True):
                    continue
                raise _fail(f"{rel} is a symlink; links are not allowed in bundles")
            if entry.is_dir(follow_symlinks=False):
                if is_ignored(name, is_dir=True):
                    continue
                self.count()
                self.walk(entry.path, rel + "/")
            elif entry.is_file(follow_symlinks=False):
                if is_ignored(name, is_dir=False):
                    continue
                self.count()
                self.read(entry.path, rel)
            elif not is_ignored(name, is_dir=False):
                raise _fail(f"{rel} is a device, fifo or socket; only files and folders are allowed")


def snapshot_dir(src: Path, *, max_files: int, max_bytes: int) -> dict[str, bytes]:
    """{relative posix path: bytes} of every non-ignored file under ``src``."""
    if not src.is_dir():
        raise _fail(f"bundle folder {src.name or str(src)!r} not found")
    walk = _Walk(max_files, max_bytes)
    try:
        walk.walk(str(src.resolve()), "")
    except RecursionError:
        raise _fail("the bundle folder is nested too deeply") from None
    return walk.files
