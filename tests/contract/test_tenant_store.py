"""TenantStore contract: SQLite and PostgreSQL behave the same."""

from __future__ import annotations

import secrets

import pytest

from supervisor.errors import StockadeError


def _name() -> str:
    return f"acme-{secrets.token_hex(5)}"


async def test_create_and_get_tenant(sql_db):
    store = sql_db.tenant_store()
    name = _name()
    t = await store.create_tenant(name)
    assert t.id.startswith("ten_") and t.name == name and t.created_at > 0
    assert await store.get_tenant(t.id) == t
    assert await store.get_tenant_by_name(name) == t
    assert await store.get_tenant("ten_missing") is None
    assert await store.get_tenant_by_name("no-such-" + name) is None
    assert t in await store.list_tenants()


async def test_duplicate_tenant_name_is_a_conflict_and_writes_nothing(sql_db):
    store = sql_db.tenant_store()
    name = _name()
    await store.create_tenant(name)
    before = len(await store.list_tenants())
    with pytest.raises(StockadeError) as err:
        await store.create_tenant(name)
    assert err.value.code == "conflict"
    assert len(await store.list_tenants()) == before


async def test_empty_tenant_name_is_invalid(sql_db):
    with pytest.raises(StockadeError) as err:
        await sql_db.tenant_store().create_tenant("  ")
    assert err.value.code == "input.invalid"


async def test_projects_and_users_are_scoped_by_tenant(sql_db):
    store = sql_db.tenant_store()
    a, b = await sql_db.new_tenant(), await sql_db.new_tenant()
    p = await store.create_project(a, "web")
    u = await store.create_user(a, "ada")
    assert p.id.startswith("prj_") and u.id.startswith("usr_")
    assert await store.get_project(a, p.id) == p
    assert await store.get_user(a, u.id) == u
    assert await store.get_project(b, p.id) is None
    assert await store.get_user(b, u.id) is None


async def test_project_of_unknown_tenant_is_not_found(sql_db):
    with pytest.raises(StockadeError) as err:
        await sql_db.tenant_store().create_project("ten_nope", "web")
    assert err.value.code == "not_found"


async def test_keys_find_by_hash_across_tenants_list_and_revoke(sql_db):
    store = sql_db.tenant_store()
    a, b = await sql_db.new_tenant(), await sql_db.new_tenant()
    u = await store.create_user(a, "ada")
    h = secrets.token_hex(32)
    k = await store.create_key(a, key_id="key_" + secrets.token_hex(6), key_hash=h, prefix="sk_abc", role="admin",
                               user_id=u.id)
    assert k.tenant_id == a and k.user_id == u.id and k.revoked_at is None
    found = await store.find_key(h)
    assert found == k
    assert await store.find_key("nope") is None
    assert await store.list_keys(a) == [k]
    assert await store.list_keys(b) == []
    assert await store.revoke_key(b, k.id) is False  # another tenant cannot revoke it
    assert await store.revoke_key(a, k.id) is True
    assert await store.revoke_key(a, k.id) is False  # only once
    revoked = await store.find_key(h)
    assert revoked is not None and revoked.revoked_at is not None


async def test_key_validation(sql_db):
    store = sql_db.tenant_store()
    a, b = await sql_db.new_tenant(), await sql_db.new_tenant()
    with pytest.raises(StockadeError) as err:
        await store.create_key(a, key_id="key_x1" + secrets.token_hex(4), key_hash=secrets.token_hex(8),
                               prefix="sk", role="root")
    assert err.value.code == "input.invalid"
    # a key cannot name a user of another tenant
    other_user = await store.create_user(b, "bob")
    with pytest.raises(StockadeError) as err:
        await store.create_key(a, key_id="key_x2" + secrets.token_hex(4), key_hash=secrets.token_hex(8),
                               prefix="sk", role="member", user_id=other_user.id)
    assert err.value.code == "not_found"
    # the key hash is unique
    h = secrets.token_hex(8)
    await store.create_key(a, key_id="key_x3" + secrets.token_hex(4), key_hash=h, prefix="sk", role="viewer")
    with pytest.raises(StockadeError) as err:
        await store.create_key(b, key_id="key_x4" + secrets.token_hex(4), key_hash=h, prefix="sk", role="viewer")
    assert err.value.code == "conflict"
    assert await store.list_keys(b) == []


