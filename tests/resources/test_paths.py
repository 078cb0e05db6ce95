"""Storage keys: canonical components, escapes refused, symlinks followed only inside the root."""

from __future__ import annotations

import os

import pytest

from supervisor.errors import StockadeError
from supervisor.resources.paths import check_segment, resolve_storage_path, split_storage_key, storage_resource


@pytest.mark.parametrize("raw,parts", [
    ("a", ("a",)), ("a/b/c.txt", ("a", "b", "c.txt")), ("a/./b", ("a", "b")), ("a//b/", ("a", "b")),
    ("./a", ("a",)), ("%2e%2e/x", ("%2e%2e", "x")), ("...", ("...",)), ("..a/b..", ("..a", "b..")),
    ("caf\u0065\u0301", ("café",)),  # NFD -> NFC: one spelling per name
    # look-alikes and encodings of ".." are literal names: nothing downstream decodes or NFKC-folds them
    ("%252e%252e/x", ("%252e%252e", "x")), (".%2e/x", (".%2e", "x")), ("\u2024\u2024/x", ("\u2024\u2024", "x")),
    ("\uff0e\uff0e/x", ("\uff0e\uff0e", "x")), ("\u2025/x", ("\u2025", "x")), ("..\u200b", ("..\u200b",)),
    (".. ", (".. ",)), ("~/x", ("~", "x")), ("~root", ("~root",)), ("\u2215etc\u2215passwd", ("\u2215etc\u2215passwd",)),
    ("\uff0fetc", ("\uff0fetc",)), ("CON", ("CON",)), ("a/b.", ("a", "b.")), ("*", ("*",)), ("[a]?", ("[a]?",)),
])
def test_split(raw, parts):
    assert split_storage_key(raw) == parts


@pytest.mark.parametrize("raw,code", [
    ("ws/../secret", "storage.escape"), ("..", "storage.escape"), ("a/..", "storage.escape"),
    ("/etc/passwd", "storage.escape"), ("//etc/passwd", "storage.escape"), ("a\\b", "storage.escape"),
    ("..\\x", "storage.escape"), ("", "input.invalid"), (".", "input.invalid"), ("/", "storage.escape"),
    ("a\x00b", "input.invalid"), ("a\x1fb", "input.invalid"), ("a\x7f", "input.invalid"),
    # C1 controls and line separators (were stored: a name that breaks the line it is shown on)
    ("a\x85b", "input.invalid"), ("a\x9f", "input.invalid"), ("a\u2028b", "input.invalid"), ("a\u2029", "input.invalid"),
    ("x" * 1025, "input.invalid"), ("é" * 128, "input.invalid"), (5, "input.invalid"),
    # lone surrogates reach the file system as raw bytes: "caf\udcc3\udca9" *is* the file "café", under a
    # name no rule written for "café" matches
    ("caf\udcc3\udca9", "input.invalid"), ("\ud800", "input.invalid"), ("a/\udcff", "input.invalid"),
])
def test_split_refusals(raw, code):
    with pytest.raises(StockadeError) as ei:
        split_storage_key(raw)  # type: ignore[arg-type]
    assert ei.value.code == code


def test_root_only_when_allowed(tmp_path):
    assert split_storage_key("", allow_root=True) == ()
    assert resolve_storage_path(tmp_path, "./", allow_root=True) == tmp_path.resolve()
    with pytest.raises(StockadeError):
        resolve_storage_path(tmp_path, "./")


def test_resolve_follows_links_only_inside(tmp_path):
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(root / "d", root / "in-link")
    os.symlink(outside, root / "out-link")
    os.symlink("../outside", root / "rel-out")
    os.symlink(root / "loop", root / "loop")
    assert resolve_storage_path(root, "d/f") == (root / "d" / "f").resolve()
    assert resolve_storage_path(root, "in-link/f") == (root / "d" / "f").resolve()
    assert resolve_storage_path(root, "new/dir/file") == (root / "new" / "dir" / "file").resolve()
    for raw in ("out-link", "out-link/x", "rel-out/x", "loop", "loop/x"):
        with pytest.raises(StockadeError) as ei:
            resolve_storage_path(root, raw)
        assert ei.value.code == "storage.escape", raw


def test_root_path_itself_may_be_a_link_target_of_the_root(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "alias")
    # the root is resolved too, so a root reached through a link still contains its own files
    assert resolve_storage_path(tmp_path / "alias", "x") == real.resolve() / "x"


def test_storage_resource():
    assert storage_resource("ten_1", "usr_1", "a/b.txt") == "storage://u/usr_1/a/b.txt"
    assert storage_resource("ten_1", None, "a/b.txt") == "storage://shared/a/b.txt"
    assert storage_resource("ten_1", "usr_1", "") == "storage://u/usr_1/"
    for bad in ("..", ".", "a/b", "", "a b", "x\x00"):
        with pytest.raises(StockadeError):
            storage_resource(bad, None, "x")
        with pytest.raises(StockadeError):
            check_segment(bad, "user id")


def test_resolved_path_longer_than_path_max_is_input_invalid(tmp_path):
    # 16 components of 252 bytes pass the per-key limits but not PATH_MAX once under a deep root
    # (they used to fail half-way through a write with ENAMETOOLONG: tool.failed, or storage.escape on read)
    root = tmp_path / ("d" * 200) / ("e" * 200)
    key = "/".join(["\U0001d552" * 63] * 16)
    with pytest.raises(StockadeError) as ei:
        resolve_storage_path(root, key)
    assert ei.value.code == "input.invalid"


def test_resource_is_nfc_even_when_the_disk_name_is_not():
    assert storage_resource("ten_1", "usr_1", "cafe\u0301/x") == "storage://u/usr_1/caf\u00e9/x"
