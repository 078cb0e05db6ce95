"""Hot-loading from a hostile or broken ``STOCKADE_BUNDLES_DIR`` (session 9 attacks).

Each test failed before its fix: a file name that is not UTF-8 anywhere under the folder killed the
watch for good; a path too long to store crashed start-up; one folder failing unexpectedly stopped the
others; an edit made during a store outage was never registered; edits to files watchfiles filters out
by default (``notes~``, ``node_modules/``) but that are part of the bundle were never seen; a file
nobody may read (mode 0000) was published world-readable when the server runs as root; a bundle
folder linked to a tenant's stored version republished it to every tenant; a ``bundle.yaml`` turned
into a folder, fifo or dangling link was ignored silently; file and folder names forged log lines (or
made the log drop the warning); millions of ignored names were listed whole into memory; a manifest
value YAML cannot construct (``2001-13-45``) was a server error; a "printable" version accepted line
separators and bidi overrides.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from supervisor.bundles import watcher
from supervisor.bundles._memory_store import MemoryBundleStore
from supervisor.bundles.registry import BundleRegistry, BundleVersion
from supervisor.bundles.watcher import load_bundles_dir, watch_bundles_dir
from supervisor.errors import StockadeError
from tests.bundles._util import MAIN, tar_of_files, write_bundle

pytestmark = pytest.mark.timeout(60)
WAIT_S = 10.0


class FlakyStore(MemoryBundleStore):
    """The embedded store with an outage switch (what a PostgreSQL restart looks like to the registry)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.refused = asyncio.Event()

    async def put_version(self, *args: Any, **kwargs: Any) -> bool:
        if self.down:
            self.refused.set()
            raise StockadeError("store.unavailable", "connection refused")
        return await super().put_version(*args, **kwargs)


@dataclass
class Watched:
    registry: BundleRegistry
    dir: Path
    task: asyncio.Task[None]
    changes: asyncio.Queue[BundleVersion] = field(default_factory=asyncio.Queue)

    async def change_named(self, name: str, text: str | None = None) -> BundleVersion:
        while True:
            v = await asyncio.wait_for(self.changes.get(), WAIT_S)
            if v.name == name and (text is None or text in (v.path / "main.py").read_text()):
                return v


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Any]:
    stops: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def go(bundles_dir: Path, registry: BundleRegistry | None = None) -> Watched:
        registry = registry or BundleRegistry(MemoryBundleStore(), tmp_path / "data", max_files=100, max_bytes=1 << 20)
        queue: asyncio.Queue[BundleVersion] = asyncio.Queue()
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(
            watch_bundles_dir(registry, bundles_dir, stop=stop, on_change=queue.put_nowait, ready=ready)
        )
        stops.append((stop, task))
        await asyncio.wait_for(ready.wait(), WAIT_S)
        return Watched(registry, bundles_dir, task, queue)

    yield go
    for stop, task in stops:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)


