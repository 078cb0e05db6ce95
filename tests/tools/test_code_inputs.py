"""code.run input files: names are judged after normalisation and bad ones are input.invalid, not tool.failed;
and the produced files it returns."""

from __future__ import annotations

import pytest

from supervisor.errors import StockadeError
from supervisor.rmtree import remove_tree
from supervisor.tools.code.tool import CodeRunArgs, _write_inputs

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("files", [
    {"./main.py": "import os"},  # would replace the code the policy judged (args.code)
    {"a/../main.py": "x"}, {"/etc/x": "x"}, {".": "x"}, {"": "x"}, {"a\x00": "x"},
    {"a": "1", "a/b": "2"},  # a file where a directory is needed
    {"a/./b": "1", "a//b": "2"},  # two spellings of one file
    {"x" * 300: "1"},  # ENAMETOOLONG
    {"\ud800": "x"}, {"ok.txt": "\ud800"},  # lone surrogates
])
def test_bad_input_files_are_input_invalid(tmp_path, files):
    args = CodeRunArgs.model_validate({"code": "print(1)", "files": files})
    with pytest.raises(StockadeError) as ei:
        _write_inputs(tmp_path, args)
    assert ei.value.code == "input.invalid"
    assert (tmp_path / "main.py").read_text() == "print(1)"


def test_good_input_files_are_written(tmp_path):
    args = CodeRunArgs.model_validate({"code": "print(1)", "files": {"data/in.csv": "a,b", "%2e%2e": "lit"}})
    _write_inputs(tmp_path, args)
    assert (tmp_path / "data" / "in.csv").read_text() == "a,b" and (tmp_path / "%2e%2e").read_text() == "lit"


def test_output_collection_reads_only_what_it_returns(tmp_path):
    # A run may leave 20 files of max_file_mb each: each was read whole, then cut to MAX_FILE_BYTES.
    import os
    import tracemalloc

    from supervisor.tools.code.tool import MAX_FILE_BYTES, _produced

    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(64 * 1024 * 1024)  # sparse: no disk, 64 MiB to whoever reads it whole
    os.symlink("/etc/passwd", tmp_path / "link")  # never followed
    tracemalloc.start()
    try:
        files = _produced(tmp_path, {})["files"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [(e["path"], e["size"], e["truncated"]) for e in files] == [("big.bin", 64 * 1024 * 1024, True)]
    assert len(files[0]["text"]) == MAX_FILE_BYTES
    assert peak < 8 * MAX_FILE_BYTES


def test_files_left_out_are_flagged(tmp_path):
    # 20 files came back and nothing said whether there had been more
    from supervisor.tools.code.tool import MAX_FILES, _produced, _snapshot

    (tmp_path / "main.py").write_text("x")
    (tmp_path / "input.txt").write_text("unchanged")
    before = _snapshot(tmp_path)
    for i in range(MAX_FILES):
        (tmp_path / f"out{i:02d}.txt").write_text(str(i))
    got = _produced(tmp_path, before)
    assert len(got["files"]) == MAX_FILES and got["files_skipped"] == [] and got["files_truncated"] is False
    (tmp_path / "zz-one-more.txt").write_text("x")
    got = _produced(tmp_path, before)
    assert [f["path"] for f in got["files"]] == [f"out{i:02d}.txt" for i in range(MAX_FILES)]
    assert got["files_truncated"] is True


def test_names_that_are_not_utf8_are_listed_apart_and_escaped(tmp_path):
    import json
    import os

    from supervisor.tools.code.tool import MAX_FILES, _produced

    os.mkdir(os.path.join(os.fsencode(tmp_path), b"dir\xfe"))
    with open(os.path.join(os.fsencode(tmp_path), b"dir\xfe", b"caf\xc3\xa9-\xff"), "w") as f:
        f.write("in a bad directory")
    (tmp_path / "ok-\u00e9.txt").write_text("fine")
    got = _produced(tmp_path, {})
    assert [f["path"] for f in got["files"]] == ["ok-\u00e9.txt"]
    assert got["files_skipped"] == [{"name": "dir\\xfe/caf\u00e9-\\xff", "reason": "name is not UTF-8"}]
    assert got["files_truncated"] is False
    json.dumps(got, ensure_ascii=False).encode("utf-8")  # what the frame encoder does: no lone surrogate left
    for i in range(MAX_FILES + 5):
        with open(os.path.join(os.fsencode(tmp_path), b"bad%02d\x80" % i), "w") as f:
            f.write("x")
    got = _produced(tmp_path, {})
    assert len(got["files_skipped"]) == MAX_FILES and got["files_truncated"] is True
    assert [f["path"] for f in got["files"]] == ["ok-\u00e9.txt"]  # they take no room from the good ones


def test_a_file_that_cannot_be_opened_is_listed_apart(tmp_path, monkeypatch):
    import os

    from supervisor.tools.code import tool

    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    real_open = os.open

    def refusing_open(path, flags, *args):
        if str(path).endswith("a.txt"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(tool.os, "open", refusing_open)
    got = tool._produced(tmp_path, {})
    assert [f["path"] for f in got["files"]] == ["b.txt"]
    assert got["files_skipped"] == [{"name": "a.txt", "reason": "cannot be opened"}]


@pytest.fixture
def work(tmp_path):
    """A work dir that may end up deeper than PATH_MAX or the recursion limit: removed here, whatever the
    test did - pytest's own clean-up of old temp dirs (shutil.rmtree) would raise on it, in every later
    pytest process of this user."""
    d = tmp_path / "work"
    d.mkdir()
    yield d
    remove_tree(d)


@pytest.mark.parametrize("depth,name", [(1500, "d"), (20, "d" * 250)], ids=["recursion", "path-max"])
def test_a_deep_tree_is_left_out_not_a_crash(work, depth, name):
    # rglob recursed once per level (RecursionError ~1,000 deep) and stat'ed whole paths (ENAMETOOLONG
    # past PATH_MAX): the tool failed and the call's whole result was lost to one directory tree
    from supervisor.tools.code.tool import _produced
    from tests.test_rmtree import make_chain

    (work / "top.txt").write_text("t")
    make_chain(work, depth, name, leaf="f.txt")
    got = _produced(work, {})
    assert [f["path"] for f in got["files"]] == ["top.txt"] and got["files_truncated"] is True


def test_files_down_to_the_depth_cap_are_returned(tmp_path):
    from supervisor.tools.code.tool import MAX_DEPTH, _produced

    deep = tmp_path.joinpath(*["d"] * MAX_DEPTH)
    deep.mkdir(parents=True)
    (deep / "in.txt").write_text("x")
    got = _produced(tmp_path, {})
    assert [f["path"] for f in got["files"]] == ["/".join(["d"] * MAX_DEPTH + ["in.txt"])]
    assert got["files_truncated"] is False
    (deep / "d").mkdir()
    (deep / "d" / "below.txt").write_text("x")
    got = _produced(tmp_path, {})
    assert len(got["files"]) == 1 and got["files_truncated"] is True
