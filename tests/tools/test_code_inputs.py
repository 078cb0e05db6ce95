"""code.run input files: names are judged after normalisation and bad ones are input.invalid, not tool.failed."""

from __future__ import annotations

import pytest

from supervisor.errors import StockadeError
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
        files = _produced(tmp_path, {})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [(e["path"], e["size"], e["truncated"]) for e in files] == [("big.bin", 64 * 1024 * 1024, True)]
    assert len(files[0]["text"]) == MAX_FILE_BYTES
    assert peak < 8 * MAX_FILE_BYTES
