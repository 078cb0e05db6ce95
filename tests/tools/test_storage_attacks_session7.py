"""Storage quota attacks (session 7): what a file costs.

Empty files were free: a new path's snapshot directory was charged (``DIR_BYTES``), but once the quota
made room by dropping old history, that directory went and the live empty file cost nothing. A bundle
could cycle - fill the quota with empty files, write a filler that drops their history, roll the filler
back - and keep every empty file, each an inode on the host's file system, without bound. Every file
(live, snapshot, or ``.absent`` marker) is now charged at least ``FILE_BYTES``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.errors import StockadeError
from supervisor.tools.storage._area import DIR_BYTES, FILE_BYTES, TenantArea
from tests.tools.test_storage_tools import DELETE, ROLLBACK, WRITE, _root, _run, _settings

pytestmark = pytest.mark.timeout(120)

MB = 1024 * 1024


def _live_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file())


async def test_empty_files_cannot_outgrow_the_quota_by_dropping_their_history(tmp_path):
    s = _settings(tmp_path, storage_quota_mb=1)
    area = TenantArea(tmp_path / "data", "ten_a", MB)
    made = 0
    for cycle in range(4):
        for _ in range(400):  # empty files at new paths until the quota says no
            try:
                await _run(WRITE, s, path=f"e/{made}", content="")
            except StockadeError as exc:
                assert exc.code == "storage.quota"
                break
            made += 1
        # a filler that only fits once old history is dropped, then rolled back (removed, bytes freed)
        try:
            await _run(WRITE, s, path=f"filler{cycle}", content="f" * (MB // 2))
            await _run(ROLLBACK, s, path=f"filler{cycle}")
        except StockadeError as exc:
            assert exc.code == "storage.quota"
    live = _live_files(_root(tmp_path) / "e")
    assert live == made
    # every live file costs at least one block: never more of them than the quota holds
    assert live <= MB // FILE_BYTES, f"{live} empty files under a 1 MB quota"
    assert area._usage_get() == area.usage() <= MB


async def test_every_file_kind_is_charged_at_least_a_block(tmp_path):
    s = _settings(tmp_path, storage_quota_mb=1)
    area = TenantArea(tmp_path / "data", "ten_a", MB)
    await _run(WRITE, s, path="keep", content="k")
    base = area.usage()

    def grown() -> int:
        assert area._usage_get() == area.usage()  # the counter agrees with a walk, every step
        return area.usage() - base

    await _run(WRITE, s, path="a", content="")  # live file, .absent marker, the path's snapshot directory
    assert grown() == 2 * FILE_BYTES + DIR_BYTES
    await _run(WRITE, s, path="a", content="x" * 10)  # the old empty inode is now a snapshot
    assert grown() == 3 * FILE_BYTES + DIR_BYTES
    await _run(DELETE, s, path="a")  # the live file becomes a snapshot: nothing new
    assert grown() == 3 * FILE_BYTES + DIR_BYTES
    await _run(ROLLBACK, s, path="a")  # undoes the delete: the 10-byte file is live again
    assert grown() == 3 * FILE_BYTES + DIR_BYTES
    await _run(ROLLBACK, s, path="a")  # undoes the second write: the empty file is back
    assert grown() == 2 * FILE_BYTES + DIR_BYTES
    await _run(ROLLBACK, s, path="a")  # undoes the first write: file, marker and directory gone
    assert grown() == 0
    await _run(WRITE, s, path="b", content="b" * (FILE_BYTES + 1))  # past a block, a file costs its bytes
    assert grown() == FILE_BYTES + 1 + FILE_BYTES + DIR_BYTES
