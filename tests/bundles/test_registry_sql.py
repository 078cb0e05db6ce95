"""The registry on the real store adapters (SQLite and PostgreSQL), as ``serve`` and workers use it."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from supervisor.bundles.registry import BundleRegistry
from supervisor.errors import StockadeError
from tests.bundles._util import bundle_files, tar_of_files, write_bundle


@dataclass
class Sql:
    registry: BundleRegistry
    tenants: Any
    kind: str

    async def tenant(self) -> str:
        return (await self.tenants.create_tenant(f"t-{secrets.token_hex(6)}")).id


@pytest.fixture(params=["sqlite", "postgres"])
def sql_target(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Any]:
    """Sync on purpose: ``pg_url`` runs its own event loop to create the database."""
    if request.param == "sqlite":
        return "sqlite", tmp_path / "stockade.db"
    return "postgres", request.getfixturevalue("pg_url")


@pytest.fixture
async def sql(sql_target: tuple[str, Any], tmp_path: Path) -> AsyncIterator[Sql]:
    kind, where = sql_target
    if kind == "sqlite":
        from supervisor.stores.sqlite import SqliteBundleStore, SqliteTenantStore, open_sqlite

        db: Any = await open_sqlite(where)
        store, tenants = SqliteBundleStore(db), SqliteTenantStore(db)
    else:
        from supervisor.stores.postgres import PgBundleStore, PgTenantStore
        from supervisor.stores.postgres.db import open_postgres

        db = await open_postgres(where, min_size=1, max_size=4)
        store, tenants = PgBundleStore(db), PgTenantStore(db)
    try:
        yield Sql(BundleRegistry(store, tmp_path / "bundles", max_files=100, max_bytes=1 << 20), tenants, kind)
    finally:
        await db.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"  # the PostgreSQL database is shared by the session


async def test_register_resolve_shadow_and_pin(sql: Sql, tmp_path: Path) -> None:
    t1, t2 = await sql.tenant(), await sql.tenant()
    name = unique("echo")
    plat = await sql.registry.register_dir(write_bundle(tmp_path / "p", name=name, text="platform"), None)
    mine = await sql.registry.register_archive(tar_of_files(bundle_files(name=name, text="mine"), prefix="x/"), t1)
    assert await sql.registry.resolve(t1, name) == mine
    assert await sql.registry.resolve(t2, name) == plat
    assert [(v.tenant_id, v.name) for v in await sql.registry.list(t1) if v.name == name] == [(t1, name), (None, name)]
    assert [v.tenant_id for v in await sql.registry.list(t2) if v.name == name] == [None]
    with pytest.raises(StockadeError) as ei:
        await sql.registry.get(t2, name, mine.digest)  # t1's version is invisible to t2
    assert ei.value.code == "bundle.not_found"

    src = write_bundle(tmp_path / "p", name=name, version="2", text="platform v2")
    v2 = await sql.registry.register_dir(src, None)
    assert (await sql.registry.resolve(t2, name)).digest == v2.digest
    assert await sql.registry.get(t2, name, plat.digest) == plat  # pinned by a run in flight


async def test_identical_content_is_one_version(sql: Sql, tmp_path: Path) -> None:
    t = await sql.tenant()
    name = unique("same")
    a = await sql.registry.register_dir(write_bundle(tmp_path / "a", name=name), t)
    b = await sql.registry.register_dir(write_bundle(tmp_path / "b", name=name), t)
    assert a == b


async def test_unknown_tenant_leaves_no_files(sql: Sql, tmp_path: Path) -> None:
    with pytest.raises(StockadeError):
        await sql.registry.register_dir(write_bundle(tmp_path / "a", name=unique("ghost")), "no-such-tenant")
    assert [p for p in sql.registry.root.glob("*/*/*") if p.is_dir()] == []


async def test_reverting_an_edit_makes_the_old_content_current(sql: Sql, tmp_path: Path) -> None:
    name = unique("revert")
    src = write_bundle(tmp_path / "src", name=name, version="1", text="one")
    v1 = await sql.registry.register_dir(src, None)
    write_bundle(src, name=name, version="2", text="two")
    await sql.registry.register_dir(src, None)
    write_bundle(src, name=name, version="1", text="one")
    assert (await sql.registry.register_dir(src, None)).digest == v1.digest
    assert (await sql.registry.resolve(None, name)).digest == v1.digest


async def test_one_unreadable_stored_manifest_hides_only_its_bundle(sql: Sql, tmp_path: Path) -> None:
    # a platform row whose manifest no longer validates (a database writer's hand, or a row of an older
    # schema) made GET /v1/bundles a 500 for every tenant, and resolving it a 500 (pydantic's error)
    t = await sql.tenant()
    good = await sql.registry.register_dir(write_bundle(tmp_path / "g", name=unique("good")), None)
    bad = unique("bad")
    await sql.registry._store.put_version(None, bad, "1", "sha256:" + "0" * 64, {})
    listed = [v.name for v in await sql.registry.list(t)]
    assert good.name in listed and bad not in listed
    with pytest.raises(StockadeError) as ei:
        await sql.registry.resolve(t, bad)
    assert ei.value.code == "bundle.invalid"
    assert await sql.registry.resolve(t, good.name) == good


async def test_delete_retires_a_name_for_its_owner_only(sql: Sql, tmp_path: Path) -> None:
    """``delete``: a tenant's own name falls back to the platform's; a platform name is the operator's
    (``delete(None, …)``), refused to a tenant as ``auth.forbidden``; pinned versions stay gettable."""
    t = await sql.tenant()
    name, only_mine = unique("shadow"), unique("mine")
    plat = await sql.registry.register_dir(write_bundle(tmp_path / "p", name=name, text="platform"), None)
    mine = await sql.registry.register_dir(write_bundle(tmp_path / "m", name=name, text="mine"), t)
    solo = await sql.registry.register_dir(write_bundle(tmp_path / "s", name=only_mine), t)
    assert await sql.registry.delete(t, name) == {"name": name, "deleted": True, "versions": 1, "platform_fallback": True}
    assert await sql.registry.resolve(t, name) == plat
    assert await sql.registry.get(t, name, mine.digest) == mine  # a run pinned to it goes on
    with pytest.raises(StockadeError) as ei:
        await sql.registry.delete(t, name)  # what is left by that name is the platform's
    assert ei.value.code == "auth.forbidden"
    assert (await sql.registry.delete(t, only_mine))["platform_fallback"] is False
    for gone in (only_mine, "No Such", "../x"):
        with pytest.raises(StockadeError) as ei:
            await sql.registry.resolve(t, gone)
        assert ei.value.code == "bundle.not_found"
        with pytest.raises(StockadeError) as ei:
            await sql.registry.delete(t, gone)
        assert ei.value.code == "bundle.not_found"
    assert await sql.registry.get(t, only_mine, solo.digest) == solo
    assert (await sql.registry.delete(None, name))["versions"] == 1  # the operator's
    with pytest.raises(StockadeError) as ei:
        await sql.registry.resolve(t, name)
    assert ei.value.code == "bundle.not_found"
    assert name not in {v.name for v in await sql.registry.list(t)}
    assert (await sql.registry.register_dir(write_bundle(tmp_path / "p", name=name, text="platform"), None)) == plat
    assert await sql.registry.resolve(t, name) == plat  # the folder registered again: back
