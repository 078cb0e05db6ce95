"""remove_tree: what shutil.rmtree does, for trees of any depth (a sandbox's work dir)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from supervisor.rmtree import remove_tree

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def scratch(tmp_path):
    """Where the trees are made: removed here whatever the test did - pytest's own clean-up of old temp
    dirs (shutil.rmtree) would raise on one, in every later pytest process of this user."""
    d = tmp_path / "scratch"
    d.mkdir()
    yield d
    remove_tree(d)
    assert not d.exists()  # (and if remove_tree is broken: say so here, not in someone else's session)


def make_chain(top: Path, depth: int, name: str, leaf: str = "f") -> None:
    """``depth`` nested directories under ``top`` made by descriptor (their path may pass PATH_MAX), a file
    ``leaf`` at the bottom."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        os.close(os.open(leaf, os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
    finally:
        os.close(fd)


def test_a_tree_shutil_rmtree_gave_up_on_midway_is_finished(scratch):
    (scratch / "t").mkdir()
    make_chain(scratch / "t", 1500, "d")
    try:
        shutil.rmtree(scratch / "t", ignore_errors=True)
    except RecursionError:
        pass  # Python < 3.12: the reason remove_tree exists
    remove_tree(scratch / "t")
    assert not (scratch / "t").exists()


@pytest.mark.parametrize("depth,name", [(1500, "d"), (40, "d" * 250)], ids=["recursion", "path-max"])
def test_any_depth_is_removed_and_links_are_not_followed(scratch, depth, name):
    outside = scratch / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    tree = scratch / "tree"
    tree.mkdir()
    for i in range(50):  # wide too
        (tree / f"w{i}").mkdir()
        (tree / f"w{i}" / "x").write_text("x")
    os.symlink(outside, tree / "link-dir")
    os.symlink(outside / "keep.txt", tree / "w0" / "link-file")
    make_chain(tree, depth, name)
    remove_tree(tree)
    assert not tree.exists() and not tree.is_symlink()
    assert (outside / "keep.txt").read_text() == "keep"


def test_a_missing_path_is_no_error(tmp_path):
    remove_tree(tmp_path / "nothing-here")