def deep_bundle(folder: Path, levels: int) -> Path:
    """A valid bundle plus one file under ``levels`` folders of 250-character names (built by fd:
    the whole path is longer than PATH_MAX)."""
    write_bundle(folder, name=folder.name)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir("d" * 250, dir_fd=fd)
            inner = os.open("d" * 250, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        f = os.open("deep.txt", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)
        os.close(f)
    finally:
        os.close(fd)
    return folder


# --- the watch itself must survive what is written into the folder


async def test_a_file_name_that_is_not_utf8_does_not_stop_the_watch(
    tmp_path: Path, start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    d = tmp_path / "bundles"
    first = write_bundle(d / "first", name="first")
    w = await start(d)
    v1 = await w.change_named("first")
    caplog.set_level(logging.WARNING, logger="stockade.bundles")
    # watchfiles cannot decode this name: before the fix its error ended the watch task for good
    os.close(os.open(os.fsencode(first) + b"/caf\xe9.txt", os.O_CREAT | os.O_WRONLY, 0o644))
    write_bundle(d / "later", name="later")
    await w.change_named("later")
    assert not w.task.done()
    assert "not valid UTF-8" in caplog.text  # the broken folder says why, and keeps its version
    assert (await w.registry.resolve("t1", "first")).digest == v1.digest


async def test_a_path_too_long_to_store_is_refused_not_a_crash(tmp_path: Path) -> None:
    d = tmp_path / "bundles"
    deep_bundle(d / "a-deep", levels=17)  # 17 x 251 bytes: past PATH_MAX once under the store's root
    write_bundle(d / "b-ok", name="b-ok")
    registry = BundleRegistry(MemoryBundleStore(), tmp_path / "data")
    with pytest.raises(StockadeError) as err:
        await registry.register_dir(d / "a-deep", None)
    assert err.value.code == "bundle.invalid" and "too long" in err.value.detail
    assert [v.name for v in await load_bundles_dir(registry, d)] == ["b-ok"]  # start-up goes on
    assert not any((tmp_path / "data" / ".staging").iterdir())


async def test_one_folder_failing_unexpectedly_does_not_stop_the_others(
    tmp_path: Path, start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    d = tmp_path / "bundles"
    write_bundle(d / "a-bad", name="a-bad")
    write_bundle(d / "b-ok", name="b-ok")
    data = tmp_path / "data"
    (data / "_platform").mkdir(parents=True)
    (data / "_platform" / "a-bad").write_text("")  # a damaged store: this one bundle cannot be written (OSError)
    registry = BundleRegistry(MemoryBundleStore(), data)
    assert [v.name for v in await load_bundles_dir(registry, d)] == ["b-ok"]  # before: start-up crashed
    assert "a-bad" in caplog.text
    w = await start(d, BundleRegistry(MemoryBundleStore(), data))
    await w.change_named("b-ok")  # before: the first scan stopped at a-bad
    write_bundle(d / "c-later", name="c-later")
    await w.change_named("c-later")


async def test_an_edit_made_during_a_store_outage_is_registered_once_it_is_over(
    tmp_path: Path, start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watcher, "_RETRY_FIRST_S", 0.2, raising=False)
    d = tmp_path / "bundles"
    src = write_bundle(d / "app", name="app", text="one")
    store = FlakyStore()
    w = await start(d, BundleRegistry(store, tmp_path / "data"))
    await w.change_named("app", "'one'")
    store.down = True
    write_bundle(src, name="app", text="two")
    await asyncio.wait_for(store.refused.wait(), WAIT_S)
    store.down = False  # nothing in the folder changes any more: the watcher must retry by itself
    v2 = await w.change_named("app", "'two'")
    assert (await w.registry.resolve("t1", "app")).digest == v2.digest


@pytest.mark.parametrize("rel", ["notes.txt~", "node_modules/data.txt", "flycheck_notes.txt"])
async def test_an_edit_to_any_file_of_the_bundle_is_seen(tmp_path: Path, start: Any, rel: str) -> None:
    d = tmp_path / "bundles"
    src = write_bundle(d / "app", name="app", files={rel: "one"})
    w = await start(d)
    v1 = await w.change_named("app")
    (src / rel).write_text("two")  # part of the bundle (hashed, stored, mounted), so a new version
    v2 = await w.change_named("app")
    assert v2.digest != v1.digest and (v2.path / rel).read_text() == "two"


# --- what ends up in a version every tenant's sandbox can read


async def test_a_file_nobody_may_read_is_refused_even_as_root(tmp_path: Path) -> None:
    src = write_bundle(tmp_path / "src", name="app", files={"secret.txt": "s3cret", "sub/x.txt": "x"})
    (src / "secret.txt").chmod(0)
    registry = BundleRegistry(MemoryBundleStore(), tmp_path / "data")
    with pytest.raises(StockadeError) as err:  # as root it was copied 0444, readable by every sandbox
        await registry.register_dir(src, None)
    assert err.value.code == "bundle.invalid" and "secret.txt" in err.value.detail
    (src / "secret.txt").chmod(0o600)
    (src / "sub").chmod(0)
    with pytest.raises(StockadeError) as err:
        await registry.register_dir(src, None)
    assert err.value.code == "bundle.invalid" and "sub" in err.value.detail
    (src / "sub").chmod(0o700)
    assert (await registry.register_dir(src, None)).name == "app"


async def test_a_bundle_folder_linked_into_the_store_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = BundleRegistry(MemoryBundleStore(), tmp_path / "data")
    private = await registry.register_dir(write_bundle(tmp_path / "src", name="private", text="tenant a"), "tenant-a")
    d = tmp_path / "bundles"
    d.mkdir()
    (d / "evil").symlink_to(private.path)  # tenant-a's stored version, republished to every tenant
    (d / "evil-store").symlink_to(registry.root)
    write_bundle(d / "ok", name="ok")
    assert [v.name for v in await load_bundles_dir(registry, d)] == ["ok"]
    assert "inside the bundle store" in caplog.text
    with pytest.raises(StockadeError) as err:
        await registry.resolve("tenant-b", "private")
    assert err.value.code == "bundle.not_found"
    with pytest.raises(StockadeError) as err:  # the tenant's own CLI path too: never a copy of a stored version
        await registry.register_dir(private.path, "tenant-b")
    assert err.value.code == "bundle.invalid"


@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")
async def test_a_bundle_folder_reached_through_a_bind_mount_of_the_store_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store under another name (a bind mount of the data folder: real paths differ, the folder is the
    same): compared by device and inode, not by path."""
    import subprocess

    registry = BundleRegistry(MemoryBundleStore(), tmp_path / "data")
    private = await registry.register_dir(write_bundle(tmp_path / "src", name="private", text="tenant a"), "tenant-a")
    alias = tmp_path / "alias"
    alias.mkdir()
    subprocess.run(["mount", "--bind", str(registry.root), str(alias)], check=True)
    try:
        d = tmp_path / "bundles"
        d.mkdir()
        (d / "evil").symlink_to(alias / private.path.relative_to(registry.root))
        write_bundle(d / "ok", name="ok")
        assert [v.name for v in await load_bundles_dir(registry, d)] == ["ok"]
        assert "inside the bundle store" in caplog.text
    finally:
        subprocess.run(["umount", str(alias)], check=True)


@pytest.mark.parametrize("breakage", ["folder", "fifo", "dangling link"])
async def test_a_bundle_yaml_that_is_not_a_file_says_so_and_keeps_the_version(
    tmp_path: Path, start: Any, caplog: pytest.LogCaptureFixture, breakage: str
) -> None:
    d = tmp_path / "bundles"
    src = write_bundle(d / "app", name="app")
    w = await start(d)
    v1 = await w.change_named("app")
    caplog.set_level(logging.WARNING, logger="stockade.bundles")
    (src / "bundle.yaml").unlink()  # a half-finished checkout, a careless script
    if breakage == "folder":
        (src / "bundle.yaml").mkdir()
    elif breakage == "fifo":
        os.mkfifo(src / "bundle.yaml")
    else:
        (src / "bundle.yaml").symlink_to(src / "gone.yaml")
    write_bundle(d / "z-sentinel", name="z-sentinel")  # sorts after app: processed after it
    await w.change_named("z-sentinel")
    warnings = [r.getMessage() for r in caplog.records if "app" in r.getMessage()]
    assert len(warnings) == 1 and "keeping its previous version" in warnings[0], warnings
    assert {"folder": "bundle.yaml is missing", "fifo": "fifo", "dangling link": "symlink"}[breakage] in warnings[0]
    assert (await w.registry.resolve("t1", "app")).digest == v1.digest


@pytest.mark.parametrize("folder", ["evil\nbundle admin 9 registered (sha256:forged)", "caf\udce9"])
async def test_hostile_names_cannot_forge_or_lose_log_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, folder: str
) -> None:
    d = tmp_path / "bundles"
    bad = write_bundle(d / folder, name="bad", files={"x\nbundle root 1 registered": ""})
    os.symlink("/etc/shadow", os.fsencode(bad) + b"/a\nforged")
    registry = BundleRegistry(MemoryBundleStore(), tmp_path / "data")
    assert await load_bundles_dir(registry, d) == []
    [message] = [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage()]
    assert "\n" not in message and message.isprintable(), message  # one line, and one a UTF-8 log can write
    assert "symlink" in message


async def test_a_folder_of_countless_ignored_names_is_refused_before_it_is_listed_whole(tmp_path: Path) -> None:
    # ignored names are not counted as files, but every one was listed (and sorted) in memory first:
    # millions of them cost the server gigabytes on every change
    from supervisor.bundles import _snapshot

    src = write_bundle(tmp_path / "src", name="app")
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(getattr(_snapshot, "_MAX_IGNORED", 10_000) + 200):
            os.close(os.open(f"m{i}.pyc", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    registry = BundleRegistry(MemoryBundleStore(), tmp_path / "data", max_files=100)
    with pytest.raises(StockadeError) as err:
        await registry.register_dir(src, None)
    assert err.value.code == "bundle.invalid" and "more than" in err.value.detail


@pytest.mark.parametrize("line", [
    "description: 2001-13-45",  # a YAML timestamp no calendar has
    "limits: {memory_mb: " + "9" * 5000 + "}",  # past Python's int-from-string digit limit
])
async def test_a_manifest_value_yaml_cannot_construct_is_bundle_invalid(tmp_path: Path, line: str) -> None:
    # before: ValueError, a server error for an upload and an "unexpected" failure for a bundles folder
    src = write_bundle(tmp_path / "src", name="app")
    (src / "bundle.yaml").write_text('name: app\nversion: "1"\n' + line + "\n")
    registry = BundleRegistry(MemoryBundleStore(), tmp_path / "data")
    with pytest.raises(StockadeError) as err:
        await registry.register_dir(src, None)
    assert err.value.code == "bundle.invalid" and "bundle.yaml" in err.value.detail
    archive = tar_of_files({"bundle.yaml": (src / "bundle.yaml").read_bytes(), "main.py": MAIN.format(text="hi").encode()})
    with pytest.raises(StockadeError) as err:
        await registry.register_archive(archive, "t1")
    assert err.value.code == "bundle.invalid"


@pytest.mark.parametrize("version", ["1\u2028bundle admin 9 registered", "1\x85x", "1\u202egnp.exe", "1\udce9"])
def test_a_version_must_be_printable_as_promised(version: str) -> None:
    # the rule said "printable" but only C0 controls were refused: a line separator forged log lines
    from supervisor.bundles.manifest import BundleManifest

    with pytest.raises(ValueError, match="printable"):
        BundleManifest.model_validate({"name": "app", "version": version})


async def test_edits_whose_events_were_lost_are_found_by_the_sweep(
    tmp_path: Path, start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel's inotify queue can overflow (a big checkout) and watchfiles drops the notice: those
    edits were never registered until the folder changed again. Lost here on purpose (a filter that
    drops every event); the sweep compares each folder's metadata with its last scan and finds them."""
    monkeypatch.setattr(watcher, "_SWEEP_S", 0.3)
    monkeypatch.setattr(watcher, "_Relevant", lambda root: (lambda change, path: False))
    d = tmp_path / "bundles"
    write_bundle(d / "app", name="app", text="first")
    w = await start(d)
    await w.change_named("app", "first")
    write_bundle(d / "app", name="app", text="second")  # no event reaches the watcher
    await w.change_named("app", "second")
    write_bundle(d / "new", name="new")  # nor for a whole new folder
    await w.change_named("new")
