"""The registry against the in-memory store: immutable versions, shadowing, pinning, bad input changes nothing."""

from __future__ import annotations

import asyncio
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from supervisor.bundles import _snapshot
from supervisor.bundles._memory_store import MemoryBundleStore
from supervisor.bundles.digest import digest_dir
from supervisor.bundles.registry import BundleRegistry
from supervisor.errors import StockadeError
from tests.bundles._util import bundle_files, tar_gz, tar_of_files, tar_special, write_bundle, zip_of_files

EXAMPLES = Path(__file__).resolve().parents[2] / "bundles"


@pytest.fixture
def store() -> MemoryBundleStore:
    return MemoryBundleStore()


@pytest.fixture
def registry(store: MemoryBundleStore, tmp_path: Path) -> BundleRegistry:
    return BundleRegistry(store, tmp_path / "data" / "bundles", max_files=100, max_bytes=1024 * 1024)


def version_dirs(registry: BundleRegistry) -> list[Path]:
    return sorted(p for p in registry.root.glob("*/*/*") if p.is_dir())


async def test_register_dir_makes_an_immutable_copy(registry: BundleRegistry, store: MemoryBundleStore, tmp_path: Path) -> None:
    src = write_bundle(tmp_path / "src", name="demo", version="1", files={"lib/util.py": "X = 1\n"})
    (src / ".git").mkdir()
    (src / ".git" / "config").write_text("secret")
    v = await registry.register_dir(src, None)
    assert (v.name, v.version, v.tenant_id) == ("demo", "1", None)
    assert v.digest == digest_dir(src)
    assert v.path == registry.root / "_platform" / "demo" / v.digest.removeprefix("sha256:")
    assert (v.path / "lib" / "util.py").read_text() == "X = 1\n"
    assert not (v.path / ".git").exists()  # ignored names are neither hashed nor stored
    assert stat.S_IMODE((v.path / "main.py").stat().st_mode) == 0o444
    assert stat.S_IMODE(v.path.stat().st_mode) == 0o755

    (src / "main.py").write_text("async def main(ctx):\n    await ctx.answer('changed')\n")
    assert (v.path / "main.py").read_text() != (src / "main.py").read_text()  # the copy is not a view

    rec = await store.get_version(None, "demo", v.digest)
    assert rec is not None and rec["version"] == "1" and rec["manifest"]["name"] == "demo"


async def test_same_content_reuses_the_version(registry: BundleRegistry, store: MemoryBundleStore, tmp_path: Path) -> None:
    a = await registry.register_dir(write_bundle(tmp_path / "a"), "t1")
    b = await registry.register_dir(write_bundle(tmp_path / "b"), "t1")
    assert a == b
    assert len(await store.list("t1")) == 1
    assert version_dirs(registry) == [a.path]


async def test_concurrent_identical_registrations(registry: BundleRegistry, tmp_path: Path) -> None:
    srcs = [write_bundle(tmp_path / f"s{i}") for i in range(6)]
    versions = await asyncio.gather(*(registry.register_dir(s, "t1") for s in srcs))
    assert len({v.digest for v in versions}) == 1
    assert version_dirs(registry) == [versions[0].path]
    assert list((registry.root / ".staging").iterdir()) == []


async def test_tenant_bundle_shadows_platform(registry: BundleRegistry, tmp_path: Path) -> None:
    plat = await registry.register_dir(write_bundle(tmp_path / "p", name="echo", text="platform"), None)
    mine = await registry.register_dir(write_bundle(tmp_path / "t", name="echo", text="tenant"), "t1")
    assert mine.path.parent.parent.name == "t1"
    assert await registry.resolve("t1", "echo") == mine
    assert await registry.resolve("t2", "echo") == plat
    assert await registry.resolve(None, "echo") == plat
    listed = await registry.list("t1")
    assert [(v.tenant_id, v.name) for v in listed] == [("t1", "echo"), (None, "echo")]
    assert [(v.tenant_id, v.name) for v in await registry.list("t2")] == [(None, "echo")]


async def test_tenants_never_see_each_other(registry: BundleRegistry, tmp_path: Path) -> None:
    a = await registry.register_dir(write_bundle(tmp_path / "a", name="private"), "tenant-a")
    for call in (registry.resolve("tenant-b", "private"), registry.get("tenant-b", "private", a.digest),
                 registry.resolve(None, "private")):
        with pytest.raises(StockadeError) as ei:
            await call
        assert ei.value.code == "bundle.not_found"
    assert await registry.list("tenant-b") == []
    assert await registry.get("tenant-a", "private", a.digest) == a


