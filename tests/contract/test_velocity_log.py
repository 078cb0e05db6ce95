"""The shared per-user history of velocity rules (Redis; the embedded stack keeps it in its one process).

Two nodes - two ``PolicyInterceptor``s, as two workers hold them - judge one user's calls against one
history: "at most 2 per minute per user" lets 2 through in all, not 2 per worker (session 8; each
worker counted only the calls it saw).
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from supervisor.chain.policy import PolicyInterceptor
from supervisor.errors import StockadeError
from supervisor.policy.schema import MAX_VELOCITY
from supervisor.stores.redis import RedisVelocityLog, open_redis
from tests.policy.test_interceptor import FakePolicyStore, Next, denied, make_call

pytestmark = pytest.mark.timeout(30)

PER_USER = ("version: 1\nrules:\n"
            "  - {id: per-user, tool: echo, velocity: {max: 2, per_s: 60, scope: user}, verdict: deny}\n"
            "  - {id: e, tool: '*', verdict: allow}\n")


@pytest.fixture
async def vlog(redis_url, redis_prefix):
    client = await open_redis(redis_url)
    yield RedisVelocityLog(client, redis_prefix)
    await client.aclose()


async def test_read_record_and_the_version_check(vlog):
    assert await vlog.read("t1", "u.a", "echo") == ("0", [])
    assert await vlog.record("t1", "u.a", "echo", "0") is True
    assert await vlog.record("t1", "u.a", "echo", "0") is False  # recorded since that read: judged again
    version, ages = await vlog.read("t1", "u.a", "echo")
    assert version == "1" and len(ages) == 1 and 0 <= ages[0] < 5
    assert await vlog.record("t1", "u.a", "echo", "1") is True
    version, ages = await vlog.read("t1", "u.a", "echo")
    assert version == "2" and len(ages) == 2 and ages[0] >= ages[1]  # oldest first
    # other tools, users and tenants have their own histories
    for other in (("t1", "u.a", "mail"), ("t1", "u.b", "echo"), ("t2", "u.a", "echo")):
        assert await vlog.read(*other) == ("0", [])


async def test_principals_that_join_to_the_same_text_stay_apart(vlog):
    """A user id is free text: 'a:echo' + tool 'x' must not be user 'a' + tool 'echo:x' (or its counter)."""
    await vlog.record("t1", "u.a:echo", "x", "0")
    assert await vlog.read("t1", "u.a", "echo:x") == ("0", [])
    assert await vlog.read("t1", "u.a", "echo") == ("0", [])
    assert json.dumps(["t1", "u.a", "echo"]) not in "".join(vlog._keys("t1", "u.a:echo", "x"))


async def test_the_history_is_bounded(vlog):
    version = "0"
    for _ in range(MAX_VELOCITY + 5):
        assert await vlog.record("t1", "u.a", "echo", version)
        version = str(int(version) + 1)
    v, ages = await vlog.read("t1", "u.a", "echo")
    assert v == version and len(ages) == MAX_VELOCITY


async def test_two_nodes_share_one_users_velocity(vlog):
    store = FakePolicyStore()
    await store.set("t1", PER_USER)
    node_a, node_b = PolicyInterceptor(stored_ttl_s=0), PolicyInterceptor(stored_ttl_s=0)

    def call(run: str, user: str = "u1"):
        c = make_call(store, "echo", run=run, user=user)
        c.services = SimpleNamespace(policies=store, velocity=vlog)
        return c

    await node_a(call("a"), Next())
    await node_b(call("b"), Next())
    assert (await denied(node_a, call("c"), Next())).extra["rule_id"] == "per-user"
    assert (await denied(node_b, call("d"), Next())).extra["rule_id"] == "per-user"
    await node_b(call("e", user="u2"), Next())  # another user counts apart


async def test_parallel_calls_on_two_nodes_cannot_beat_it(vlog):
    store = FakePolicyStore()
    await store.set("t1", PER_USER)
    nodes = [PolicyInterceptor(stored_ttl_s=0) for _ in range(4)]

    async def one(i: int) -> bool:
        c = make_call(store, "echo", run=f"r{i}")
        c.services = SimpleNamespace(policies=store, velocity=vlog)
        try:
            await nodes[i % 4](c, Next())
        except StockadeError as exc:
            assert exc.code == "policy.denied", exc
            return False
        return True

    assert sum(await asyncio.gather(*(one(i) for i in range(24)))) == 2


async def test_a_lost_history_fails_closed():
    import redis.asyncio as aioredis

    store = FakePolicyStore()
    await store.set("t1", PER_USER)
    client = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)  # nothing listens there
    c = make_call(store, "echo")
    c.services = SimpleNamespace(policies=store, velocity=RedisVelocityLog(client, "x:"))
    nxt = Next()
    try:
        with pytest.raises(StockadeError) as exc:
            await PolicyInterceptor(stored_ttl_s=0)(c, nxt)
    finally:
        await client.aclose()
    assert exc.value.code == "policy.unavailable" and nxt.calls == []


async def test_run_scoped_velocity_alone_never_asks_redis(vlog):
    store = FakePolicyStore()
    await store.set("t1", PER_USER.replace("scope: user", "scope: run"))
    c = make_call(store, "echo")
    c.services = SimpleNamespace(policies=store, velocity=vlog)
    await PolicyInterceptor(stored_ttl_s=0)(c, Next())
    assert await vlog.read("t1", "u.u1", "echo") == ("0", [])


async def test_a_redirect_hop_counts_the_users_calls_on_every_node(vlog):
    """A hop (an HTTP redirect) was judged with this node's copy of the user's history: a URL redirecting to a
    host metered per user passed on a node that had not seen the user's earlier call there."""
    store = FakePolicyStore()
    await store.set("t1", "version: 1\nrules:\n"
                          "  - {id: once, tool: http.request, resource: 'https://metered.example/**',"
                          " velocity: {max: 1, per_s: 600, scope: user}, verdict: deny}\n"
                          "  - {id: any, tool: '*', verdict: allow}\n")
    node_a, node_b = PolicyInterceptor(stored_ttl_s=0), PolicyInterceptor(stored_ttl_s=0)

    def call(run: str, url: str):
        c = make_call(store, "http.request", run=run, resource=url)
        c.services = SimpleNamespace(policies=store, velocity=vlog)
        return c

    first = call("a", "https://metered.example/a")
    await node_a(first, Next())
    await node_a.recheck_resource(first, "https://metered.example/b")  # its own call is not counted twice
    second = call("b", "https://public.example/")
    await node_b(second, Next())
    with pytest.raises(StockadeError) as exc:
        await node_b.recheck_resource(second, "https://metered.example/c")
    assert exc.value.code == "policy.denied" and exc.value.extra["rule_id"] == "once"