async def test_project_membership(sql_db):
    store = sql_db.tenant_store()
    t, other = await sql_db.new_tenant(), await sql_db.new_tenant()
    p1, p2 = await store.create_project(t, "apollo"), await store.create_project(t, "zeus")
    ada, bob = await store.create_user(t, "ada"), await store.create_user(t, "bob")
    assert await store.list_projects(t) == [p1, p2] and await store.list_users(t) == [ada, bob]
    assert await store.list_projects(other) == [] and await store.list_users(other) == []
    assert not await store.is_member(t, p1.id, ada.id)
    assert await store.add_member(t, p1.id, ada.id) is True
    assert await store.add_member(t, p1.id, ada.id) is False  # already: nothing changes
    assert await store.add_member(t, p1.id, bob.id) is True
    assert await store.is_member(t, p1.id, ada.id) and not await store.is_member(t, p2.id, ada.id)
    assert await store.list_members(t, p1.id) == [ada.id, bob.id] and await store.list_members(t, p2.id) == []
    # another tenant neither sees nor reaches them
    assert not await store.is_member(other, p1.id, ada.id) and await store.list_members(other, p1.id) == []
    assert await store.remove_member(other, p1.id, ada.id) is False
    # a project or user that does not exist (or is another tenant's) is refused by the database itself
    for project, user in ((p1.id, "usr_missing"), ("prj_missing", ada.id)):
        with pytest.raises(StockadeError) as err:
            await store.add_member(t, project, user)
        assert err.value.code == "not_found"
    o_user = await store.create_user(other, "eve")
    with pytest.raises(StockadeError) as err:
        await store.add_member(t, p1.id, o_user.id)
    assert err.value.code == "not_found"
    with pytest.raises(StockadeError) as err:
        await store.add_member(other, p1.id, o_user.id)
    assert err.value.code == "not_found"
    assert await store.remove_member(t, p1.id, ada.id) is True
    assert await store.remove_member(t, p1.id, ada.id) is False
    assert await store.list_members(t, p1.id) == [bob.id]


@pytest.fixture(params=["sqlite", "postgres"])
def unmigrated(request: pytest.FixtureRequest, tmp_path):
    """("sqlite", path) or ("postgres", url of a database no migration ran on). Sync: see sql_target."""
    if request.param == "sqlite":
        return "sqlite", tmp_path / "stockade.db"
    return "postgres", request.getfixturevalue("fresh_pg_url")


async def test_membership_migration_keeps_the_pairs_already_in_use(unmigrated, tmp_path):
    # keys bound to a user and a project, and runs that had both, were created before memberships existed:
    # after the migration they are memberships, so those keys and such runs keep working
    import shutil

    from supervisor.stores.migrations.runner import HERE, migrate_postgres, migrate_sqlite
    from supervisor.stores.postgres import PgRunStore, PgTenantStore, open_postgres
    from supervisor.stores.records import Run
    from supervisor.stores.sqlite import SqliteRunStore, SqliteTenantStore, open_sqlite

    kind, where = unmigrated
    before = tmp_path / "before"
    before.mkdir()
    for f in (HERE / kind).glob("*.sql"):
        if f.name < "0040":
            shutil.copy(f, before / f.name)
    if kind == "sqlite":
        db = await open_sqlite(where, migrate=False)
        await migrate_sqlite(db, before)
        store, runs = SqliteTenantStore(db), SqliteRunStore(db)
    else:
        await migrate_postgres(where, before)
        db = await open_postgres(where, min_size=1, max_size=2, migrate=False)
        store, runs = PgTenantStore(db), PgRunStore(db)
    try:
        t = (await store.create_tenant("mig")).id
        p1, p2 = (await store.create_project(t, "p1")).id, (await store.create_project(t, "p2")).id
        u1, u2, u3 = [(await store.create_user(t, n)).id for n in ("u1", "u2", "u3")]
        await store.create_key(t, key_id="key_1", key_hash="h1", prefix="sk", role="member", user_id=u1, project_id=p1)
        await store.create_key(t, key_id="key_2", key_hash="h2", prefix="sk", role="member", user_id=u3)  # one side only
        await runs.create_run(Run("run_1", t, "echo", "1", "x", "queued", 1.0, project_id=p2, user_id=u2))
        await runs.create_run(Run("run_2", t, "echo", "1", "x", "queued", 1.0, project_id=p1, user_id=u1))
        await runs.create_run(Run("run_3", t, "echo", "1", "x", "queued", 1.0, project_id=p2))
        applied = await (migrate_sqlite(db) if kind == "sqlite" else migrate_postgres(db))
        assert "0040_project_members.sql" in applied
        assert await store.list_members(t, p1) == [u1] and await store.list_members(t, p2) == [u2]
    finally:
        await db.close()
