"""Hostile archives: every refusal has its own code and leaves nothing behind."""

from __future__ import annotations

import io
import os
import struct
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from supervisor.bundles.archive import extract_archive
from supervisor.errors import StockadeError
from tests.bundles._util import bundle_files, tar_file, tar_gz, tar_of_files, tar_special, zip_of_files

MB = 1024 * 1024


def refused(tmp_path: Path, data: bytes, code: str, *, max_files: int = 1000, max_bytes: int = 20 * MB) -> StockadeError:
    dest = tmp_path / "dest"
    with pytest.raises(StockadeError) as ei:
        extract_archive(data, dest, max_files=max_files, max_bytes=max_bytes)
    assert ei.value.code == code, ei.value.detail
    assert not dest.exists(), "a refused archive must leave nothing behind"
    assert list(tmp_path.iterdir()) == []
    return ei.value


GOOD = bundle_files()


def test_absolute_paths(tmp_path: Path) -> None:
    refused(tmp_path, tar_gz([*map(lambda kv: tar_file(*kv), GOOD.items()), tar_file("/etc/evil", b"x")]),
            "archive.absolute_path")
    refused(tmp_path, zip_of_files({**GOOD, "/abs.py": b"x"}), "archive.absolute_path")
    refused(tmp_path, zip_of_files({"C:\\Windows\\evil.py": b"x"}), "archive.absolute_path")


@pytest.mark.parametrize("name", ["../x", "a/../../x", "a/b/../../../x", "a\\..\\..\\x", "ok/../x"])
def test_path_traversal(tmp_path: Path, name: str) -> None:
    refused(tmp_path, tar_gz([tar_file("bundle.yaml", GOOD["bundle.yaml"]), tar_file(name, b"x")]),
            "archive.path_traversal")
    refused(tmp_path, zip_of_files({**GOOD, name: b"x"}), "archive.path_traversal")


def test_links_are_refused(tmp_path: Path) -> None:
    files = [tar_file(k, v) for k, v in GOOD.items()]
    refused(tmp_path, tar_gz([*files, tar_special("passwd", tarfile.SYMTYPE, "/etc/passwd")]), "archive.link")
    refused(tmp_path, tar_gz([*files, tar_special("hl", tarfile.LNKTYPE, "/etc/passwd")]), "archive.link")
    refused(tmp_path, tar_gz([*files, tar_special("hl", tarfile.LNKTYPE, "../../etc/passwd")]), "archive.link")
    # even a link that stays inside: bundles never need links, so none are accepted
    refused(tmp_path, tar_gz([*files, tar_special("alias.py", tarfile.SYMTYPE, "main.py")]), "archive.link")

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, v in GOOD.items():
            zf.writestr(k, v)
        info = zipfile.ZipInfo("passwd")
        info.create_system = 3
        info.external_attr = (0o120777 << 16)  # S_IFLNK
        zf.writestr(info, "/etc/passwd")
    refused(tmp_path, buf.getvalue(), "archive.link")


