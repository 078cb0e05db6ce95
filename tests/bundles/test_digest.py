"""Content digests: same content, same digest; any byte or name changed, a new one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from supervisor.bundles.digest import digest_dir, digest_files, is_digest
from supervisor.errors import StockadeError
from tests.bundles._util import write_bundle


def test_same_content_same_digest_regardless_of_place_and_time(tmp_path: Path) -> None:
    a = write_bundle(tmp_path / "a", files={"lib/util.py": "X = 1\n"})
    b = write_bundle(tmp_path / "elsewhere" / "b", files={"lib/util.py": "X = 1\n"})
    os.utime(b / "main.py", (0, 0))
    os.chmod(b / "main.py", 0o600)
    da = digest_dir(a)
    assert is_digest(da) and da == digest_dir(b)
    assert da == digest_dir(a)  # stable across calls


def test_one_byte_or_one_name_changes_the_digest(tmp_path: Path) -> None:
    a = write_bundle(tmp_path / "a")
    before = digest_dir(a)
    (a / "main.py").write_bytes((a / "main.py").read_bytes().replace(b"hi", b"hj"))
    assert digest_dir(a) != before
    b = write_bundle(tmp_path / "b")
    (b / "main.py").rename(b / "main2.py")
    assert digest_dir(b) != before
    c = write_bundle(tmp_path / "c", files={"extra.py": ""})  # an added empty file counts too
    assert digest_dir(c) != before


def test_framing_is_unambiguous() -> None:
    assert digest_files([("ab", b"c")]) != digest_files([("a", b"bc")])
    assert digest_files([("a", b""), ("b", b"")]) != digest_files([("a", b"b")])
    assert digest_files([("x", b"1"), ("y", b"2")]) == digest_files([("y", b"2"), ("x", b"1")])


def test_ignored_names_do_not_count(tmp_path: Path) -> None:
    a = write_bundle(tmp_path / "a")
    before = digest_dir(a)
    (a / ".git").mkdir()
    (a / ".git" / "HEAD").write_text("ref")
    (a / ".main.py.swp").write_text("swap")
    (a / "__pycache__").mkdir()
    (a / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\0")
    (a / "stale.pyc").write_bytes(b"\0")
    (a / "empty-dir").mkdir()
    assert digest_dir(a) == before


def test_links_and_special_files_are_refused(tmp_path: Path) -> None:
    a = write_bundle(tmp_path / "a")
    (a / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(StockadeError, match="passwd is a symlink") as ei:
        digest_dir(a)
    assert ei.value.code == "bundle.invalid"
    b = write_bundle(tmp_path / "b")
    os.mkfifo(b / "pipe")
    with pytest.raises(StockadeError, match="pipe is a device, fifo or socket"):
        digest_dir(b)
