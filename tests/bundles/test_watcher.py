"""Hot-loading: bundles written into a watched folder register within seconds; edits mint new versions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

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