@pytest.mark.parametrize("type_", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_special_files(tmp_path: Path, type_: bytes) -> None:
    info, _ = tar_special("dev", type_)
    info.devmajor, info.devminor = 1, 3  # /dev/null's numbers
    refused(tmp_path, tar_gz([*(tar_file(k, v) for k, v in GOOD.items()), (info, None)]), "archive.special_file")


def test_zip_fifo_is_special(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("fifo")
        info.create_system = 3
        info.external_attr = 0o010644 << 16  # S_IFIFO
        zf.writestr(info, b"")
    refused(tmp_path, buf.getvalue(), "archive.special_file")


@pytest.mark.timeout(60)
def test_too_many_files(tmp_path: Path) -> None:
    files = {f"f/{i}.txt": b"" for i in range(10_001)}
    t0 = time.perf_counter()
    refused(tmp_path, tar_of_files(files), "archive.too_many_files", max_files=10_000)
    refused(tmp_path, zip_of_files(files), "archive.too_many_files", max_files=10_000)
    assert time.perf_counter() - t0 < 10


def _zip_of_zeros(size: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bundle.yaml", GOOD["bundle.yaml"])
        with zf.open("zeros.bin", "w", force_zip64=True) as f:
            chunk = bytes(MB)
            for _ in range(size // MB):
                f.write(chunk)
    return buf.getvalue()


@pytest.mark.timeout(60)
def test_zip_bomb_is_refused_quickly(tmp_path: Path) -> None:
    bomb = _zip_of_zeros(100 * MB)
    assert len(bomb) < 1 * MB  # 100 MB of zeros, deflated
    t0 = time.perf_counter()
    refused(tmp_path, bomb, "archive.too_large")
    assert time.perf_counter() - t0 < 1.0


def _lie_about_size(data: bytes, name: bytes, claimed: int) -> bytes:
    """Rewrite the uncompressed size of ``name`` in its local header and central directory entry."""
    b = bytearray(data)
    lh = b.index(b"PK\x03\x04")  # first local header
    while True:
        n = struct.unpack_from("<H", b, lh + 26)[0]
        if bytes(b[lh + 30: lh + 30 + n]) == name:
            struct.pack_into("<I", b, lh + 22, claimed)
            break
        lh = b.index(b"PK\x03\x04", lh + 4)
    cd = b.index(b"PK\x01\x02")
    while True:
        n = struct.unpack_from("<H", b, cd + 28)[0]
        if bytes(b[cd + 46: cd + 46 + n]) == name:
            struct.pack_into("<I", b, cd + 24, claimed)
            break
        cd = b.index(b"PK\x01\x02", cd + 4)
    return bytes(b)


@pytest.mark.timeout(60)
def test_zip_bomb_with_lying_header_stops_at_the_claim(tmp_path: Path) -> None:
    """A header claiming 1 KB for 30 MB of zeros: we never write more than we counted."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, v in GOOD.items():
            zf.writestr(k, v)
        zf.writestr("zeros.bin", bytes(30 * MB))
    liar = _lie_about_size(buf.getvalue(), b"zeros.bin", 1024)
    t0 = time.perf_counter()
    err = refused(tmp_path, liar, "archive.invalid", max_bytes=5 * MB)
    assert "corrupt" in err.detail or "CRC" in err.detail
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.timeout(60)
def test_tar_gz_bomb_is_refused_quickly(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tf:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 100 * MB
        tf.addfile(info, io.BytesIO(bytes(100 * MB)))
    t0 = time.perf_counter()
    err = refused(tmp_path, buf.getvalue(), "archive.too_large")
    assert time.perf_counter() - t0 < 1.0
    # the configured limit, as the zip bomb's message says (was 26124288: the cap plus room for tar headers)
    assert err.detail == f"the archive unpacks to more than {20 * MB} bytes"


@pytest.mark.parametrize("name", ["a\nb.py", "a\rb.py", "x\x1b[31m.py", "dir\x07/main2.py", "\u202egnp.py",
                                  "a\u2028b.py", "a\x85b.py", "a\udcffb.py", "a\u200bb.py"])
def test_member_names_with_control_or_format_characters_are_refused(tmp_path: Path, name: str) -> None:
    """Found by an outside-in walkthrough: ``a\\nb.py`` was unpacked and stored as is: a file name that breaks
    every line it is logged or listed on; a bidi override (U+202E) shows ``gnp.py`` as ``ypg.png``."""
    err = refused(tmp_path, tar_gz([*(tar_file(k, v) for k, v in GOOD.items()), tar_file(name, b"x")]),
                  "archive.invalid")
    assert "control or format character" in err.detail
    if "\udcff" not in name:  # zip names are text: no lone surrogate
        refused(tmp_path, zip_of_files({**GOOD, name: b"x"}), "archive.invalid")


def test_member_names_in_other_scripts_are_fine(tmp_path: Path) -> None:
    names = {"caf\u00e9.py": b"x", "\u0928\u092e\u0938\u094d\u200d\u0924\u0947.md": b"x",  # ZWJ: needed here
             "\U0001f469\u200d\U0001f4bb.txt": b"x", "\u05e9\u05dc\u05d5\u05dd.txt": b"x", "a b.py": b"x"}
    root = extract_archive(zip_of_files({**GOOD, **names}), tmp_path / "dest", max_files=100, max_bytes=MB)
    assert {p.name for p in root.iterdir()} == {*GOOD, *names}


def test_many_small_files_over_the_byte_cap(tmp_path: Path) -> None:
    files = {f"part{i}.bin": os.urandom(64 * 1024) for i in range(40)}  # 2.5 MB, incompressible
    refused(tmp_path, tar_of_files(files), "archive.too_large", max_bytes=1 * MB)
    refused(tmp_path, zip_of_files(files), "archive.too_large", max_bytes=1 * MB)


def test_not_an_archive(tmp_path: Path) -> None:
    refused(tmp_path, os.urandom(4096), "archive.invalid")
    refused(tmp_path, b"\x1f\x8b" + os.urandom(4096), "archive.invalid")  # gzip magic, random body
    refused(tmp_path, b"PK\x03\x04" + os.urandom(4096), "archive.invalid")
    refused(tmp_path, b"", "archive.invalid")
    import gzip

    refused(tmp_path, gzip.compress(os.urandom(4096)), "archive.invalid")  # valid gzip, not a tar
    refused(tmp_path, tar_of_files(GOOD)[:-40], "archive.invalid")  # truncated


def test_duplicates_and_file_folder_clashes(tmp_path: Path) -> None:
    refused(tmp_path, tar_gz([tar_file("main.py", b"a"), tar_file("main.py", b"b")]), "archive.invalid")
    refused(tmp_path, tar_gz([tar_file("lib", b"a"), tar_file("lib/x.py", b"b")]), "archive.invalid")


def test_good_tar_gz_strips_the_top_folder(tmp_path: Path) -> None:
    data = tar_of_files({**GOOD, "lib/util.py": b"X = 1\n"}, prefix="my-bundle/")
    root = extract_archive(data, tmp_path / "dest", max_files=100, max_bytes=MB)
    assert root == tmp_path / "dest" / "my-bundle"
    assert (root / "bundle.yaml").read_bytes() == GOOD["bundle.yaml"]
    assert (root / "lib" / "util.py").read_bytes() == b"X = 1\n"


def test_good_zip_without_top_folder(tmp_path: Path) -> None:
    data = zip_of_files({**GOOD, "__MACOSX/._main.py": b"junk"})
    root = extract_archive(data, tmp_path / "dest", max_files=100, max_bytes=MB)
    assert root == tmp_path / "dest"
    assert sorted(p.name for p in root.iterdir()) == ["bundle.yaml", "main.py"]


def test_dot_slash_names_are_fine(tmp_path: Path) -> None:
    data = tar_gz([tar_file("./bundle.yaml", GOOD["bundle.yaml"]), tar_file("./main.py", GOOD["main.py"])])
    root = extract_archive(data, tmp_path / "dest", max_files=100, max_bytes=MB)
    assert (root / "main.py").read_bytes() == GOOD["main.py"]


def test_a_plain_tar_is_taken_with_the_same_checks(tmp_path: Path) -> None:
    # The upload route accepts application/x-tar, yet an uncompressed tar was archive.invalid
    import gzip

    data = gzip.decompress(tar_of_files({**GOOD, "lib/util.py": b"X = 1\n"}, prefix="my-bundle/"))
    files = [tar_file(k, v) for k, v in GOOD.items()]
    plain = gzip.decompress(tar_gz([*files, tar_special("passwd", tarfile.SYMTYPE, "/etc/passwd")]))
    refused(tmp_path, plain, "archive.link")
    refused(tmp_path, gzip.decompress(tar_gz([*files, tar_file("../x", b"x")])), "archive.path_traversal")
    refused(tmp_path, data[:600], "archive.invalid")  # cut inside the first member
    root = extract_archive(data, tmp_path / "good", max_files=100, max_bytes=MB)
    assert (root / "lib" / "util.py").read_bytes() == b"X = 1\n"
