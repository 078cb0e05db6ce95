"""Safe extraction of uploaded bundle archives (tar.gz or zip). Archives are hostile input.

Two phases. First every member header is checked before anything touches the
disk: path (absolute → ``archive.absolute_path``; any ``..`` component, even
one that would stay inside → ``archive.path_traversal``), type (every symlink
and hardlink → ``archive.link``: a bundle never needs one, so we refuse them
all rather than reason about where they point; devices, fifos, sockets →
``archive.special_file``), count (``archive.too_many_files``, directories
included) and declared sizes (``archive.too_large``). Then regular files are
written member by member with ``O_EXCL | O_NOFOLLOW`` while the bytes actually
decompressed are counted, because zip headers can lie. A gzip stream is
inflated with a hard cap first, so a gzip bomb (or an oversized tar header
such as a pax record) stops at the cap instead of exhausting memory.
``tarfile.data_filter`` runs on every tar member as a second layer.

A single top-level folder is stripped (a bundle packed as ``my-bundle/...``).
On any refusal the destination directory is removed: nothing is left behind.
"""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from supervisor.errors import StockadeError

__all__ = ["extract_archive", "sniff_archive"]

_CHUNK = 1 << 16
_TAR_OVERHEAD_PER_MEMBER = 4096  # header + pax/longname records + block padding
_BAD_NAME_ERRNOS = {errno.ENAMETOOLONG, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EINVAL, errno.EILSEQ}
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class _Member:
    parts: tuple[str, ...]
    is_dir: bool
    size: int
    open: Callable[[], IO[bytes]] | None  # None for directories


def sniff_archive(data: bytes) -> str:
    """``"tar.gz"`` or ``"zip"`` from the magic bytes; else ``archive.invalid``."""
    if data[:2] == b"\x1f\x8b":
        return "tar.gz"
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    raise StockadeError("archive.invalid", "the upload is neither a tar.gz nor a zip archive")


def _invalid(message: str) -> StockadeError:
    return StockadeError("archive.invalid", message)


def _member_parts(raw: str) -> tuple[str, ...]:
    shown = raw[:200]
    if "\x00" in raw:
        raise _invalid(f"archive member name {shown!r} contains a NUL byte")
    name = raw.replace("\\", "/")  # Windows-made zips use backslashes as separators
    if name.startswith("/") or _DRIVE.match(name):
        raise StockadeError("archive.absolute_path", f"archive member {shown!r} has an absolute path", member=shown)
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise StockadeError("archive.path_traversal", f"archive member {shown!r} contains '..'", member=shown)
    if any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts) or len(name) > 1024:
        raise _invalid(f"archive member name {shown!r} is too long")
    return parts


def _link(name: str) -> StockadeError:
    return StockadeError("archive.link", f"archive member {name[:200]!r} is a link; links are not allowed in bundles",
                         member=name[:200])


def _special(name: str) -> StockadeError:
    return StockadeError("archive.special_file",
                         f"archive member {name[:200]!r} is a device, fifo or other special file", member=name[:200])


# ``tarfile.data_filter`` (Python >= 3.11.4) is a second layer behind our own member checks. Debian 12
# ships 3.11.2 without it; there the first layer (every member vetted before anything is written) stands alone.
_HAS_DATA_FILTER = hasattr(tarfile, "data_filter")
_FILTER_CODES: tuple[tuple[type[Exception], str], ...] = (
    (tarfile.AbsolutePathError, "archive.absolute_path"),
    (tarfile.OutsideDestinationError, "archive.path_traversal"),
    (tarfile.SpecialFileError, "archive.special_file"),
    (tarfile.AbsoluteLinkError, "archive.link"),
    (tarfile.LinkOutsideDestinationError, "archive.link"),
) if _HAS_DATA_FILTER else ()


def _second_layer(info: tarfile.TarInfo, dest: Path) -> None:
    if not _HAS_DATA_FILTER:
        return
    try:
        tarfile.data_filter(info, str(dest))
    except tarfile.FilterError as exc:
        code = next((c for t, c in _FILTER_CODES if isinstance(exc, t)), "archive.invalid")
        raise StockadeError(code, f"archive member {info.name[:200]!r} refused: {exc}") from None


def _gunzip(data: bytes, limit: int) -> bytes:
    """Inflate every gzip member of ``data``, refusing once the output passes ``limit``."""
    out = bytearray()
    rest = data
    try:
        while rest:
            d = zlib.decompressobj(wbits=31)
            pending = rest
            while not d.eof:
                piece = d.decompress(pending, _CHUNK)
                out += piece
                if len(out) > limit:
                    raise StockadeError("archive.too_large", f"the archive unpacks to more than {limit} bytes")
                pending = d.unconsumed_tail
                if not pending and not piece:
                    raise _invalid("the gzip stream is truncated")
            rest = d.unused_data
            if rest and not rest.startswith(b"\x1f\x8b") and not rest.strip(b"\x00"):
                break  # zero padding after the last member (some tools add it)
    except zlib.error as exc:
        raise _invalid(f"the gzip stream is corrupt: {exc}") from None
    return bytes(out)


