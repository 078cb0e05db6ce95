"""BundleStore contract: immutable content-addressed versions; platform bundles visible to all."""

from __future__ import annotations

import pytest

from supervisor.errors import StockadeError
from tests.contract._helpers import store


def manifest(name: str, version: str) -> dict:
    return {"name": name, "version": version, "tools": ["echo"], "limits": {"timeout_s": 30}}


@pytest.fixture
async def ctx(sql_db):
    return sql_db, store(sql_db, "BundleStore"), await sql_db.new_tenant()


async def test_put_latest_get_version(ctx):
    _, bundles, t = ctx
    assert await bundles.latest(t, "bot") is None
    assert await bundles.put_version(t, "bot", "1.0", "sha256:aaa", manifest("bot", "1.0")) is True
    assert await bundles.put_version(t, "bot", "1.0", "sha256:aaa", manifest("bot", "changed")) is False
    assert await bundles.put_version(t, "bot", "1.1", "sha256:bbb", manifest("bot", "1.1")) is True
    latest = await bundles.latest(t, "bot")
    assert latest["digest"] == "sha256:bbb" and latest["version"] == "1.1" and latest["platform"] is False
    assert latest["manifest"] == manifest("bot", "1.1") and latest["tenant_id"] == t and latest["created_at"] > 0
    first = await bundles.get_version(t, "bot", "sha256:aaa")
    assert first["version"] == "1.0" and first["manifest"] == manifest("bot", "1.0")  # immutable
    assert await bundles.get_version(t, "bot", "sha256:zzz") is None
    # re-registering an older digest stores nothing new, but makes it current again (a reverted edit)
    assert await bundles.put_version(t, "bot", "1.0", "sha256:aaa", manifest("bot", "1.0")) is False
    assert (await bundles.latest(t, "bot"))["digest"] == "sha256:aaa"
    assert (await bundles.get_version(t, "bot", "sha256:aaa"))["version"] == "1.0"


async def test_platform_bundles_and_tenant_isolation(ctx):
    sql_db, bundles, t = ctx
    other = await sql_db.new_tenant()
    name = f"plat-{t[-6:]}"
    assert await bundles.put_version(None, name, "1", "sha256:p1", manifest(name, "1")) is True
    assert await bundles.put_version(None, name, "1", "sha256:p1", manifest(name, "1")) is False
    assert await bundles.put_version(None, name, "2", "sha256:p2", manifest(name, "2")) is True
    assert await bundles.put_version(t, "mine", "1", "sha256:m1", manifest("mine", "1")) is True
    # the same digest under the tenant is a different registration than the platform's
    assert await bundles.put_version(t, name, "1", "sha256:p1", manifest(name, "1")) is True
    plat = await bundles.latest(None, name)
    assert plat["platform"] is True and plat["tenant_id"] is None and plat["digest"] == "sha256:p2"
    assert (await bundles.get_version(None, name, "sha256:p1"))["version"] == "1"
    assert await bundles.latest(other, "mine") is None

    listed = [(b["name"], b["platform"], b["digest"]) for b in await bundles.list(t)]
    assert ("mine", False, "sha256:m1") in listed
    assert (name, False, "sha256:p1") in listed and (name, True, "sha256:p2") in listed
    assert listed.index((name, False, "sha256:p1")) < listed.index((name, True, "sha256:p2"))  # own first
    other_listed = [(b["name"], b["platform"]) for b in await bundles.list(other)]
    assert (name, True) in other_listed and ("mine", False) not in other_listed
    assert all(b["tenant_id"] in (None, other) for b in await bundles.list(other))


async def test_retire_hides_a_name_but_keeps_its_versions(ctx):
    """A deleted bundle: latest/list skip every version of the name, get_version still finds each (runs pinned
    to one go on); only that owner's name is retired; registering again (a new digest, or an old one) brings
    it back; retiring what is not live retires nothing."""
    sql_db, bundles, t = ctx
    other = await sql_db.new_tenant()
    plat = f"plat-{t[-6:]}"
    for owner, name, digest in [(t, "bot", "sha256:a"), (t, "bot", "sha256:b"), (t, "keep", "sha256:k"),
                                (other, "bot", "sha256:o"), (None, plat, "sha256:p"), (t, plat, "sha256:tp")]:
        assert await bundles.put_version(owner, name, "1", digest, manifest(name, "1")) is True
    assert await bundles.retire(t, "bot") == 2
    assert await bundles.latest(t, "bot") is None
    assert (await bundles.get_version(t, "bot", "sha256:a"))["digest"] == "sha256:a"
    listed = {(b["name"], b["tenant_id"]) for b in await bundles.list(t)}
    assert ("bot", t) not in listed and ("keep", t) in listed
    assert (await bundles.latest(other, "bot"))["digest"] == "sha256:o"
    assert await bundles.retire(t, "bot") == 0 and await bundles.retire(t, "never") == 0
    # the tenant's own of a platform name: retired, the platform's stays
    assert await bundles.retire(t, plat) == 1
    assert (await bundles.latest(None, plat))["digest"] == "sha256:p" and await bundles.latest(t, plat) is None
    assert {(b["name"], b["platform"]) for b in await bundles.list(t) if b["name"] == plat} == {(plat, True)}
    # back: an old digest re-registered is current and live again; the other retired version stays retired
    assert await bundles.put_version(t, "bot", "1", "sha256:a", manifest("bot", "1")) is False
    assert (await bundles.latest(t, "bot"))["digest"] == "sha256:a"
    assert [b["digest"] for b in await bundles.list(t) if b["name"] == "bot"] == ["sha256:a"]
    assert await bundles.retire(t, "bot") == 1
    assert await bundles.put_version(t, "bot", "2", "sha256:c", manifest("bot", "2")) is True  # a new one
    assert (await bundles.latest(t, "bot"))["digest"] == "sha256:c"
    # platform names are retired by the platform (tenant_id None) only
    assert await bundles.retire(None, plat) == 1 and await bundles.latest(None, plat) is None
    assert plat not in {b["name"] for b in await bundles.list(other)}


async def test_bad_input(ctx):
    _, bundles, t = ctx
    with pytest.raises(StockadeError) as err:
        await bundles.put_version("ten_missing", "x", "1", "sha256:1", {})
    assert err.value.code == "not_found"
    with pytest.raises(StockadeError) as err:
        await bundles.put_version(t, "", "1", "sha256:1", {})
    assert err.value.code == "input.invalid"
    with pytest.raises(StockadeError) as err:
        await bundles.put_version(t, "x", "1", "sha256:1", {"bad": {1, 2}})
    assert err.value.code == "input.invalid"
    assert await bundles.list(t) == [b for b in await bundles.list(t) if b["platform"]]
