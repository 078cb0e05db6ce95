"""storage.* on a real directory: round trips, escapes, symlinks, quota, rollback, tenant isolation."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from supervisor.errors import StockadeError
from supervisor.settings import Settings
from supervisor.tools.storage import (
    StorageDeleteTool,
    StorageListTool,
    StorageReadTool,
    StorageRollbackTool,
    StorageWriteTool,
    tools,
)
from supervisor.tools.storage.tools import content_cap
from tests.tools.test_http_helpers import make_ctx

pytestmark = pytest.mark.timeout(30)

READ, WRITE, LIST, DELETE, ROLLBACK = (StorageReadTool(), StorageWriteTool(), StorageListTool(), StorageDeleteTool(),
                                       StorageRollbackTool())


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", **kw)


async def _run(tool: Any, settings: Settings, *, tenant: str = "ten_a", user: str | None = "usr_1",
               **args: Any) -> dict[str, Any]:
    ctx = make_ctx(settings, tenant=tenant, user=user)
    parsed = tool.args_model.model_validate(args)
    tool.resource(parsed, ctx)  # what the chain does before policy: must not raise for valid input
    return (await tool.run(parsed, ctx)).result


def _root(tmp_path: Path, tenant: str = "ten_a", scope: str = "u/usr_1") -> Path:
    return tmp_path / "data" / "storage" / tenant / scope


async def test_write_read_list_delete_round_trip(tmp_path):
    s = _settings(tmp_path)
    out = await _run(WRITE, s, path="notes/a.txt", content="héllo")
    assert out == {"path": "notes/a.txt", "scope": "user", "size": 6, "created": True}
    assert (_root(tmp_path) / "notes" / "a.txt").read_text() == "héllo"
    assert (await _run(READ, s, path="notes//./a.txt"))["content"] == "héllo"
    await _run(WRITE, s, path="notes/b.txt", content="bb")
    listing = await _run(LIST, s, path="notes")
    assert listing["entries"] == [{"name": "a.txt", "type": "file", "size": 6}, {"name": "b.txt", "type": "file", "size": 2}]
    assert (await _run(LIST, s))["entries"] == [{"name": "notes", "type": "dir", "size": 0}]
    assert (await _run(DELETE, s, path="notes/a.txt"))["deleted"] is True
    with pytest.raises(StockadeError) as ei:
        await _run(READ, s, path="notes/a.txt")
    assert ei.value.code == "storage.not_found"
    with pytest.raises(StockadeError) as ei:
        await _run(DELETE, s, path="notes/a.txt")
    assert ei.value.code == "storage.not_found"


async def test_scopes_user_shared_and_default(tmp_path):
    s = _settings(tmp_path)
    await _run(WRITE, s, path="x", content="mine")
    await _run(WRITE, s, path="x", content="ours", scope="shared")
    assert (await _run(READ, s, path="x"))["content"] == "mine"
    assert (await _run(READ, s, path="x", user="usr_2", scope="shared"))["content"] == "ours"
    assert (await _run(READ, s, path="x", user=None))["content"] == "ours"  # no user: shared by default
    with pytest.raises(StockadeError) as ei:
        await _run(READ, s, path="x", user="usr_2")  # another user's private scope is a different directory
    assert ei.value.code == "storage.not_found"
    with pytest.raises(StockadeError) as ei:
        await _run(READ, s, path="x", user=None, scope="user")
    assert ei.value.code == "input.invalid"


def test_resource_is_built_from_the_resolved_path(tmp_path):
    s = _settings(tmp_path)
    ctx = make_ctx(s)
    args = WRITE.args_model.model_validate({"path": "a/./b//c.txt", "content": ""})
    assert WRITE.resource(args, ctx) == "storage://u/usr_1/a/b/c.txt"
    args = READ.args_model.model_validate({"path": "docs/r.md", "scope": "shared"})
    assert READ.resource(args, ctx) == "storage://shared/docs/r.md"
    assert LIST.resource(LIST.args_model.model_validate({}), ctx) == "storage://u/usr_1/"


@pytest.mark.parametrize("path,code", [
    ("ws/../secret", "storage.escape"),
    ("../ten_b/u/usr_1/x", "storage.escape"),
    ("../../../../etc/passwd", "storage.escape"),
    ("/etc/passwd", "storage.escape"),
    ("a\\..\\..\\b", "storage.escape"),
    ("..", "storage.escape"),
    ("a/b/..", "storage.escape"),
    ("x\x00.txt", "input.invalid"),
    ("a\nb", "input.invalid"),
    ("", "input.invalid"),
    ("./", "input.invalid"),
    ("a" * 256, "input.invalid"),
])
async def test_hostile_paths_refused_and_nothing_written(tmp_path, path, code):
    s = _settings(tmp_path)
    for tool, extra in ((WRITE, {"content": "x"}), (READ, {}), (DELETE, {}), (ROLLBACK, {})):
        with pytest.raises(StockadeError) as ei:
            await _run(tool, s, path=path, **extra)
        assert ei.value.code == code, (tool.name, path)
    assert not (tmp_path / "secret").exists()
    files = [p for p in (tmp_path / "data").rglob("*") if p.is_file() and p.name != ".lock"] if (tmp_path / "data").exists() else []
    assert files == []


async def test_percent_dot_dot_is_a_literal_name_inside_the_root(tmp_path):
    s = _settings(tmp_path)
    out = await _run(WRITE, s, path="%2e%2e/x", content="lit")
    assert out["path"] == "%2e%2e/x"
    assert (_root(tmp_path) / "%2e%2e" / "x").read_text() == "lit"


async def test_symlinks_planted_inside_the_root_cannot_lead_out(tmp_path):
    s = _settings(tmp_path)
    await _run(WRITE, s, path="keep.txt", content="k")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret")
    root = _root(tmp_path)
    os.symlink(outside, root / "dirlink")
    os.symlink(outside / "secret.txt", root / "filelink")
    os.symlink("/etc/passwd", root / "passwd")
    for tool, path, extra in ((READ, "dirlink/secret.txt", {}), (READ, "filelink", {}), (READ, "passwd", {}),
                              (WRITE, "dirlink/new.txt", {"content": "x"}), (WRITE, "filelink", {"content": "x"}),
                              (DELETE, "filelink", {}), (LIST, "dirlink", {})):
        with pytest.raises(StockadeError) as ei:
            await _run(tool, s, path=path, **extra)
        assert ei.value.code == "storage.escape", (tool.name, path)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "top secret"
    # a link that stays inside is followed, and the policy sees the real path
    os.symlink(root / "keep.txt", root / "alias")
    assert (await _run(READ, s, path="alias"))["content"] == "k"
    ctx = make_ctx(s)
    assert READ.resource(READ.args_model.model_validate({"path": "alias"}), ctx) == "storage://u/usr_1/keep.txt"


async def test_scope_directory_replaced_by_a_link_is_refused(tmp_path):
    s = _settings(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_text("o")
    tenant_dir = tmp_path / "data" / "storage" / "ten_a" / "u"
    tenant_dir.mkdir(parents=True)
    os.symlink(outside, tenant_dir / "usr_1")
    with pytest.raises(StockadeError) as ei:
        await _run(READ, s, path="x")
    assert ei.value.code == "storage.escape"


async def test_tenant_a_cannot_reach_tenant_b(tmp_path):
    s = _settings(tmp_path)
    await _run(WRITE, s, tenant="ten_b", path="secret.txt", content="B only")
    await _run(WRITE, s, tenant="ten_b", path="shared.txt", content="B shared", scope="shared")
    for path in ("secret.txt", "../../ten_b/u/usr_1/secret.txt", "../../../ten_b/shared/shared.txt",
                 "/" + str(_root(tmp_path, "ten_b")) + "/secret.txt"):
        for scope in (None, "shared"):
            args: dict[str, Any] = {"path": path}
            if scope:
                args["scope"] = scope
            with pytest.raises(StockadeError) as ei:
                await _run(READ, s, tenant="ten_a", **args)
            assert ei.value.code in ("storage.not_found", "storage.escape")
    assert (await _run(LIST, s, tenant="ten_a"))["entries"] == []
    with pytest.raises(StockadeError) as ei:
        await _run(READ, s, tenant="../ten_b", path="secret.txt")
    assert ei.value.code == "input.invalid"


async def test_rollback_undoes_overwrite_delete_and_create(tmp_path):
    s = _settings(tmp_path)
    await _run(WRITE, s, path="doc.txt", content="v1")
    await _run(WRITE, s, path="doc.txt", content="v2")
    await _run(WRITE, s, path="doc.txt", content="v3")
    assert (await _run(ROLLBACK, s, path="doc.txt"))["outcome"] == "restored"
    assert (await _run(READ, s, path="doc.txt"))["content"] == "v2"
    await _run(DELETE, s, path="doc.txt")
    assert (await _run(ROLLBACK, s, path="doc.txt"))["outcome"] == "restored"
    assert (await _run(READ, s, path="doc.txt"))["content"] == "v2"
    assert (await _run(ROLLBACK, s, path="doc.txt"))["outcome"] == "restored"
    assert (await _run(READ, s, path="doc.txt"))["content"] == "v1"
    assert (await _run(ROLLBACK, s, path="doc.txt"))["outcome"] == "removed"  # v1 was a creation
    with pytest.raises(StockadeError) as ei:
        await _run(READ, s, path="doc.txt")
    assert ei.value.code == "storage.not_found"
    with pytest.raises(StockadeError) as ei:
        await _run(ROLLBACK, s, path="doc.txt")
    assert ei.value.code == "storage.not_found"
    assert (await _run(LIST, s))["entries"] == []  # snapshots are not visible as files


async def test_snapshots_unreachable_by_keys(tmp_path):
    s = _settings(tmp_path)
    await _run(WRITE, s, path="a", content="1")
    await _run(WRITE, s, path="a", content="2")
    for path in (".versions", "../.versions", "../../.versions"):
        with pytest.raises(StockadeError):
            await _run(LIST, s, path=path)


async def test_quota_counts_snapshots_drops_oldest_history_then_refuses(tmp_path):
    s = _settings(tmp_path, storage_quota_mb=1)
    mb = 1024 * 1024
    await _run(WRITE, s, path="big", content="a" * (600 * 1024))
    with pytest.raises(StockadeError) as ei:
        await _run(WRITE, s, path="other", content="b" * (500 * 1024))  # 1100 kB live > 1 MB
    assert ei.value.code == "storage.quota"
    assert not (_root(tmp_path) / "other").exists()
    # overwrite: the old 600 kB version becomes a snapshot and still counts...
    await _run(WRITE, s, path="big", content="c" * (300 * 1024))
    # ... until a write needs the room: the oldest snapshot is dropped, the live data is kept
    await _run(WRITE, s, path="other", content="d" * (500 * 1024))
    assert (_root(tmp_path) / "big").stat().st_size == 300 * 1024
    with pytest.raises(StockadeError):
        await _run(WRITE, s, path="huge", content="e" * (2 * mb))
    # the shared scope counts against the same tenant quota
    with pytest.raises(StockadeError) as ei:
        await _run(WRITE, s, path="more", content="f" * (400 * 1024), scope="shared")
    assert ei.value.code == "storage.quota"


async def test_concurrent_writers_respect_the_quota(tmp_path):
    s = _settings(tmp_path, storage_quota_mb=1)
    chunk = "z" * (300 * 1024)
    results = await asyncio.gather(*(_run(WRITE, s, path=f"f{i}", content=chunk) for i in range(6)),
                                   return_exceptions=True)
    ok = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, StockadeError)]
    assert len(ok) == 3 and len(refused) == 3 and all(e.code == "storage.quota" for e in refused)


async def test_write_is_atomic_no_temp_files_left(tmp_path):
    s = _settings(tmp_path)
    for i in range(5):
        await _run(WRITE, s, path="a.txt", content=str(i) * 1000)
    assert list((tmp_path / "data" / "storage" / "ten_a" / ".tmp").iterdir()) == []
    assert (await _run(READ, s, path="a.txt"))["content"] == "4" * 1000


async def test_file_directory_conflicts_are_input_invalid(tmp_path):
    s = _settings(tmp_path)
    await _run(WRITE, s, path="a/b", content="x")
    with pytest.raises(StockadeError) as ei:
        await _run(WRITE, s, path="a", content="y")
    assert ei.value.code == "input.invalid"
    with pytest.raises(StockadeError) as ei:
        await _run(WRITE, s, path="a/b/c", content="y")
    assert ei.value.code == "input.invalid"
    # refused writes left no snapshot behind: only the marker of the first creation exists
    assert len(list((tmp_path / "data").rglob("*.absent"))) == 1
    assert (await _run(READ, s, path="a/b"))["content"] == "x"


async def test_what_is_written_can_be_read_back(tmp_path):
    """Writes and reads share one cap. Writes took up to the frame cap while reads stopped at half of
    it: a 700 KB file (1 MiB frames) was written fine and could never be read (input.too_large)."""
    s = _settings(tmp_path, sandbox_max_frame_bytes=4096)
    assert content_cap(s) == 4096
    await _run(WRITE, s, path="fits", content="\x01" * 4096)  # the worst case for the reply's JSON: 6 bytes each
    assert (await _run(READ, s, path="fits"))["content"] == "\x01" * 4096
    with pytest.raises(StockadeError) as ei:
        await _run(WRITE, s, path="big", content="x" * 4097)
    assert ei.value.code == "input.too_large" and "4097 bytes" in ei.value.detail
    with pytest.raises(StockadeError) as ei:
        await _run(READ, s, path="big")
    assert ei.value.code == "storage.not_found"  # the refused write left nothing
    # a file that grew past the cap some other way (an operator's copy) is still refused, not cut short
    (_root(tmp_path) / "grown").write_bytes(b"y" * 5000)
    with pytest.raises(StockadeError) as ei:
        await _run(READ, s, path="grown")
    assert ei.value.code == "input.too_large"
    # default frames: a 700 KB file round-trips; the cap is the frame, well inside the 16 MiB reply
    d = _settings(tmp_path / "d")
    assert content_cap(d) == d.sandbox_max_frame_bytes == 1024 * 1024
    await _run(WRITE, d, path="doc", content="é" * 350_000)
    assert (await _run(READ, d, path="doc"))["size"] == 700_000
    # a frame cap so high that a sixth of the reply is less: that bound wins
    assert content_cap(_settings(tmp_path / "e", sandbox_max_frame_bytes=64 * 1024 * 1024)) == 64 * 1024 * 1024 // 6


def test_args_and_metadata():
    with pytest.raises(ValidationError):
        WRITE.args_model.model_validate({"path": "a", "content": 5})
    with pytest.raises(ValidationError):
        READ.args_model.model_validate({"path": "a", "scope": "tenant"})
    with pytest.raises(ValidationError):
        READ.args_model.model_validate({"path": "a", "extra": 1})
    by_name = {t.name: t for t in tools()}
    assert set(by_name) == {"storage.read", "storage.write", "storage.list", "storage.delete", "storage.rollback"}
    assert by_name["storage.read"].risk == "low" and by_name["storage.list"].risk == "low"
    assert by_name["storage.write"].risk == "medium" and by_name["storage.delete"].risk == "medium"
    assert by_name["storage.write"].side_effects and not by_name["storage.read"].side_effects


async def test_usage_counter_matches_a_full_walk_and_picks_up_outside_changes(tmp_path, monkeypatch):
    from supervisor.tools.storage import _area

    s = _settings(tmp_path, storage_quota_mb=1)
    area = _area.TenantArea(tmp_path / "data", "ten_a", 1024 * 1024)
    for i in range(14):  # more than MAX_VERSIONS overwrites: trimming frees bytes
        await _run(WRITE, s, path="a.txt", content="a" * (1000 + i))
    await _run(WRITE, s, path="d/b.txt", content="b" * 5000)
    await _run(DELETE, s, path="d/b.txt")
    await _run(ROLLBACK, s, path="d/b.txt")
    await _run(ROLLBACK, s, path="a.txt")
    await _run(WRITE, s, path="c.txt", content="c" * 700, scope="shared")
    await _run(ROLLBACK, s, path="c.txt", scope="shared")
    assert area._usage_get() == area.usage()
    # a file put there by hand is counted once the counter is older than its time-to-live
    (_root(tmp_path) / "manual.bin").write_bytes(b"m" * 900_000)
    monkeypatch.setattr(_area, "_USAGE_TTL_S", 0.0)
    with pytest.raises(StockadeError) as ei:
        await _run(WRITE, s, path="more", content="x" * 200_000)
    assert ei.value.code == "storage.quota"


@pytest.mark.parametrize("path", [
    "%252e%252e/x", ".%2e/x", "\u2024\u2024/x", "\uff0e\uff0e/x", "a/\u2025/x", "~/x", "..\u200b", ".. ",
    "\u2215etc\u2215passwd", "\uff0fetc", "CON", "aux.txt", "b.", "*", "?", "[a]",
])
async def test_dot_dot_look_alikes_are_literal_names_inside_the_root(tmp_path, path):
    s = _settings(tmp_path)
    out = await _run(WRITE, s, path=path, content="lit")
    assert out["path"] == path
    assert (_root(tmp_path) / path).read_text() == "lit"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert (await _run(READ, s, path=path))["content"] == "lit"
    if "/" not in path:  # glob characters are not interpreted by list: only the exact entry is there
        assert [e["name"] for e in (await _run(LIST, s))["entries"]] == [path]


async def test_path_too_long_under_the_root_is_input_invalid_for_every_tool(tmp_path):
    s = Settings(data_dir=tmp_path / ("d" * 200) / ("e" * 200) / "data")
    key = "/".join(["\U0001d552" * 63] * 16)  # 1023 characters, 4047 bytes: only too long once under the root
    for tool, extra in ((WRITE, {"content": "x"}), (READ, {}), (LIST, {}), (DELETE, {}), (ROLLBACK, {})):
        with pytest.raises(StockadeError) as ei:
            await _run(tool, s, path=key, **extra)
        assert ei.value.code == "input.invalid", tool.name


async def test_quota_counts_directories_so_empty_files_cannot_fill_the_disk(tmp_path):
    # each write of an empty file under ~500 directories used to cost 2 MB of disk and 0 bytes of quota
    s = _settings(tmp_path, storage_quota_mb=1)
    with pytest.raises(StockadeError) as ei:
        await _run(WRITE, s, path="deep/" + "a/" * 500 + "f", content="")  # 2 MB of directories alone
    assert ei.value.code == "storage.quota"
    with pytest.raises(StockadeError) as ei:
        for i in range(20):
            await _run(WRITE, s, path=f"d{i}/" + "a/" * 100 + "f", content="")
    assert ei.value.code == "storage.quota"
    assert i == 2  # 100 directories = 400 kB each
    dirs = sum(1 for p in (tmp_path / "data").rglob("*") if p.is_dir())
    assert dirs < 1024 * 1024 // _area_mod().DIR_BYTES
    area = _area_mod().TenantArea(tmp_path / "data", "ten_a", 1024 * 1024)
    assert area._usage_get() == area.usage() <= 1024 * 1024
    # deleting gives the directories back (pruned), and the counter still matches a full walk
    await _run(DELETE, s, path="d0/" + "a/" * 100 + "f")
    await _run(WRITE, s, path=f"d{i}/" + "a/" * 100 + "f", content="")  # fits again
    await _run(WRITE, s, path="x/y/z", content="1")
    await _run(ROLLBACK, s, path="x/y/z")
    assert area._usage_get() == area.usage()


def _area_mod() -> Any:
    from supervisor.tools.storage import _area

    return _area


async def test_link_swapped_between_policy_check_and_use_is_refused(tmp_path):
    # TOCTOU: the policy judged "link/f" as allowed/f; by the time the tool runs, link points at denied/.
    # No storage tool creates links (so a bundle cannot win this race on its own), but one present in the
    # tenant's storage must not move a checked call elsewhere.
    from types import SimpleNamespace

    s = _settings(tmp_path)
    await _run(WRITE, s, path="allowed/f", content="ok")
    await _run(WRITE, s, path="denied/f", content="secret")
    root = _root(tmp_path)
    os.symlink("allowed", root / "link")
    for tool, extra in ((READ, {}), (WRITE, {"content": "x"}), (DELETE, {}), (ROLLBACK, {}), (LIST, {})):
        ctx = make_ctx(s)
        args = tool.args_model.model_validate({"path": "link/f" if tool is not LIST else "link", **extra})
        ctx.call = SimpleNamespace(resource=tool.resource(args, ctx))
        assert ctx.call.resource.startswith("storage://u/usr_1/allowed")
        (root / "link").unlink()
        os.symlink("denied", root / "link")
        try:
            with pytest.raises(StockadeError) as ei:
                await tool.run(args, ctx)
            assert ei.value.code == "storage.escape", tool.name
        finally:
            (root / "link").unlink()
            os.symlink("allowed", root / "link")
    assert (root / "denied" / "f").read_text() == "secret"


async def test_concurrent_calls_racing_on_one_path_stay_inside_and_consistent(tmp_path):
    # two calls of one run at once: write/delete/rollback/read of the same path and of its parent as a file
    s = _settings(tmp_path, storage_quota_mb=1)
    await _run(WRITE, s, path="a/b", content="v0")
    ops = []
    for i in range(30):
        ops += [_run(WRITE, s, path="a/b", content=f"v{i}"), _run(DELETE, s, path="a/b"), _run(ROLLBACK, s, path="a/b"),
                _run(WRITE, s, path="a", content="file"), _run(READ, s, path="a/b"), _run(LIST, s, path="a")]
    results = await asyncio.gather(*ops, return_exceptions=True)
    bad = [r for r in results if not isinstance(r, (dict, StockadeError))]
    assert bad == []
    assert {r.code for r in results if isinstance(r, StockadeError)} <= {"storage.not_found", "input.invalid"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    area = _area_mod().TenantArea(tmp_path / "data", "ten_a", 1024 * 1024)
    assert area._usage_get() == area.usage()


async def test_list_racing_a_delete_reports_the_moment_not_an_oserror(tmp_path, monkeypatch):
    # list takes no lock: the directory, or an entry in it, can vanish between the checks and the reads.
    # Deterministic versions of what the race above hits now and then.
    s = _settings(tmp_path)
    await _run(WRITE, s, path="d/keep", content="1")
    await _run(WRITE, s, path="d/gone", content="2")
    mod = _area_mod()
    real_scandir = os.scandir

    def entry_deleted_after_readdir(path):  # readdir saw "gone"; it is deleted before its stat
        entries = list(real_scandir(path))
        (Path(path) / "gone").unlink(missing_ok=True)

        class It:
            def __enter__(self):
                return iter(entries)

            def __exit__(self, *exc):
                return False
        return It()

    monkeypatch.setattr(mod.os, "scandir", entry_deleted_after_readdir)
    out = await _run(LIST, s, path="d")
    assert [e["name"] for e in out["entries"]] == ["keep"]

    def rm_tree(path):  # not shutil.rmtree: it calls os.scandir, patched here
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        os.rmdir(path)

    def dir_deleted_first(path):
        rm_tree(path)
        return real_scandir(path)

    monkeypatch.setattr(mod.os, "scandir", dir_deleted_first)
    with pytest.raises(StockadeError) as ei:
        await _run(LIST, s, path="d")
    assert ei.value.code == "storage.not_found"

    monkeypatch.setattr(mod.os, "scandir", real_scandir)  # the write below lists its versions (Path.iterdir
    await _run(WRITE, s, path="e/x", content="1")        # calls os.scandir on Python 3.13)

    def dir_became_file(path):
        rm_tree(path)
        Path(path).write_text("file")
        return real_scandir(path)

    monkeypatch.setattr(mod.os, "scandir", dir_became_file)
    with pytest.raises(StockadeError) as ei:
        await _run(LIST, s, path="e")
    assert ei.value.code == "input.invalid"
