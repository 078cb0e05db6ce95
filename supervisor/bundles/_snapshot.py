"""Read a bundle folder into memory once: the bytes we validate, hash and store are the same bytes.

Reading each file exactly once closes the gap between "validated" and
"copied" (a file edited mid-registration cannot slip into the store under a
digest of other content). Links and special files are refused, like in
archives, and so are hard links (a hard link can name any file on the volume,
e.g. a key in the data folder); the folder given may itself be a symlink
(operators link bundles in), nothing inside it may.

A file or folder whose mode lets nobody read it (``chmod 000``) is refused as
unreadable even when the server runs as root: as another user it would be, and
the stored copy is readable by every sandbox. Paths are capped like archive
member names (``_MAX_PATH`` bytes), so every one can be written under the store, and
like them may hold no control or format character (``_chars.py``).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from supervisor.bundles._ignore import is_ignored
from supervisor.errors import StockadeError
from supervisor.hidden_chars import hidden_char

__all__ = ["snapshot_dir"]

_CHUNK = 1 << 16


def _fail(message: str) -> StockadeError:
    return StockadeError("bundle.invalid", message)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_MAX_DEPTH = 64
_MAX_IGNORED = 10_000  # names listed but left out (.pyc, dotfiles): only this many more than the files allowed
_MAX_PATH = 1024  # bytes of a relative path, as for archive members: deep, long names past PATH_MAX cannot be stored


class _Walk:
    """Walks by file descriptor (``dir_fd`` + ``O_NOFOLLOW``), never by path: a folder swapped for a
    link after it was listed cannot lead the walk out of the bundle."""

    def __init__(self, max_files: int, max_bytes: int, max_path: int = _MAX_PATH) -> None:
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.max_path = max_path
        self.entries = 0
        self.listed = 0
        self.total = 0
        self.files: dict[str, bytes] = {}

    def count(self, rel: str) -> None:
        self.entries += 1
        if self.entries > self.max_files:
            raise _fail(f"the bundle has more than {self.max_files} files")
        if len(rel.encode("utf-8")) > self.max_path:
            raise _fail(f"a path in the bundle is too long (more than {self.max_path} bytes): {rel[:80]!r}...")
        bad = hidden_char(rel)  # as archive member names (supervisor/bundles/_chars.py)
        if bad is not None:
            raise _fail(f"the name {rel[:200]!r} holds a control or format character (U+{ord(bad):04X})")

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
            _check_readable(st, rel, "read")
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
            _check_readable(os.fstat(fd), rel, "list")
            self.walk(fd, rel + "/", depth)
        finally:
            os.close(fd)

    def _list(self, dir_fd: int) -> list[os.DirEntry[str]]:
        """The folder's entries, refused once past what the caps allow: a folder of millions of ignored
        names would otherwise be held (and sorted) in memory whole before the file count stops it."""
        entries: list[os.DirEntry[str]] = []
        with os.scandir(dir_fd) as it:
            for entry in it:
                self.listed += 1
                if self.listed > self.max_files + _MAX_IGNORED:
                    raise _fail(f"the bundle has more than {self.max_files} files (or {_MAX_IGNORED} ignored names)")
                entries.append(entry)
        return entries

    def walk(self, dir_fd: int, prefix: str, depth: int = 0) -> None:
        try:
            entries = sorted(self._list(dir_fd), key=lambda e: e.name)
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
                self.count(rel)
                self.enter(dir_fd, name, rel, depth + 1)
            elif entry.is_file(follow_symlinks=False):
                if is_ignored(name, is_dir=False):
                    continue
                self.count(rel)
                self.read(dir_fd, name, rel)
            elif not is_ignored(name, is_dir=False):
                raise _fail(f"{rel} is a device, fifo or socket; only files and folders are allowed")


def _check_readable(st: os.stat_result, rel: str, verb: str) -> None:
    if not st.st_mode & 0o444:  # root reads it anyway; nobody else could
        raise _fail(f"cannot {verb} {rel or 'the bundle folder'}: Permission denied (mode {stat.S_IMODE(st.st_mode):04o})")


def _check_outside(fd: int, src: Path, store: Path) -> None:
    """The folder opened (after its links) must not be the store or inside it: a bundle folder linked
    to a stored version would republish one tenant's bundle to others."""
    try:
        real = Path(os.readlink(f"/proc/self/fd/{fd}"))  # what was opened, not what the path says now
    except OSError:
        real = Path(os.path.realpath(src))
    try:
        st = os.stat(store)
    except OSError:
        return  # no store yet: nothing registered to republish
    root = (st.st_dev, st.st_ino)
    # by device and inode, not by path: a bind mount of the data folder is the store under another name
    for p in (real, *real.parents):
        try:
            pst = os.stat(p)
        except OSError:
            continue
        if (pst.st_dev, pst.st_ino) == root:
            raise _fail("the bundle folder is inside the bundle store (a link to a registered version?)")


def snapshot_dir(
    src: Path, *, max_files: int, max_bytes: int, max_path: int = _MAX_PATH, outside: Path | None = None
) -> dict[str, bytes]:
    """{relative posix path: bytes} of every non-ignored file under ``src`` (refused if ``src`` is
    in the folder ``outside``)."""
    if not src.is_dir():
        raise _fail(f"bundle folder {src.name or str(src)!r} not found")
    walk = _Walk(max_files, max_bytes, max_path)
    try:
        fd = os.open(src, _DIR_FLAGS)  # the folder itself may be a link (operators link bundles in)
    except OSError as exc:
        raise _fail(f"cannot list the bundle folder: {exc.strerror}") from None
    try:
        if outside is not None:
            _check_outside(fd, src, outside)
        _check_readable(os.fstat(fd), "", "list")
        walk.walk(fd, "")
    finally:
        os.close(fd)
    return walk.files
