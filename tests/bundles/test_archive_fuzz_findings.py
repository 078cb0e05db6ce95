"""Regressions found by fuzzing uploaded archives (session 6): each one was a 500, a hang or a memory blow-up.

Every hostile archive here must be refused with a stable ``archive.*`` code, quickly, without holding
much memory, leaving nothing behind; the well-formed look-alikes next to them must still be accepted.
"""

from __future__ import annotations

import bz2
import gzip
import io
import struct
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from supervisor.bundles.archive import extract_archive
from supervisor.errors import StockadeError
from tests.bundles._util import bundle_files, tar_gz, tar_of_files

pytestmark = pytest.mark.timeout(30)  # each refusal takes milliseconds; before the fixes some took hours

MB = 1024 * 1024


def refused(tmp_path: Path, data: bytes, code: str) -> StockadeError:
    dest = tmp_path / "dest"
    with pytest.raises(StockadeError) as ei:
        extract_archive(data, dest, max_files=1000, max_bytes=20 * MB)
    assert ei.value.code == code, ei.value.detail
    assert not dest.exists(), "a refused archive must leave nothing behind"
    return ei.value


def accepted(tmp_path: Path, data: bytes) -> dict[str, bytes]:
    root = extract_archive(data, tmp_path / "ok", max_files=1000, max_bytes=20 * MB)
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def bundle_tar_raw() -> bytes:
    return gzip.decompress(tar_of_files(bundle_files()))


def zip_of(files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


# --- gzip: many members were quadratic (each member copied everything after it)

def test_thousands_of_gzip_members_are_refused_at_once(tmp_path: Path) -> None:
    # 9 MB of 1-byte gzip members took 136 s of CPU in the upload thread
    refused(tmp_path, gzip.compress(b"\0") * 400_000, "archive.invalid")


def test_an_empty_gzip_member_is_not_a_truncated_stream(tmp_path: Path) -> None:
    # `cat bundle.tar.gz empty.gz` is a valid gzip stream; it was refused as "truncated"
    files = accepted(tmp_path, tar_of_files(bundle_files()) + gzip.compress(b""))
    assert files == bundle_files()


def test_a_tar_split_over_several_gzip_members_still_unpacks(tmp_path: Path) -> None:
    raw = bundle_tar_raw()
    members = b"".join(gzip.compress(raw[i:i + 700]) for i in range(0, len(raw), 700))
    assert accepted(tmp_path, members) == bundle_files()


# --- tar: pax headers parsed with backtracking regexes (CVE-2024-6232 in CPython < 3.11.10)

def pax_then_bundle(payload: bytes) -> bytes:
    h = tarfile.TarInfo("././@PaxHeader")
    h.type = tarfile.XHDTYPE
    h.size = len(payload)
    return gzip.compress(h.tobuf(tarfile.USTAR_FORMAT) + payload + b"\0" * (-len(payload) % 512) + bundle_tar_raw())


def test_a_pax_header_of_digits_is_refused_quickly(tmp_path: Path) -> None:
    # 20 000 digits took 0.36 s and was then accepted; 200 000 (a 300-byte upload) would take about an hour
    refused(tmp_path, pax_then_bundle(b"1" * 20_000), "archive.invalid")
    refused(tmp_path, pax_then_bundle(b"1" * 200_000), "archive.invalid")


def test_malformed_or_huge_pax_records_are_refused(tmp_path: Path) -> None:
    for payload in (b"4 4 4 4 4 4 4 4 4 4 =x\n", b"12 no-equals\n", b"99 path=x\n", b"0 =\n",
                    b"50 mtime=" + b"9" * 40 + b"\n"):
        refused(tmp_path, pax_then_bundle(payload), "archive.invalid")


def test_ordinary_pax_headers_still_work(tmp_path: Path) -> None:
    info = tarfile.TarInfo("b/" + "é" * 120 + ".py")  # non-ASCII and long: written as a pax path
    info.pax_headers = {"mtime": "1700000000.123456789", "atime": "1700000000.5", "SCHILY.xattr.user.x": "1"}
    data = tar_gz([(tarfile.TarInfo("b/bundle.yaml"), bundle_files()["bundle.yaml"]),
                   (tarfile.TarInfo("b/main.py"), bundle_files()["main.py"]), (info, b"X = 1\n")])
    assert accepted(tmp_path, data)["é" * 120 + ".py"] == b"X = 1\n"


# --- tar: sparse members (the whole map is read into Python lists)

def test_gnu_sparse_1_0_map_is_refused_without_building_it(tmp_path: Path) -> None:
    # this 10 KB upload built a 500 000-entry sparse map (1 GB RSS for 5 M entries) and was accepted
    sparse_map = b"500000\n" + b"0\n1\n" * 500_000
    sparse_map += b"\0" * (-len(sparse_map) % 512)
    info = tarfile.TarInfo("s.py")
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "s.py",
                        "GNU.sparse.realsize": "1"}
    data = tar_gz([(tarfile.TarInfo("bundle.yaml"), bundle_files()["bundle.yaml"]),
                   (tarfile.TarInfo("main.py"), bundle_files()["main.py"]), (info, sparse_map)])
    tracemalloc.start()
    try:
        refused(tmp_path, data, "archive.special_file")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * MB, peak


