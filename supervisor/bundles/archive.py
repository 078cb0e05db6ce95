"""Safe extraction of uploaded bundle archives (tar.gz or zip). Archives are hostile input.

Two phases. First every member header is checked before anything touches the
disk: path (absolute → ``archive.absolute_path``; any ``..`` component, even
one that would stay inside → ``archive.path_traversal``; a control or format
character, e.g. a newline or U+202E → ``archive.invalid``), type (every symlink
and hardlink → ``archive.link``: a bundle never needs one, so we refuse them
all rather than reason about where they point; devices, fifos, sockets →
``archive.special_file``), count (``archive.too_many_files``, directories
included) and declared sizes (``archive.too_large``). Then regular files are
written member by member with ``O_EXCL | O_NOFOLLOW`` while the bytes actually
decompressed are counted, because zip headers can lie. A gzip stream is
inflated with a hard cap first, so a gzip bomb (or an oversized tar header
such as a pax record) stops at the cap instead of exhausting memory.
``tarfile.data_filter`` runs on every tar member as a second layer.

Found by fuzzing, each refused as ``archive.invalid`` unless said otherwise
(tests/bundles/test_archive_fuzz_findings.py): zip members compressed with
anything but stored or deflate (``zipfile`` inflates bzip2 and lzma without an
output cap: kilobytes became gigabytes in memory); pax headers over 64 KB or not
made of well-formed records (CPython < 3.11.10 parses them with backtracking
regexes: a 300-byte upload cost an hour of CPU); sparse tar members
(``archive.special_file``; their map is read whole into memory); more than 1024
gzip members; member paths nested deeper than registration allows. Folders a
member's path implies count as entries (``archive.too_many_files``), since they
are created too. Whatever the archive reader raises while a member's bytes are
read is the archive's fault (``archive.invalid``), never a server error.

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
from typing import IO, Any, TypeVar

from supervisor.bundles._snapshot import _MAX_DEPTH
from supervisor.errors import StockadeError
from supervisor.hidden_chars import hidden_char

__all__ = ["extract_archive", "sniff_archive"]

_T = TypeVar("_T")

_CHUNK = 1 << 16
_TAR_OVERHEAD_PER_MEMBER = 4096  # header + pax/longname records + block padding
_BAD_NAME_ERRNOS = {errno.ENAMETOOLONG, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EINVAL, errno.EILSEQ}
_DRIVE = re.compile(r"^[A-Za-z]:")
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_MAX_PAX_BYTES = 64 * 1024  # one pax extended header; real ones hold a path, times, a few xattrs
_LONG_DIGIT_RUN = re.compile(rb"[0-9]{33}")
_MAX_GZIP_MEMBERS = 1024  # tools write one; concatenations a few
_MAX_PARTS = _MAX_DEPTH + 2  # the folders a bundle may nest (as registration allows), a top folder, the file


@dataclass(frozen=True)
class _Member:
    parts: tuple[str, ...]
    is_dir: bool
    size: int
    open: Callable[[], IO[bytes]] | None  # None for directories


def sniff_archive(data: bytes) -> str:
    """``"tar.gz"``, ``"tar"`` (POSIX/GNU, by its ``ustar`` magic) or ``"zip"`` from the magic bytes;
    else ``archive.invalid``."""
    if data[:2] == b"\x1f\x8b":
        return "tar.gz"
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if data[257:262] == b"ustar":  # the upload route takes application/x-tar: a plain tar too
        return "tar"
    raise StockadeError("archive.invalid", "the upload is neither a tar.gz, a tar nor a zip archive")


def _invalid(message: str) -> StockadeError:
    return StockadeError("archive.invalid", message)


def _member_parts(raw: str) -> tuple[str, ...]:
    shown = raw[:200]
    if "\x00" in raw:
        raise _invalid(f"archive member name {shown!r} contains a NUL byte")
    bad = hidden_char(raw)  # "a\nb.py", an escape sequence, a bidi override, a name not UTF-8 (surrogates)
    if bad is not None:
        raise _invalid(f"archive member name {shown!r} holds a control or format character (U+{ord(bad):04X})")
    name = raw.replace("\\", "/")  # Windows-made zips use backslashes as separators
    if name.startswith("/") or _DRIVE.match(name):
        raise StockadeError("archive.absolute_path", f"archive member {shown!r} has an absolute path", member=shown)
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise StockadeError("archive.path_traversal", f"archive member {shown!r} contains '..'", member=shown)
    if any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts) or len(name) > 1024:
        raise _invalid(f"archive member name {shown!r} is too long")
    if len(parts) > _MAX_PARTS:  # 1000 members 500 folders deep were 500 000 mkdirs from a 20 KB upload
        raise _invalid(f"archive member {shown!r} is nested more than {_MAX_DEPTH} folders deep")
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


def _gunzip(data: bytes, limit: int, max_bytes: int) -> bytes:
    """Inflate every gzip member of ``data``, refusing once the output passes ``limit`` (``max_bytes``, the
    configured limit the refusal names, plus room for the tar headers).

    Linear in the upload: the input is fed in slices of at most ``_CHUNK`` bytes, so neither
    ``unconsumed_tail`` nor ``unused_data`` ever copies more than one slice (feeding the whole rest
    made each of many small members copy everything after it: quadratic, minutes for 10 MB).
    """
    out = bytearray()
    view = memoryview(data)
    pos, end, members = 0, len(data), 0
    try:
        while pos < end:
            if view[pos:pos + 2] != b"\x1f\x8b" and not view[pos:].tobytes().strip(b"\x00"):
                break  # zero padding after the last member (some tools add it)
            members += 1
            if members > _MAX_GZIP_MEMBERS:
                raise _invalid(f"the gzip stream has more than {_MAX_GZIP_MEMBERS} members")
            d = zlib.decompressobj(wbits=31)
            while not d.eof:
                if pos >= end:
                    raise _invalid("the gzip stream is truncated")
                pending = view[pos:pos + _CHUNK]
                pos += len(pending)
                while True:
                    piece = d.decompress(pending, _CHUNK)
                    out += piece
                    if len(out) > limit:
                        raise StockadeError("archive.too_large", f"the archive unpacks to more than {max_bytes} bytes")
                    pending = d.unconsumed_tail
                    if d.eof or (not pending and len(piece) < _CHUNK):
                        break
            pos -= len(d.unused_data)  # the bytes after this member, given back
    except zlib.error as exc:
        raise _invalid(f"the gzip stream is corrupt: {exc}") from None
    return bytes(out)


def _check_pax_records(buf: bytes) -> None:
    """A pax header must be well-formed ``"<len> <key>=<value>\\n"`` records, checked in linear time.

    CPython before 3.11.10 / 3.12.6 parses pax headers with backtracking regular expressions
    (CVE-2024-6232): a header of a long run of digits, or of records without ``=``, costs quadratic
    time (a 64 KB header: about 4 s; the 20 MB a bomb cap allows: days). Once the records are
    well-formed and no digit run is long, those expressions run in linear time.
    """
    pos, end = 0, len(buf)
    while pos < end and buf[pos] != 0:  # NUL padding fills the block after the records
        sp = buf.find(b" ", pos, pos + 12)
        if sp <= pos or not buf[pos:sp].isdigit():
            raise _invalid("a pax header record has no valid length")
        stop = pos + int(buf[pos:sp])
        eq = buf.find(b"=", sp + 1, stop)
        if stop > end or stop <= sp + 2 or buf[stop - 1] != 0x0A or eq <= sp + 1:
            raise _invalid("a pax header record is malformed")
        if buf[sp + 1:eq].startswith(b"GNU.sparse."):
            raise _sparse()
        pos = stop
    if _LONG_DIGIT_RUN.search(buf):
        raise _invalid("a pax header holds an implausibly long number")


def _sparse() -> StockadeError:
    # a sparse member's map is read whole into Python lists: 20 KB of gzip made a 1 GB map
    return StockadeError("archive.special_file", "sparse files are not allowed in bundles")


class _TarInfo(tarfile.TarInfo):
    """Refuses sparse members, and bounds and pre-checks every pax header before ``tarfile``
    parses it (see ``_check_pax_records``)."""

    def _proc_sparse(self, tf: tarfile.TarFile) -> tarfile.TarInfo:  # old GNU sparse members ('S')
        raise _sparse()

    def _proc_pax(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        if self.size > _MAX_PAX_BYTES:
            raise _invalid(f"a pax header of {self.size} bytes is larger than {_MAX_PAX_BYTES}")
        fileobj: Any = tf.fileobj
        start = fileobj.tell()
        _check_pax_records(fileobj.read(self._block(self.size)))  # type: ignore[attr-defined]
        fileobj.seek(start)
        return super()._proc_pax(tf)  # type: ignore[misc, no-any-return]


def _tar_members(data: bytes, dest: Path, max_files: int, max_bytes: int, *, gzipped: bool = True) -> list[_Member]:
    overhead = (max_files + 2) * _TAR_OVERHEAD_PER_MEMBER + (1 << 20)
    raw = _gunzip(data, max_bytes + overhead, max_bytes) if gzipped else data
    try:
        tf = tarfile.open(fileobj=io.BytesIO(raw), mode="r:", tarinfo=_TarInfo)
        infos: list[tarfile.TarInfo] = []
        for info in tf:  # headers are parsed lazily: stop at the first one over the count
            infos.append(info)
            if len(infos) > max_files:
                break
    except (tarfile.TarError, EOFError, ValueError, UnicodeError) as exc:
        raise _invalid(f"not a valid tar archive: {exc}") from None
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
        if info.compress_type not in _ZIP_METHODS:
            # bzip2 and lzma members are inflated by zipfile without an output cap (a few KB of bzip2
            # claiming 1 KB unpack to gigabytes in memory before the claim is checked): refused
            raise _invalid(f"archive member {info.filename[:200]!r} uses zip compression method "
                           f"{info.compress_type}; only stored and deflate are supported")
        if not parts or parts[0] == "__MACOSX":  # macOS resource forks, never part of a bundle
            continue
        is_dir = info.is_dir() or kind == stat.S_IFDIR
        opener = None if is_dir else (lambda i=info: zf.open(i))  # type: ignore[misc]
        checked.append(_Member(parts, is_dir, 0 if is_dir else info.file_size, opener))
    return checked


class _Writer:
    def __init__(self, dest: Path, max_files: int, max_bytes: int) -> None:
        self.dest = dest
        self.max_files = max_files
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
        if len(self.files | self.dirs | parents) > self.max_files + 1:  # + the top folder stripped below
            # folders only implied by a member's path are created too, and registration counts them
            raise StockadeError("archive.too_many_files", f"the archive has more than {self.max_files} entries "
                                "(folders included)")
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
            with _reading(m, m.open) as src:
                while chunk := _reading(m, src.read, _CHUNK):
                    self.total += len(chunk)  # what was really inflated, not what the header claimed
                    if self.total > self.max_bytes:
                        raise self._too_large()
                    os.write(fd, chunk)  # errors here (a full disk) are ours, not the archive's
        finally:
            os.close(fd)


def _reading(m: _Member, fn: Callable[..., _T], *args: Any) -> _T:
    """Call the archive reader: whatever it raises on hostile bytes (``ValueError: negative seek
    value`` from a zip whose central directory points before the file, ``OSError`` from a corrupt
    stream, ...) is the archive's fault, so ``archive.invalid`` rather than a server error."""
    try:
        return fn(*args)
    except MemoryError:
        raise
    except Exception as exc:
        raise _invalid(f"archive member {'/'.join(m.parts)[:200]!r} is corrupt: {exc}") from None


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
        if kind in ("tar.gz", "tar"):
            members = _tar_members(data, dest, max_files, max_bytes, gzipped=kind == "tar.gz")
        else:
            members = _zip_members(data, max_files)
        writer = _Writer(dest, max_files, max_bytes)
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