def _tar_members(data: bytes, dest: Path, max_files: int, max_bytes: int) -> list[_Member]:
    raw = _gunzip(data, max_bytes + (max_files + 2) * _TAR_OVERHEAD_PER_MEMBER + (1 << 20))
    try:
        tf = tarfile.open(fileobj=io.BytesIO(raw), mode="r:")
        infos = tf.getmembers()
    except (tarfile.TarError, EOFError, ValueError, UnicodeError) as exc:
        raise _invalid(f"not a valid tar archive inside the gzip stream: {exc}") from None
    if len(infos) > max_files:
        raise StockadeError("archive.too_many_files", f"the archive has more than {max_files} entries")
    checked: list[_Member] = []
    for info in infos:
        parts = _member_parts(info.name)
        if info.issym() or info.islnk():
            raise _link(info.name)
        if not (info.isreg() or info.isdir()):
            raise _special(info.name)
        if parts:
            _second_layer(info, dest)
            opener = None if info.isdir() else (lambda i=info: tf.extractfile(i))  # type: ignore[misc]
            checked.append(_Member(parts, info.isdir(), 0 if info.isdir() else info.size, opener))
    return checked


def _zip_members(data: bytes, max_files: int) -> list[_Member]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, EOFError, ValueError, UnicodeError, NotImplementedError) as exc:
        raise _invalid(f"not a valid zip archive: {exc}") from None
    if len(infos) > max_files:
        raise StockadeError("archive.too_many_files", f"the archive has more than {max_files} entries")
    checked: list[_Member] = []
    for info in infos:
        parts = _member_parts(info.filename)
        kind = stat.S_IFMT(info.external_attr >> 16)  # unix mode bits, when the zip was made on unix
        if kind == stat.S_IFLNK:
            raise _link(info.filename)
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise _special(info.filename)
        if info.flag_bits & 0x1:
            raise _invalid(f"archive member {info.filename[:200]!r} is encrypted")
        if not parts or parts[0] == "__MACOSX":  # macOS resource forks, never part of a bundle
            continue
        is_dir = info.is_dir() or kind == stat.S_IFDIR
        opener = None if is_dir else (lambda i=info: zf.open(i))  # type: ignore[misc]
        checked.append(_Member(parts, is_dir, 0 if is_dir else info.file_size, opener))
    return checked


class _Writer:
    def __init__(self, dest: Path, max_bytes: int) -> None:
        self.dest = dest
        self.max_bytes = max_bytes
        self.total = 0
        self.files: set[tuple[str, ...]] = set()
        self.dirs: set[tuple[str, ...]] = set()

    def _too_large(self) -> StockadeError:
        return StockadeError("archive.too_large", f"the archive unpacks to more than {self.max_bytes} bytes")

    def plan(self, members: list[_Member]) -> None:
        declared = 0
        for m in members:
            declared += m.size
            if declared > self.max_bytes:
                raise self._too_large()
            if m.is_dir:
                self.dirs.add(m.parts)
            elif m.parts in self.files:
                raise _invalid(f"archive member {'/'.join(m.parts)!r} appears twice")
            else:
                self.files.add(m.parts)
        parents = {p[:i] for p in self.files | self.dirs for i in range(1, len(p))}
        for f in self.files:
            if f in self.dirs or f in parents:
                raise _invalid(f"archive member {'/'.join(f)!r} is both a file and a folder")

    def write(self, m: _Member) -> None:
        target = self.dest.joinpath(*m.parts)
        if m.is_dir:
            target.mkdir(parents=True, exist_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        assert m.open is not None
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            with m.open() as src:
                while chunk := src.read(_CHUNK):
                    self.total += len(chunk)  # what was really inflated, not what the header claimed
                    if self.total > self.max_bytes:
                        raise self._too_large()
                    os.write(fd, chunk)
        finally:
            os.close(fd)


def _bundle_root(dest: Path) -> Path:
    visible = [p for p in dest.iterdir() if not p.name.startswith(".")]
    if len(visible) == 1 and visible[0].is_dir() and not (dest / "bundle.yaml").exists():
        return visible[0]
    return dest


def extract_archive(data: bytes, dest: Path, *, max_files: int, max_bytes: int) -> Path:
    """Unpack ``data`` into ``dest`` (created; must not exist). Returns the bundle root inside it.

    Raises ``StockadeError`` with an ``archive.*`` code; ``dest`` is then gone.
    """
    kind = sniff_archive(data)
    dest.mkdir(mode=0o700)
    try:
        if kind == "tar.gz":
            members = _tar_members(data, dest, max_files, max_bytes)
        else:
            members = _zip_members(data, max_files)
        writer = _Writer(dest, max_bytes)
        writer.plan(members)
        for m in members:
            writer.write(m)
        return _bundle_root(dest)
    except StockadeError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise _invalid(f"the archive is corrupt: {exc}") from None
    except OSError as exc:
        shutil.rmtree(dest, ignore_errors=True)
        if exc.errno in _BAD_NAME_ERRNOS:
            raise _invalid(f"the archive cannot be unpacked: {exc.strerror}") from None
        raise
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