def test_old_gnu_sparse_members_are_refused(tmp_path: Path) -> None:
    info = tarfile.TarInfo("s.py")
    info.type = tarfile.GNUTYPE_SPARSE
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in bundle_files().items():
            i = tarfile.TarInfo(name)
            i.size = len(data)
            tf.addfile(i, io.BytesIO(data))
        info.size = 10
        tf.addfile(info, io.BytesIO(b"x" * 10))
    refused(tmp_path, gzip.compress(buf.getvalue()), "archive.special_file")


# --- zip: bzip2 / lzma members are inflated by zipfile without an output cap

def lying_bzip2_zip(unpacked: int) -> bytes:
    """A zip whose member ``big`` is bzip2 of ``unpacked`` zero bytes but claims to be 1000 bytes."""
    files = dict(bundle_files())
    raw = bytearray(zip_of({**files, "big": bz2.compress(b"\0" * unpacked, 9)}, zipfile.ZIP_STORED))
    for sig, method_at, size_at, name_len_at, name_at in ((b"PK\x03\x04", 8, 22, 26, 30), (b"PK\x01\x02", 10, 24, 28, 46)):
        pos = raw.find(sig)
        while pos >= 0:
            n = struct.unpack_from("<H", raw, pos + name_len_at)[0]
            if raw[pos + name_at:pos + name_at + n] == b"big":
                struct.pack_into("<H", raw, pos + method_at, zipfile.ZIP_BZIP2)
                struct.pack_into("<I", raw, pos + size_at, 1000)
            pos = raw.find(sig, pos + 4)
    return bytes(raw)


def test_bzip2_bomb_with_lying_size_is_refused_without_inflating_it(tmp_path: Path) -> None:
    data = lying_bzip2_zip(200 * MB)  # ~200 bytes of bzip2; each read of a few KB of it inflated everything
    assert len(data) < 2000
    tracemalloc.start()
    try:
        refused(tmp_path, data, "archive.invalid")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * MB, peak  # was 200 MB here, and gigabytes for a slightly larger upload


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_corrupt_bzip2_and_lzma_members_are_archive_errors(tmp_path: Path, method: int) -> None:
    # a flipped byte in the compressed data raised OSError / lzma.LZMAError: a 500
    good = zip_of({**bundle_files(), "lib.py": b"X = 1\n" * 200}, method)
    at = good.find(b"lib.py") + len(b"lib.py") + 20  # inside the compressed data
    bad = good[:at] + bytes([good[at] ^ 0xFF]) + good[at + 1:]
    err = refused(tmp_path, bad, "archive.invalid")
    assert "compression method" in err.detail


def test_central_directory_pointing_before_the_file_is_an_archive_error(tmp_path: Path) -> None:
    # the end record claims the central directory starts 1000 bytes later than it does: zipfile takes the
    # difference for prepended data and seeks to offset -1000 (ValueError: negative seek value): a 500
    good = bytearray(zip_of(bundle_files()))
    eocd = good.rfind(b"PK\x05\x06")
    offset = struct.unpack_from("<I", good, eocd + 16)[0]
    struct.pack_into("<I", good, eocd + 16, offset + 1000)
    refused(tmp_path, bytes(good), "archive.invalid")


# --- deep paths: every folder a member's path implies was created, uncounted

def test_deeply_nested_members_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    # 1000 members, each 500 folders deep (a 20 KB upload), made 500 000 folders: ~30 s to create, ~40 s
    # to delete, and a dent in the volume's inodes, before registration refused the depth
    deep = [(tarfile.TarInfo(f"{i}/" + "a/" * 505 + "f"), b"") for i in range(1000)]
    refused(tmp_path, tar_gz(deep), "archive.invalid")


def test_folders_implied_by_paths_count_as_entries(tmp_path: Path) -> None:
    # 20 files 60 folders deep: 20 archive entries, 1200 folders on disk
    members = [(tarfile.TarInfo(f"{i}/" + "a/" * 59 + "f.py"), b"") for i in range(20)]
    refused(tmp_path, tar_gz(members), "archive.too_many_files")


def test_a_bundle_nested_as_deep_as_registration_allows_still_unpacks(tmp_path: Path) -> None:
    deep = "top/" + "d/" * 64 + "x.py"
    data = tar_gz([(tarfile.TarInfo("top/bundle.yaml"), bundle_files()["bundle.yaml"]),
                   (tarfile.TarInfo("top/main.py"), bundle_files()["main.py"]), (tarfile.TarInfo(deep), b"X = 1\n")])
    assert accepted(tmp_path, data)["d/" * 64 + "x.py"] == b"X = 1\n"