async def test_pinned_version_survives_new_ones(registry: BundleRegistry, tmp_path: Path) -> None:
    src = write_bundle(tmp_path / "src", version="1", text="one")
    v1 = await registry.register_dir(src, None)
    write_bundle(src, version="2", text="two")
    v2 = await registry.register_dir(src, None)
    assert v1.digest != v2.digest
    assert (await registry.resolve("t1", "demo")).digest == v2.digest
    pinned = await registry.get("t1", "demo", v1.digest)  # a run created before the edit
    assert pinned == v1 and "'one'" in (pinned.path / "main.py").read_text()

    write_bundle(src, version="1", text="one")  # reverting makes the old content current again
    assert (await registry.register_dir(src, None)).digest == v1.digest
    assert (await registry.resolve("t1", "demo")).digest == v1.digest


async def test_lookups_of_nonsense_are_not_found(registry: BundleRegistry) -> None:
    for call in (registry.resolve("t1", "nope"), registry.resolve("t1", "../etc"),
                 registry.get("t1", "demo", "sha256:zz"), registry.get("t1", "demo", "sha256:" + "0" * 64)):
        with pytest.raises(StockadeError) as ei:
            await call
        assert ei.value.code == "bundle.not_found"
    with pytest.raises(StockadeError) as ei:
        await registry.resolve("../../etc", "demo")
    assert ei.value.code == "input.invalid"


async def test_get_checks_the_files_are_on_this_node(registry: BundleRegistry, tmp_path: Path) -> None:
    v = await registry.register_dir(write_bundle(tmp_path / "src"), None)
    v.path.rename(tmp_path / "moved")
    with pytest.raises(StockadeError, match="files are missing on this node") as ei:
        await registry.get(None, "demo", v.digest)
    assert ei.value.code == "bundle.not_found"


@pytest.mark.parametrize("name", ["a\nb.py", "x\x1b[31m.py", "\u202egnp.py", "sub\x07", "a\u2028b.txt"])
async def test_a_folder_with_control_or_format_characters_in_a_name_is_refused(
        registry: BundleRegistry, store: MemoryBundleStore, tmp_path: Path, name: str) -> None:
    """As archive members (found by an outside-in walkthrough): a folder pushed from disk (the CLI, the platform
    bundles folder) with ``a\\nb.py`` or a bidi override in a name was stored with it."""
    src = write_bundle(tmp_path / "src")
    if name == "sub\x07":
        (src / name).mkdir()
        (src / name / "x.py").write_text("x = 1\n")
    else:
        (src / name).write_text("x = 1\n")
    with pytest.raises(StockadeError, match="control or format character") as ei:
        await registry.register_dir(src, "t1")
    assert ei.value.code == "bundle.invalid"
    assert await store.list("t1") == [] and version_dirs(registry) == []
    (src / name).rename(src / "plain") if name == "sub\x07" else (src / name).unlink()
    (src / "caf\u00e9 \U0001f469\u200d\U0001f4bb.py").write_text("x = 1\n")  # other scripts, emoji: fine
    assert (await registry.register_dir(src, "t1")).name == "demo"


async def test_invalid_bundles_change_nothing(registry: BundleRegistry, store: MemoryBundleStore, tmp_path: Path) -> None:
    bad = write_bundle(tmp_path / "bad")
    (bad / "bundle.yaml").write_text("name: demo\nversion: 1\n")
    with pytest.raises(StockadeError, match="bundle.yaml line 2: version"):
        await registry.register_dir(bad, "t1")
    linked = write_bundle(tmp_path / "linked")
    (linked / "x").symlink_to("/etc/passwd")
    with pytest.raises(StockadeError, match="symlink"):
        await registry.register_dir(linked, "t1")
    big = write_bundle(tmp_path / "big", files={"data.bin": "x" * (1024 * 1024)})
    with pytest.raises(StockadeError, match="larger than"):
        await registry.register_dir(big, "t1")
    with pytest.raises(StockadeError, match="not found"):
        await registry.register_dir(tmp_path / "missing", "t1")
    assert await store.list("t1") == []
    assert version_dirs(registry) == []


async def test_register_archives(registry: BundleRegistry, tmp_path: Path) -> None:
    files = bundle_files(name="packed")
    src = tmp_path / "src"
    src.mkdir()
    for k, v in files.items():
        (src / k).write_bytes(v)
    from_tar = await registry.register_archive(tar_of_files(files, prefix="packed/"), "t1")
    from_zip = await registry.register_archive(zip_of_files(files), "t1")
    assert from_tar == from_zip and from_tar.digest == digest_dir(src)
    assert (await registry.resolve("t1", "packed")).digest == from_tar.digest
    assert list((registry.root / ".staging").iterdir()) == []


