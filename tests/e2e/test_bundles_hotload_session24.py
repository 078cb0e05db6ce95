"""Session 24: the hot-load watcher against a real bundles folder (rename, delete mid-run, special files, limits)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

import pytest

from supervisor.bundles._memory_store import MemoryBundleStore
from supervisor.bundles.registry import BundleRegistry, BundleVersion
from supervisor.bundles.watcher import watch_bundles_dir
from tests.e2e.harness import collect, make_data_dir, settings_for, start_node
from tests.e2e.test_run_pipeline import start

SLOW_MAIN = "import asyncio\nasync def main(ctx):\n    await asyncio.sleep(float(ctx.input))\n    await ctx.answer({!r})\n"


def _text(events) -> str:
    return "".join(e.data.get("text", "") for e in events)


@pytest.mark.timeout(120)
async def test_a_folder_deleted_or_renamed_mid_run_keeps_the_run_and_the_name(tmp_path: Path) -> None:
    bundles = tmp_path / "bundles"
    (bundles / "live").mkdir(parents=True)
    (bundles / "live" / "bundle.yaml").write_text("name: live\nversion: '1'\ntools: []\nlimits: {timeout_s: 20}\n")
    (bundles / "live" / "main.py").write_text(SLOW_MAIN.format("v1"))
    node = await start_node(settings_for("embedded", make_data_dir(), bundles_dir=bundles, watch_bundles=True))
    try:
        _, key = await node.tenant()
        c = node.client(key)
        slow = await start(c, "live", "1.5")  # pinned to v1
        os.rename(bundles / "live", bundles / "renamed")  # the name comes from bundle.yaml, not the folder
        await asyncio.sleep(2.5)  # past the debounce: the watcher has seen the rename
        assert _text(await collect(c, (await start(c, "live", "0"))["id"])) == "v1"
        shutil.rmtree(bundles / "renamed")  # deleting a folder unregisters nothing (watcher docstring)
        assert _text(await collect(c, slow["id"])) == "v1"  # the run in flight kept its version
        await asyncio.sleep(2.5)
        assert _text(await collect(c, (await start(c, "live", "0"))["id"])) == "v1"
    finally:
        await node.stop()


async def _watch(tmp_path: Path, **limits: int):
    bundles = tmp_path / "bundles"
    (bundles / "b").mkdir(parents=True)
    (bundles / "b" / "bundle.yaml").write_text("name: b\nversion: '1'\ntools: []\n")
    (bundles / "b" / "main.py").write_text("async def main(ctx):\n    await ctx.answer('good')\n")
    registry = BundleRegistry(MemoryBundleStore(), tmp_path / "data", **limits)
    changes: asyncio.Queue[BundleVersion] = asyncio.Queue()
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(watch_bundles_dir(registry, bundles, stop=stop, on_change=changes.put_nowait,
                                                 ready=ready))
    await asyncio.wait_for(ready.wait(), 20)
    first = await asyncio.wait_for(changes.get(), 20)
    return bundles / "b", registry, changes, stop, task, first


async def _settled(caplog: pytest.LogCaptureFixture, text: str) -> None:
    for _ in range(400):  # the watcher logs why it kept the previous version
        if text in caplog.text:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no log line with {text!r}: {caplog.text[-2000:]}")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["link-to-shadow", "fifo", "device", "sparse-2g"])
async def test_an_entrypoint_swapped_for_a_special_or_huge_file_keeps_the_previous_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    caplog.set_level(logging.WARNING, "stockade.bundles")
    folder, registry, changes, stop, task, first = await _watch(tmp_path, max_files=100, max_bytes=1 << 20)
    try:
        main = folder / "main.py"
        main.unlink()
        if kind == "link-to-shadow":
            os.symlink("/etc/shadow", main)
            expected = "main.py is a symlink"
        elif kind == "fifo":
            os.mkfifo(main)  # a read would block the watcher for good
            expected = "main.py is a device, fifo or socket"
        elif kind == "device":
            os.symlink("/dev/zero", main) if os.geteuid() else os.mknod(main, 0o644 | 0o020000, os.makedev(1, 5))
            expected = "main.py is a" if os.geteuid() else "main.py is a device, fifo or socket"
        else:
            with open(main, "wb") as f:  # sparse: 2 GB long, no blocks; the size limit applies as on push
                f.truncate(2 << 30)
            expected = "the bundle is larger than"
        await _settled(caplog, expected)
        assert "keeping its previous version" in caplog.text
        assert changes.empty()
        current = await registry.resolve("t1", "b")
        assert current.digest == first.digest and (current.path / "main.py").read_text().endswith("('good')\n")
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("where", ["bundles-folder", "inside-a-bundle"])
async def test_a_link_to_the_host_root_does_not_stall_the_watch(tmp_path: Path, where: str) -> None:
    """watchfiles' recursive watch followed every link: a link to / had it walk the whole host, so the
    watch was never armed (no first scan, no edit ever hot-loaded) and not a word was logged."""
    bundles = tmp_path / "bundles"
    (bundles / "b").mkdir(parents=True)
    (bundles / "b" / "bundle.yaml").write_text("name: b\nversion: '1'\ntools: []\n")
    (bundles / "b" / "main.py").write_text("async def main(ctx):\n    await ctx.answer('one')\n")
    os.symlink("/", bundles / "root" if where == "bundles-folder" else bundles / "b" / "evil")
    registry = BundleRegistry(MemoryBundleStore(), tmp_path / "data", max_files=100, max_bytes=1 << 20)
    changes: asyncio.Queue[BundleVersion] = asyncio.Queue()
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(watch_bundles_dir(registry, bundles, stop=stop, on_change=changes.put_nowait,
                                                 ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 20)
        (bundles / "c").mkdir()  # a folder added after the watch was armed, then a file in a new subfolder
        (bundles / "c" / "bundle.yaml").write_text("name: c\nversion: '1'\ntools: []\n")
        (bundles / "c" / "main.py").write_text("from pkg.x import T\nasync def main(ctx):\n    await ctx.answer(T)\n")
        (bundles / "c" / "pkg").mkdir()
        (bundles / "c" / "pkg" / "x.py").write_text("T = 'one'\n")
        for _ in range(200):
            try:
                v = await registry.resolve("t1", "c")
                if (v.path / "pkg" / "x.py").read_text() == "T = 'one'\n":
                    break
            except Exception:
                pass
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the new folder was not hot-loaded")
        await asyncio.sleep(2)  # the watch armed again over the new subfolder
        (bundles / "c" / "pkg" / "x.py").write_text("T = 'two'\n")  # well before the 30 s sweep
        for _ in range(100):
            if ((await registry.resolve("t1", "c")).path / "pkg" / "x.py").read_text() == "T = 'two'\n":
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("an edit in a subfolder added later was not hot-loaded within 10 s")
        if where == "bundles-folder":  # the bundle beside the link still hot-loads
            (bundles / "b" / "main.py").write_text("async def main(ctx):\n    await ctx.answer('two')\n")
            for _ in range(100):
                if ((await registry.resolve("t1", "b")).path / "main.py").read_text().endswith("('two')\n"):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("an edit beside the link was not hot-loaded within 10 s")
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


@pytest.mark.timeout(90)
async def test_a_bundle_linked_in_after_start_has_its_edits_hot_loaded(tmp_path: Path) -> None:
    bundles, outside = tmp_path / "bundles", tmp_path / "elsewhere" / "lk"
    bundles.mkdir()
    outside.mkdir(parents=True)
    (outside / "bundle.yaml").write_text("name: lk\nversion: '1'\ntools: []\n")
    (outside / "main.py").write_text("async def main(ctx):\n    await ctx.answer('one')\n")
    registry = BundleRegistry(MemoryBundleStore(), tmp_path / "data", max_files=100, max_bytes=1 << 20)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(watch_bundles_dir(registry, bundles, stop=stop, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 20)
        os.symlink(outside, bundles / "lk")
        for _ in range(100):
            try:
                await registry.resolve("t1", "lk")
                break
            except Exception:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the linked-in bundle was not hot-loaded")
        await asyncio.sleep(2)
        (outside / "main.py").write_text("async def main(ctx):\n    await ctx.answer('two')\n")
        for _ in range(100):  # well before the 30 s sweep
            if ((await registry.resolve("t1", "lk")).path / "main.py").read_text().endswith("('two')\n"):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("an edit in the linked-in bundle was not hot-loaded within 10 s")
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


@pytest.mark.timeout(90)
async def test_a_manifest_written_in_two_bursts_does_not_register_its_first_half(tmp_path: Path) -> None:
    """A pause mid-write (past watchfiles' 250 ms quiet step) registered the prefix as a version: here a
    bundle.yaml cut before its `policy:`, i.e. the bundle without its narrowing rules."""
    folder, registry, changes, stop, task, first = await _watch(tmp_path, max_files=100, max_bytes=1 << 20)
    try:
        with open(folder / "bundle.yaml", "w") as f:
            f.write("name: b\nversion: '2'\ntools: []\n")
            f.flush()
            await asyncio.sleep(0.6)
            f.write("policy:\n  rules:\n    - {id: no-echo, tool: echo, verdict: deny}\n")
        v = await asyncio.wait_for(changes.get(), 20)
        await asyncio.sleep(1.5)
        assert changes.empty()
        assert v.version == "2" and v.manifest.policy is not None, v.manifest
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
