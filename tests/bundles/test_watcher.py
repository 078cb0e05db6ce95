"""Hot-loading: bundles written into a watched folder register within seconds; edits mint new versions."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from supervisor.bundles._memory_store import MemoryBundleStore
from supervisor.bundles.registry import BundleRegistry, BundleVersion
from supervisor.bundles.watcher import load_bundles_dir, watch_bundles_dir
from supervisor.errors import StockadeError
from tests.bundles._util import write_bundle

pytestmark = pytest.mark.timeout(60)
WAIT_S = 10.0  # generous upper bound on "within seconds"; the usual latency is debounce step (~0.3 s)


@dataclass
class Watched:
    registry: BundleRegistry
    dir: Path
    changes: asyncio.Queue[BundleVersion]

    async def next_change(self) -> BundleVersion:
        return await asyncio.wait_for(self.changes.get(), WAIT_S)

    async def change_where(self, text: str) -> BundleVersion:
        """Skip intermediate versions (a loaded machine may split one multi-file write in two)."""
        while True:
            v = await self.next_change()
            if text in (v.path / "main.py").read_text():
                return v


@pytest.fixture
async def watched(tmp_path: Path) -> AsyncIterator[Watched]:
    bundles_dir = tmp_path / "bundles"
    bundles_dir.mkdir()
    write_bundle(bundles_dir / "first", name="first")
    registry = BundleRegistry(MemoryBundleStore(), tmp_path / "data", max_files=100, max_bytes=1 << 20)
    changes: asyncio.Queue[BundleVersion] = asyncio.Queue()
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        watch_bundles_dir(registry, bundles_dir, stop=stop, on_change=changes.put_nowait, ready=ready)
    )
    await asyncio.wait_for(ready.wait(), WAIT_S)
    yield Watched(registry, bundles_dir, changes)
    stop.set()
    await asyncio.wait_for(task, WAIT_S)  # the watcher ends promptly when asked


async def test_start_registers_existing_folders(watched: Watched) -> None:
    v = await watched.next_change()
    assert (v.name, v.tenant_id) == ("first", None)
    assert await watched.registry.resolve("any-tenant", "first") == v


async def test_new_folder_then_edit_then_old_version_still_pinned(watched: Watched) -> None:
    await watched.next_change()  # "first", from the start-up scan
    src = write_bundle(watched.dir / "late", name="late", version="1", text="one")
    v1 = await watched.next_change()
    assert (v1.name, v1.version) == ("late", "1")

    write_bundle(src, name="late", version="2", text="two")
    v2 = await watched.change_where("'two'")
    assert (v2.name, v2.version) == ("late", "2") and v2.digest != v1.digest
    assert (await watched.registry.resolve("t1", "late")).digest == v2.digest
    pinned = await watched.registry.get("t1", "late", v1.digest)
    assert "'one'" in (pinned.path / "main.py").read_text()


async def test_broken_edit_warns_once_and_keeps_previous(watched: Watched, caplog: pytest.LogCaptureFixture) -> None:
    await watched.next_change()
    good = write_bundle(watched.dir / "a-bundle", name="a-bundle", version="1")
    v1 = await watched.next_change()
    caplog.set_level(logging.WARNING, logger="stockade.bundles")
    caplog.clear()  # a loaded machine may have split the first write and warned about a half-written folder

    (good / "bundle.yaml").write_text("name: a-bundle\nversion: [oops\n")
    # a later valid change in a folder sorting after it proves the broken one was processed first
    sentinel = write_bundle(watched.dir / "z-sentinel", name="z-sentinel", version="1")
    assert (await watched.next_change()).name == "z-sentinel"
    (good / "bundle.yaml").write_text("name: a-bundle\nversion: [oops\n")  # same error again: no new warning
    write_bundle(sentinel, name="z-sentinel", version="2")
    assert (await watched.next_change()).version == "2"

    warnings = [r for r in caplog.records if "a-bundle" in r.getMessage()]
    assert len(warnings) == 1 and "bundle.yaml line 3: while parsing a flow sequence" in warnings[0].getMessage()
    assert (await watched.registry.resolve("t1", "a-bundle")).digest == v1.digest

    write_bundle(good, name="a-bundle", version="3")  # fixed: a new version at once
    v3 = await watched.next_change()
    assert (v3.name, v3.version) == ("a-bundle", "3")


async def test_missing_folder_is_a_warning_not_a_crash(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = BundleRegistry(MemoryBundleStore(), tmp_path / "data")
    ready = asyncio.Event()
    await asyncio.wait_for(
        watch_bundles_dir(registry, tmp_path / "absent", stop=asyncio.Event(), ready=ready), WAIT_S
    )
    assert ready.is_set() and "does not exist" in caplog.text


async def test_load_bundles_dir_skips_broken_ones(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = tmp_path / "bundles"
    write_bundle(d / "ok", name="ok")
    broken = write_bundle(d / "broken", name="broken")
    (broken / "main.py").write_text("def main(ctx): pass\n")
    (d / "not-a-bundle").mkdir()
    (d / "README.md").write_text("hi")
    registry = BundleRegistry(MemoryBundleStore(), tmp_path / "data")
    loaded = await load_bundles_dir(registry, d)
    assert [v.name for v in loaded] == ["ok"]
    assert "broken" in caplog.text and "async def main" in caplog.text
    with pytest.raises(StockadeError):
        await registry.resolve(None, "broken")


async def test_unreadable_folder_does_not_hide_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    d = tmp_path / "bundles"
    write_bundle(d / "a-ok", name="a-ok")
    locked = write_bundle(d / "b-locked", name="b-locked")
    write_bundle(d / "c-ok", name="c-ok")
    real_is_file = Path.is_file

    def is_file(self: Path) -> bool:  # what a folder the server's uid may not enter does (root ignores chmod 000)
        if self.parent == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_is_file(self)

    monkeypatch.setattr(Path, "is_file", is_file)
    registry = BundleRegistry(MemoryBundleStore(), tmp_path / "data")
    loaded = await load_bundles_dir(registry, d)
    assert {"a-ok", "c-ok"} <= {v.name for v in loaded}
    assert "cannot list bundles folder" not in caplog.text
    assert (await registry.resolve("t1", "c-ok")).name == "c-ok"


async def test_bundles_folder_deleted_and_recreated_is_watched_again(watched: Watched) -> None:
    await watched.next_change()  # "first", from the start-up scan
    shutil.rmtree(watched.dir)  # e.g. a deploy that replaces the whole folder
    watched.dir.mkdir()
    src = write_bundle(watched.dir / "again", name="again", text="one")
    v1 = await watched.change_where("'one'")
    assert v1.name == "again"
    write_bundle(src, name="again", text="two")  # and edits keep being seen
    v2 = await watched.change_where("'two'")
    assert (await watched.registry.resolve("t1", "again")).digest == v2.digest


async def test_bundles_folder_symlink_repointed_is_followed(tmp_path: Path) -> None:
    releases = tmp_path / "releases"
    write_bundle(releases / "r1" / "app", name="app", text="r1")
    write_bundle(releases / "r2" / "app", name="app", text="r2")
    link = tmp_path / "bundles"
    link.symlink_to(releases / "r1")
    registry = BundleRegistry(MemoryBundleStore(), tmp_path / "data")
    w = Watched(registry, link, asyncio.Queue())
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(watch_bundles_dir(registry, link, stop=stop, on_change=w.changes.put_nowait, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), WAIT_S)
        assert "'r1'" in ((await w.next_change()).path / "main.py").read_text()
        tmp_link = tmp_path / "bundles.new"
        tmp_link.symlink_to(releases / "r2")
        tmp_link.rename(link)  # the atomic `ln -sfn` switch of a release deploy
        await w.change_where("'r2'")
        write_bundle(releases / "r2" / "app", name="app", text="r2-hotfix")  # the new target is the one watched
        v = await w.change_where("'r2-hotfix'")
        assert (await registry.resolve("t1", "app")).digest == v.digest
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)


async def test_touching_a_folder_does_not_take_a_shared_name_back(
    watched: Watched, caplog: pytest.LogCaptureFixture
) -> None:
    await watched.next_change()  # "first"
    caplog.set_level(logging.WARNING, logger="stockade.bundles")
    write_bundle(watched.dir / "a-copy", name="dup", text="a1")
    await watched.change_where("'a1'")
    b = write_bundle(watched.dir / "b-copy", name="dup", text="b1")
    await watched.change_where("'b1'")
    assert "declare the same name 'dup'" in caplog.text
    write_bundle(watched.dir / "a-copy", name="dup", text="a2")
    v = await watched.change_where("'a2'")
    assert (await watched.registry.resolve("t1", "dup")).digest == v.digest

    os.utime(b / "main.py")  # touched, not changed: b-copy must not silently become current again
    (b / "main.py").chmod(0o600)
    write_bundle(watched.dir / "z-sentinel", name="z-sentinel")  # sorts after b-copy: processed after it
    assert (await watched.next_change()).name == "z-sentinel"
    assert (await watched.registry.resolve("t1", "dup")).digest == v.digest


async def test_a_watch_that_cannot_be_armed_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from supervisor.bundles import watcher

    real_awatch, calls = watcher.awatch, []

    def awatch(*args: Any, **kwargs: Any) -> Any:  # the host's inotify limits, reached once
        calls.append(args)
        if len(calls) == 1:
            raise OSError("OS file watch limit reached")
        return real_awatch(*args, **kwargs)

    monkeypatch.setattr(watcher, "awatch", awatch)
    d = tmp_path / "bundles"
    write_bundle(d / "first", name="first")
    registry = BundleRegistry(MemoryBundleStore(), tmp_path / "data")
    w = Watched(registry, d, asyncio.Queue())
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(watch_bundles_dir(registry, d, stop=stop, on_change=w.changes.put_nowait, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), WAIT_S)
        assert (await w.next_change()).name == "first"
        write_bundle(d / "later", name="later")
        assert (await w.next_change()).name == "later"
        # once refused, once armed, and (maybe by now) once more for the folder added: a new folder re-arms the
        # watch (one watch per folder, none following a link: watcher._watch_paths) - not a retry loop
        assert "cannot watch bundles folder" in caplog.text and 2 <= len(calls) <= 3, calls
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)


@pytest.mark.parametrize("kind", ["missing", "file", "folder"])
async def test_an_unusable_bundles_dir_is_one_warning_at_start_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture, kind: str) -> None:
    """Found by an outside-in walkthrough: STOCKADE_BUNDLES_DIR=/nonexistent (or a regular file) started a node
    with no platform bundles and not a line in its log. Now one WARNING names the folder and why."""
    from supervisor.runtime import open_runtime
    from supervisor.settings import load_settings

    for k in list(os.environ):
        if k.startswith("STOCKADE_"):
            monkeypatch.delenv(k)
    bundles = tmp_path / "bundles"
    if kind == "file":
        bundles.write_text("not a folder")
    elif kind == "folder":
        write_bundle(bundles / "ok", name="ok")
    rt = await open_runtime(load_settings(data_dir=tmp_path / "data", bundles_dir=bundles, watch_bundles=False))
    try:
        with caplog.at_level(logging.WARNING):
            await rt.start(workers=False, watch=False)
        said = [r.getMessage() for r in caplog.records if str(bundles) in r.getMessage()]
        if kind == "folder":
            assert said == [] and [b.name for b in await rt.registry.list("t1")] == ["ok"]
        else:
            why = "does not exist" if kind == "missing" else "is not a folder"
            assert said == [f"platform bundles folder {bundles} (STOCKADE_BUNDLES_DIR) {why}: no platform bundles "
                            "are loaded"], caplog.text
            assert [r.levelno for r in caplog.records if str(bundles) in r.getMessage()] == [logging.WARNING]
    finally:
        await rt.stop()