async def test_hostile_archive_leaves_no_trace(registry: BundleRegistry, store: MemoryBundleStore) -> None:
    files = bundle_files(name="evil")
    data = tar_gz([*((tarfile.TarInfo(k), v) for k, v in files.items()),
                   tar_special("passwd", tarfile.SYMTYPE, "/etc/passwd")])
    with pytest.raises(StockadeError) as ei:
        await registry.register_archive(data, "t1")
    assert ei.value.code == "archive.link"
    bad_manifest = tar_of_files({**files, "bundle.yaml": b"name: Evil\nversion: '1'\n"})
    with pytest.raises(StockadeError) as ei:
        await registry.register_archive(bad_manifest, "t1")
    assert ei.value.code == "bundle.invalid"
    assert await store.list("t1") == []
    assert version_dirs(registry) == []
    assert list((registry.root / ".staging").iterdir()) == []


async def test_example_bundles_are_valid(registry: BundleRegistry) -> None:
    echo = await registry.register_dir(EXAMPLES / "echo", None)
    hello = await registry.register_dir(EXAMPLES / "hello-tools", None)
    assert echo.manifest.tools == () and not echo.manifest.allows_tool("echo")
    assert hello.manifest.tools == ("echo",) and hello.manifest.allows_tool("echo")
    assert not hello.manifest.allows_tool("http.request")


async def test_hard_links_are_refused(registry: BundleRegistry, store: MemoryBundleStore, tmp_path: Path) -> None:
    # a hard link is not a symlink, but it can name any file on the volume: the data folder's keys, /etc/shadow
    key = tmp_path / "data" / "keys" / "master.key"
    key.parent.mkdir(parents=True)
    key.write_text("TOP SECRET")
    src = write_bundle(tmp_path / "src", name="thief")
    os.link(key, src / "loot.txt")
    with pytest.raises(StockadeError, match="loot.txt is a hard link") as ei:
        await registry.register_dir(src, "t1")
    assert ei.value.code == "bundle.invalid"
    assert await store.list("t1") == []
    assert version_dirs(registry) == []


async def test_folder_swapped_for_a_link_mid_walk_is_refused(
    registry: BundleRegistry, store: MemoryBundleStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # listed as a folder, then swapped for a link to a folder outside before the walk enters it
    secrets_dir = tmp_path / "data" / "keys"
    secrets_dir.mkdir(parents=True)
    (secrets_dir / "master.key").write_text("TOP SECRET")
    src = write_bundle(tmp_path / "src", name="racer", files={"sub/ok.py": "X = 1\n"})
    real_read = _snapshot._Walk.read

    def read_then_swap(self: Any, *args: Any) -> None:
        real_read(self, *args)
        if args[-1] == "main.py":  # "sub" sorts after it: listed already, not entered yet
            (src / "sub").rename(tmp_path / "sub.real")
            (src / "sub").symlink_to(secrets_dir)

    monkeypatch.setattr(_snapshot._Walk, "read", read_then_swap)
    with pytest.raises(StockadeError, match="sub") as ei:
        await registry.register_dir(src, "t1")
    assert ei.value.code == "bundle.invalid"
    assert await store.list("t1") == []
    assert version_dirs(registry) == []


async def test_stored_copy_changed_after_registration_is_refused_then_repaired(
    registry: BundleRegistry, tmp_path: Path
) -> None:
    src = write_bundle(tmp_path / "src", text="genuine")
    v = await registry.register_dir(src, "t1")
    main = v.path / "main.py"
    main.chmod(0o644)
    main.write_text("async def main(ctx):\n    await ctx.answer('tampered')\n")
    with pytest.raises(StockadeError, match="changed after it was registered") as ei:
        await registry.get("t1", "demo", v.digest)  # what a worker calls before mounting the files
    assert ei.value.code == "bundle.invalid"
    main.unlink()  # missing files inside the copy are a mismatch too
    with pytest.raises(StockadeError, match="changed after it was registered"):
        await registry.get("t1", "demo", v.digest)

    again = await registry.register_dir(src, "t1")  # the same content registered again restores the copy
    assert again == v
    assert digest_dir(v.path) == v.digest and "'genuine'" in main.read_text()
    assert await registry.get("t1", "demo", v.digest) == v
    assert version_dirs(registry) == [v.path]
    assert list((registry.root / ".staging").iterdir()) == []
