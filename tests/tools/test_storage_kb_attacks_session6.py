"""Attacks on storage.* and kb.* (session 6): what they found, kept as regressions.

Storage (``supervisor/tools/storage/_area.py``):

- ``storage.read`` of a key naming a directory raised a bare ``IsADirectoryError`` (``open(O_RDONLY)``
  succeeds on a directory; ``fdopen`` then fails): the run got ``tool.failed`` and a logged traceback.
- ``storage.read`` of a FIFO someone put in the area blocked a worker thread in ``open`` forever.
- ``storage.list`` of a directory holding a name that is not UTF-8 (put there by other means) answered
  an entry no reply frame can encode; a link to such a name gave a ``path`` that cannot be encoded either.
- ``storage.rollback`` of a delete re-created the parent directories the delete had pruned without
  asking the quota: deep keys, deleted and rolled back, went far past it (directories count).
- ``storage.delete`` of a file whose snapshot directory had been dropped to make room re-created it
  without asking the quota either: a tenant at its quota went past it by ``DIR_BYTES`` per delete.
- making room counted only snapshot bytes, never the directories the dropped snapshots free, so
  markers of new files (0 bytes, one directory each) could not make room: ``storage.quota`` although
  dropping history would have made the write fit.
- coverage that found nothing more (and caught the first finding): many calls of two runs in two
  supervisor processes sharing one data directory (only ``StockadeError``, the quota never passed, the
  counter equal to a full walk); concurrent writes at the exact quota boundary.

Knowledge base: on PostgreSQL, ``kb.search`` of a query with 33 ``-`` in a row (``---…x``, ``- - - …``,
``-(-(…``) failed with ``tsquery stack too small`` (an internal error) instead of answering.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue
import random
import shutil
import traceback
from pathlib import Path
from typing import Any

import pytest

from sandbox.runtime.stockade_sdk.wire import encode
from supervisor.errors import StockadeError
from supervisor.settings import Settings
from supervisor.stores.postgres.kb import PgKbStore
from supervisor.stores.sqlite.kb import SqliteKbStore
from supervisor.tools.kb import KbSearchTool
from supervisor.tools.storage import _area
from supervisor.tools.storage._area import DIR_BYTES, FILE_BYTES, TenantArea
from tests.contract import conftest as _contract
from tests.tools.test_http_helpers import make_ctx
from tests.tools.test_storage_tools import DELETE, LIST, READ, ROLLBACK, WRITE, _root, _run, _settings

sql_target, sql_db = _contract.sql_target, _contract.sql_db  # SQLite and PostgreSQL, as the contract suite

pytestmark = pytest.mark.timeout(60)

MB = 1024 * 1024


def _area_of(tmp_path: Path, quota: int = MB) -> TenantArea:
    return TenantArea(tmp_path / "data", "ten_a", quota)


async def _code(coro: Any) -> str:
    with pytest.raises(StockadeError) as ei:
        await coro
    return ei.value.code


# ---------------------------------------------------------------------------------------------- read


async def test_read_of_a_directory_is_not_found_not_an_oserror(tmp_path):
    s = _settings(tmp_path)
    await _run(WRITE, s, path="a/b", content="x")
    assert await _code(_run(READ, s, path="a")) == "storage.not_found"
    await _run(WRITE, s, path="e/f", content="y", scope="shared")
    assert await _code(_run(READ, s, path="e", scope="shared")) == "storage.not_found"
    assert await _code(_run(READ, s, path="e/f/g", scope="shared")) == "storage.not_found"


async def test_read_of_a_fifo_in_the_area_answers_at_once(tmp_path):
    s = _settings(tmp_path)
    await _run(WRITE, s, path="keep", content="k")
    fifo = _root(tmp_path) / "pipe"
    os.mkfifo(fifo)
    task = asyncio.ensure_future(_run(READ, s, path="pipe"))
    done, _ = await asyncio.wait({task}, timeout=10)
    if not done:  # the worker thread hangs in open(): give it a writer so it (and the test) can end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        await asyncio.wait({task}, timeout=10)
        task.exception() if task.done() else task.cancel()
        pytest.fail("storage.read of a FIFO blocked its worker thread in open()")
    with pytest.raises(StockadeError) as ei:
        task.result()
    assert ei.value.code == "storage.not_found"
    assert (await _run(READ, s, path="keep"))["content"] == "k"


# ---------------------------------------------------------------------------------------------- list


async def test_list_leaves_out_names_that_are_not_utf8_and_its_reply_encodes(tmp_path):
    s = _settings(tmp_path)
    await _run(WRITE, s, path="d/ok.txt", content="1")
    d = _root(tmp_path) / "d"
    raw = os.fsdecode(b"\xff\xfe-latin1-\xe9.bin")  # bytes that are no UTF-8, as a bundle never could name them
    (d / raw).write_bytes(b"x")
    os.symlink(d / raw, d / "to-raw")
    out = await _run(LIST, s, path="d")
    assert [e["name"] for e in out["entries"]] == ["ok.txt", "to-raw"]
    encode({"type": "result", "id": 1, "result": out})  # what the session sends back: must not raise
    # a link to such a name: a path no reply can carry and no policy rule can name
    for tool, extra in ((READ, {}), (WRITE, {"content": "y"}), (DELETE, {}), (ROLLBACK, {})):
        assert await _code(_run(tool, s, path="d/to-raw", **extra)) == "input.invalid", tool.name
    assert (d / raw).read_bytes() == b"x"


# ---------------------------------------------------------------------------------------------- quota


async def test_rollback_cannot_bring_back_pruned_directories_past_the_quota(tmp_path):
    s = _settings(tmp_path, storage_quota_mb=1)
    area = _area_of(tmp_path)
    deep = "d/" + "a/" * 200 + "f"  # 201 directories: 804 kB of the 1 MB
    await _run(WRITE, s, path=deep, content="")
    await _run(DELETE, s, path=deep)  # prunes them; the snapshot is 0 bytes in one directory
    room = MB - area.usage() - 2 * DIR_BYTES  # the filler's own snapshot directory fits too
    await _run(WRITE, s, path="filler", content="f" * room)
    assert area.usage() <= MB
    assert await _code(_run(ROLLBACK, s, path=deep)) == "storage.quota"
    assert area._usage_get() == area.usage() <= MB
    assert await _code(_run(READ, s, path=deep)) == "storage.not_found"
    # once there is room (history may be dropped for it, never the snapshot being restored) it works
    await _run(DELETE, s, path="filler")  # its bytes stay counted, as a snapshot
    assert (await _run(ROLLBACK, s, path=deep))["outcome"] == "restored"
    assert (await _run(READ, s, path=deep))["content"] == ""
    assert await _code(_run(ROLLBACK, s, path="filler")) == "storage.not_found"  # that history made the room
    assert area._usage_get() == area.usage() <= MB


async def test_deletes_cannot_grow_snapshot_directories_past_the_quota(tmp_path, monkeypatch):
    # Live files whose history is gone: making room drops snapshots and their directories (here an
    # operator clears it, which the counter picks up). Each delete needs a snapshot directory again.
    s = _settings(tmp_path, storage_quota_mb=1)
    area = _area_of(tmp_path)
    for i in range(150):  # 600 kB: each live empty file is charged FILE_BYTES
        await _run(WRITE, s, path=f"d/f{i}", content="")
    shutil.rmtree(area.base / ".versions")
    monkeypatch.setattr(_area, "_USAGE_TTL_S", 0.0)
    # its creation marker, its snapshot directory and the three above it
    filler = MB - area.usage() - FILE_BYTES - 4 * DIR_BYTES
    await _run(WRITE, s, path="filler", content="f" * filler)
    assert area.usage() <= MB
    for i in range(150):
        await _run(DELETE, s, path=f"d/f{i}")  # never refused: history is best-effort, a delete is not
        assert area.usage() <= MB, i
    assert (await _run(LIST, s))["entries"] == [{"name": "filler", "type": "file", "size": filler}]
    assert area._usage_get() == area.usage()


async def test_dropping_creation_markers_makes_room_for_their_directories(tmp_path):
    # 200 new empty files in one directory: 200 live files, markers and snapshot directories, 2.4 MB at
    # FILE_BYTES/DIR_BYTES each; dropping the oldest markers frees their directories, so every write fits
    # (the live files alone are 800 kB) and history shrinks instead
    s = _settings(tmp_path, storage_quota_mb=1)
    area = _area_of(tmp_path)
    for i in range(200):
        await _run(WRITE, s, path=f"d/f{i}", content="")
    assert len((await _run(LIST, s, path="d"))["entries"]) == 200
    assert area._usage_get() == area.usage() <= MB
    assert await _code(_run(ROLLBACK, s, path="d/f0")) == "storage.not_found"  # the oldest history went first
    assert (await _run(ROLLBACK, s, path="d/f199"))["outcome"] == "removed"


async def test_concurrent_writes_at_the_exact_boundary_fill_the_quota_and_never_pass_it(tmp_path):
    s = _settings(tmp_path, storage_quota_mb=1)
    area = _area_of(tmp_path)
    await _run(WRITE, s, path="d/seed", content="s")
    room = MB - area.usage() - FILE_BYTES - DIR_BYTES  # a new file in d/ also needs its marker and its directory
    out = await asyncio.gather(*(_run(WRITE, s, path=f"d/f{i}", content="x" * room, user="usr_1") for i in range(6)),
                               return_exceptions=True)
    assert sum(isinstance(r, dict) for r in out) == 1, out
    assert {r.code for r in out if isinstance(r, StockadeError)} == {"storage.quota"}
    assert area._usage_get() == area.usage() == MB  # exactly at the quota is allowed
    # more than dropping all history (two creation markers and their directories) can make room for,
    # with the new file's own marker and directory
    assert await _code(_run(WRITE, s, path="d/new", content="n" * (FILE_BYTES + DIR_BYTES + 1))) == "storage.quota"
    assert area._usage_get() == area.usage() == MB
    assert (await _run(READ, s, path="d/seed"))["content"] == "s"


# ---------------------------------------------------------------------------------------------- races

_PATHS = ["a", "a/b", "a/b/c", "b", "c", "c/d", "c/d/e/f", "x/y", "deep/" + "p/" * 30 + "q"]


def _storage_worker(data_dir: str, seed: int, rounds: int, barrier: Any, results: Any) -> None:
    try:
        if seed % 2:  # this "supervisor" re-walks the tree on every call
            _area._USAGE_TTL_S = 0.0
        s = Settings(data_dir=Path(data_dir), storage_quota_mb=1)
        rng = random.Random(seed)

        async def one() -> str:
            tool = rng.choice([READ, WRITE, WRITE, WRITE, LIST, DELETE, DELETE, ROLLBACK, ROLLBACK])
            args: dict[str, Any] = {"path": rng.choice(_PATHS), "user": rng.choice(["usr_1", "usr_2", None])}
            if rng.random() < 0.3:
                args["scope"] = "shared"
            if tool is WRITE:
                args["content"] = "z" * rng.choice([0, 1, 1000, 100_000, 300_000, 500_000])
            try:
                await _run(tool, s, **args)
                return "ok"
            except StockadeError as exc:
                return exc.code
            except Exception as exc:  # noqa: BLE001 - the finding: reported to the parent
                return f"BAD {tool.name}: " + "".join(traceback.format_exception(exc))[-800:]

        async def main() -> dict[str, int]:
            counts: dict[str, int] = {}
            for _ in range(rounds):  # two runs (users) and the shared scope, 12 calls at once
                for r in await asyncio.gather(*(one() for _ in range(12))):
                    counts[r] = counts.get(r, 0) + 1
            return counts

        barrier.wait(30)
        results.put(asyncio.run(main()))
    except BaseException as exc:  # noqa: BLE001
        results.put({"crash: " + repr(exc): 1})


@pytest.mark.timeout(180)
def test_two_processes_racing_every_storage_call_stay_consistent_and_within_the_quota(tmp_path):
    data = tmp_path / "data"
    area = TenantArea(data, "ten_a", MB)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_storage_worker, args=(str(data), seed, 60, barrier, results)) for seed in (1, 2)]
    for w in workers:
        w.start()
    outs: list[dict[str, int]] = []
    checks = 0
    try:
        while len(outs) < len(workers):
            try:
                outs.append(results.get(timeout=0.02))
            except queue.Empty:
                if area.base.exists():
                    with area._locked():  # between two calls: what is on disk is within the quota
                        used = area.usage()
                    assert used <= MB, used
                    checks += 1
    finally:
        for w in workers:
            w.join(30)
            if w.is_alive():
                w.kill()
    bad = [k for o in outs for k in o if k.startswith(("BAD", "crash"))]
    assert bad == [], bad[0]
    codes = {k for o in outs for k in o}
    assert codes <= {"ok", "storage.not_found", "input.invalid", "storage.quota"}, codes
    assert "storage.quota" in codes, "the workload never reached the quota"
    assert checks > 0
    with area._locked():
        assert area._usage_get() == area.usage() <= MB


# ---------------------------------------------------------------------------------------------- kb


@pytest.fixture
async def kb_env(sql_db):
    """(store, tenant a, tenant b) on a real database of each kind (the contract suite's ``sql_db``)."""
    kb = PgKbStore(sql_db.db) if sql_db.is_pg else SqliteKbStore(sql_db.db)
    return kb, await sql_db.new_tenant(), await sql_db.new_tenant()


_NOT_RUNS = [
    "-" * 33 + "x", "-" * 1000, "x " + "-" * 33, "x " + "- " * 40 + "y", "-(" * 400 + "x", "!-" * 300 + "x",
    "x -" + "&-|-<-)-" * 50 + "y", "-\u3000" * 40 + "secret", '"a b" ' + "-" * 40 + '"c d"', "x or " + "-" * 99,
]


@pytest.mark.parametrize("query", _NOT_RUNS, ids=[f"run{i}" for i in range(len(_NOT_RUNS))])
async def test_kb_search_with_runs_of_negations_answers_and_stays_in_the_tenant(kb_env, query):
    kb, a, b = kb_env
    await kb.add(b, "secret x y of the neighbour", doc_id="theirs")
    await kb.add(a, "x y our own document", doc_id="ours")
    hits = await kb.search(a, query, limit=50)
    assert {h.doc_id for h in hits} <= {"ours"}
    out = await KbSearchTool().run(KbSearchTool.args_model.model_validate({"query": query}), make_ctx(
        Settings(), tenant=a, kb=kb))
    assert {r["doc_id"] for r in out.result["results"]} <= {"ours"}


async def test_kb_search_folding_negations_keeps_their_meaning(kb_env):
    kb, a, _b = kb_env
    await kb.add(a, "apple banana", doc_id="ab")
    await kb.add(a, "apple cherry", doc_id="ac")

    async def ids(q: str) -> set[str]:
        return {h.doc_id for h in await kb.search(a, q, limit=50)}

    assert await ids("apple -banana") == {"ac"}
    assert await ids("apple " + "-" * 35 + "banana") == await ids("apple -banana")  # odd: one NOT
    if kb.__class__ is PgKbStore:  # PostgreSQL reads "--x" as NOT NOT x; an even run keeps that meaning
        assert await ids("apple " + "-" * 34 + "banana") == await ids("apple --banana") == {"ab"}
