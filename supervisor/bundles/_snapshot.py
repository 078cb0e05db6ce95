"""Read a bundle folder into memory once: the bytes we validate, hash and store are the same bytes.

Reading each file exactly once closes the gap between "validated" and
"copied" (a file edited mid-registration cannot slip into the store under a
digest of other content). Links and special files are refused, like in
archives, and so are hard links (a hard link can name any file on the volume,
e.g. a key in the data folder); the folder given may itself be a symlink
(operators link bundles in), nothing inside it may.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from supervisor.bundles._ignore import is_ignored
from supervisor.errors import StockadeError

__all__ = ["snapshot_dir"]

_CHUNK = 1 << 16


def _fail(message: str) -> StockadeError:
    return StockadeError("bundle.invalid", message)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_MAX_DEPTH = 64


class _Walk:
    """Walks by file descriptor (``dir_fd`` + ``O_NOFOLLOW``), never by path: a folder swapped for a
    link after it was listed cannot lead the walk out of the bundle."""

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

    def read(self, dir_fd: int, name: str, rel: str) -> None:
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # swapped for a link after the listing
                raise _fail(f"{rel} is a symlink; links are not allowed in bundles") from None
            raise _fail(f"cannot read {rel}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # swapped for a fifo/device after the scan
                raise _fail(f"{rel} is not a regular file")
            if st.st_nlink > 1:  # a hard link can reach any file on the volume (keys, /etc/shadow)
                raise _fail(f"{rel} is a hard link; links are not allowed in bundles (copy the file instead)")
            chunks: list[bytes] = []
            while chunk := os.read(fd, _CHUNK):
                self.total += len(chunk)
                if self.total > self.max_bytes:
                    raise _fail(f"the bundle is larger than {self.max_bytes} bytes")
                chunks.append(chunk)
        except OSError as exc:
            raise _fail(f"cannot read {rel}: {exc.strerror}") from None
        finally:
            os.close(fd)
        self.files[rel] = b"".join(chunks)

    def enter(self, dir_fd: int, name: str, rel: str, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise _fail("the bundle folder is nested too deeply")
        try:
            fd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped for a link (or a file) after the listing
                raise _fail(f"{rel} is a symlink or changed while it was read; links are not allowed in bundles") from None
            raise _fail(f"cannot list {rel}: {exc.strerror}") from None
        try:
            self.walk(fd, rel + "/", depth)
        finally:
            os.close(fd)

    def walk(self, dir_fd: int, prefix: str, depth: int = 0) -> None:
        try:
            entries = sorted(os.scandir(dir_fd), key=lambda e: e.name)
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
                self.enter(dir_fd, name, rel, depth + 1)
            elif entry.is_file(follow_symlinks=False):
                if is_ignored(name, is_dir=False):
                    continue
                self.count()
                self.read(dir_fd, name, rel)
            elif not is_ignored(name, is_dir=False):
                raise _fail(f"{rel} is a device, fifo or socket; only files and folders are allowed")


def snapshot_dir(src: Path, *, max_files: int, max_bytes: int) -> dict[str, bytes]:
    """{relative posix path: bytes} of every non-ignored file under ``src``."""
    if not src.is_dir():
        raise _fail(f"bundle folder {src.name or str(src)!r} not found")
    walk = _Walk(max_files, max_bytes)
    try:
        fd = os.open(src, _DIR_FLAGS)  # the folder itself may be a link (operators link bundles in)
    except OSError as exc:
        raise _fail(f"cannot list the bundle folder: {exc.strerror}") from None
    try:
        walk.walk(fd, "")
    finally:
        os.close(fd)
    return walk.files
