"""One live worker per STOCKADE_WORKER_ID (supervisor/stores/redis/worker_ids.py), on the real Redis.

Two workers given one id (``docker compose up --scale worker=3`` with the id set in the service) were one
worker to the queue and the store: either could extend the other's queue lease and hold the other's run
(the fence). Each worker now claims its id; a second live worker on it runs as ``id~2``.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from supervisor.errors import StockadeError
from supervisor.stores.redis import worker_ids
from supervisor.stores.redis.client import open_redis
from supervisor.stores.redis.worker_ids import claim_worker_id
from tests.e2e.harness import collect, start_node
from tests.fakes.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.timeout(60)]


@pytest.fixture
async def client(redis_url):
    c = await open_redis(redis_url)
    try:
        yield c
    finally:
        await c.aclose()


async def test_a_second_live_worker_on_an_id_runs_under_an_id_of_its_own(client, redis_prefix, caplog):
    with caplog.at_level(logging.WARNING, logger="stockade.worker"):
        a = await claim_worker_id(client, redis_prefix, "worker-1", 30, me="host-a:7")
        b = await claim_worker_id(client, redis_prefix, "worker-1", 30, me="host-b:7")
        c = await claim_worker_id(client, redis_prefix, "worker-1", 30, me="host-c:7")
    try:
        assert (a.worker_id, b.worker_id, c.worker_id) == ("worker-1", "worker-1~2", "worker-1~3")
        assert "worker id worker-1 is held by another worker (host-a:7" in caplog.text
        assert "this worker runs as worker-1~2" in caplog.text
        assert (await client.get(redis_prefix + "worker-id:worker-1")).endswith(" host-a:7")
        await a.release()  # a clean stop frees the id at once (not after its ttl)
        assert await client.get(redis_prefix + "worker-id:worker-1") is None
        d = await claim_worker_id(client, redis_prefix, "worker-1", 30, me="host-d:7")
        assert d.worker_id == "worker-1"
        await d.release()
    finally:
        for x in (a, b, c):
            await x.release()


async def test_a_dead_predecessor_on_this_host_and_pid_gives_the_id_up_at_once(client, redis_prefix):
    """A container restarted after a crash keeps its hostname and pid 1: the claim left under that host:pid
    is its dead predecessor's (no other process has this pid here), so the id is taken over, not suffixed
    and not waited for (30 s)."""
    key = redis_prefix + "worker-id:worker-1"
    await client.set(key, "0123456789abcdef box:1", px=30_000)
    claim = await claim_worker_id(client, redis_prefix, "worker-1", 30, me="box:1")
    try:
        assert claim.worker_id == "worker-1"
        assert (await client.get(key)) != "0123456789abcdef box:1"
    finally:
        await claim.release()
    assert await client.get(key) is None


async def test_a_live_claim_of_this_very_process_is_not_taken_over(client, redis_prefix):
    """Two nodes in one process (the tests; an embedding host) share host:pid: the first one lives."""
    a = await claim_worker_id(client, redis_prefix, "w", 30, me="box:1")
    b = await claim_worker_id(client, redis_prefix, "w", 30, me="box:1")
    try:
        assert (a.worker_id, b.worker_id) == ("w", "w~2")
    finally:
        await b.release()
        await a.release()


async def test_the_claim_is_renewed_while_the_worker_runs_and_lapses_when_it_dies(client, redis_prefix):
    key = redis_prefix + "worker-id:w"
    claim = await claim_worker_id(client, redis_prefix, "w", 0.6, me="box:1")
    renewed = asyncio.Event()
    renew = claim.renew

    async def counted() -> None:
        await renew()
        renewed.set()

    claim.renew = counted  # type: ignore[method-assign]
    try:
        for _ in range(3):  # three renewals: the claim outlives its 0.6 s ttl
            renewed.clear()
            await asyncio.wait_for(renewed.wait(), 5)
            assert 0 < await client.pttl(key) <= 600
        assert await client.exists(key)
        claim._task.cancel()  # the worker dies (no release): the claim lapses within one ttl
        for _ in range(100):
            if not await client.exists(key):
                break
            await asyncio.sleep(0.05)
        assert not await client.exists(key)
        other = await claim_worker_id(client, redis_prefix, "w", 30, me="box:2")
        assert other.worker_id == "w"
        await other.release()
    finally:
        await claim.release()


async def test_a_claim_lost_while_stalled_is_taken_again_or_reported_shared(client, redis_prefix, caplog):
    key = redis_prefix + "worker-id:w"
    claim = await claim_worker_id(client, redis_prefix, "w", 30, me="box:1")
    try:
        claim._task.cancel()
        await client.delete(key)  # lapsed while this worker was frozen; nobody took it
        await claim.renew()
        assert (await client.get(key)).endswith(" box:1")
        await client.set(key, "feedfacefeedface box:2")  # another worker took it meanwhile
        with caplog.at_level(logging.ERROR, logger="stockade.worker"):
            await claim.renew()
            await claim.renew()
        assert caplog.text.count("two live workers now share the id") == 1, caplog.text
        assert (await client.get(key)) == "feedfacefeedface box:2"  # never taken from a live holder
        await claim.release()  # nor deleted
        assert (await client.get(key)) == "feedfacefeedface box:2"
    finally:
        await claim.release()


async def test_every_suffix_held_is_a_clear_refusal(client, redis_prefix, monkeypatch):
    monkeypatch.setattr(worker_ids, "MAX_SUFFIX", 3)
    held = [await claim_worker_id(client, redis_prefix, "w", 30, me=f"h{i}:1") for i in range(3)]
    try:
        with pytest.raises(StockadeError) as err:
            await claim_worker_id(client, redis_prefix, "w", 30, me="h9:1")
        assert err.value.code == "settings.invalid"
        assert "give each worker its own STOCKADE_WORKER_ID" in err.value.detail
        assert sorted(k for k in await client.keys(redis_prefix + "*")) == [
            redis_prefix + "worker-id:w", redis_prefix + "worker-id:w~2", redis_prefix + "worker-id:w~3"]
    finally:
        for x in held:
            await x.release()


async def test_redis_away_is_store_unavailable():
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    try:
        with pytest.raises(StockadeError) as err:
            await claim_worker_id(dead, "p:", "w", 30)
        assert err.value.code == "store.unavailable"
    finally:
        await dead.aclose()


@pytest.mark.parametrize("stack_kind", ["production"])
async def test_two_nodes_given_one_worker_id_run_as_two_workers(node_config, stack_kind):
    """End to end: the second node's worker takes worker-1~2, a node stopped cleanly frees its id for the
    next one at once, and a node without STOCKADE_WORKER_ID claims nothing (hostname:pid is its own)."""
    settings = node_config.model_copy(update={"worker_id": "worker-1"})
    a = await start_node(settings)
    b = await start_node(settings, api=False)
    try:
        assert (a.rt.worker.worker_id, b.rt.worker.worker_id) == ("worker-1", "worker-1~2")
        tid, key = await a.tenant()
        c = a.client(key)
        r = await c.post("/v1/runs", json={"bundle": "echo", "input": "hello there"})
        assert r.status_code in (200, 201), r.text
        events = await asyncio.wait_for(collect(c, r.json()["id"]), 30)
        assert events[-1].event == "run.completed", events[-1]
    finally:
        await a.stop()
    await a.rt.stop()  # a second stop: no error, nothing released twice
    c = await start_node(settings, api=False)
    d = await start_node(node_config.model_copy(update={"worker_id": None}), api=False)
    try:
        assert c.rt.worker.worker_id == "worker-1"
        assert d.rt.id_claim is None
    finally:
        await d.stop()
        await c.stop()
        await b.stop()


# --- session 24 review: attacks on the claim ---------------------------------------------------------------


async def test_two_workers_claiming_one_id_at_the_same_instant_get_one_each(client, redis_prefix):
    for _ in range(20):
        wid = f"w{_}"
        a, b = await asyncio.gather(claim_worker_id(client, redis_prefix, wid, 30, me="host-a:1"),
                                    claim_worker_id(client, redis_prefix, wid, 30, me="host-b:1"))
        try:
            assert sorted((a.worker_id, b.worker_id)) == [wid, f"{wid}~2"]
            values = {await client.get(f"{redis_prefix}worker-id:{x}") for x in (wid, f"{wid}~2")}
            assert {v.partition(" ")[2] for v in values} == {"host-a:1", "host-b:1"}  # one each, none shared
        finally:
            await a.release()
            await b.release()


async def test_two_nodes_of_one_process_claiming_at_the_same_instant_get_one_each(client, redis_prefix):
    """Same host:pid (two nodes in one process): neither may take the other's fresh claim for a dead one's."""
    for _ in range(20):
        wid = f"w{_}"
        a, b = await asyncio.gather(claim_worker_id(client, redis_prefix, wid, 30, me="box:1"),
                                    claim_worker_id(client, redis_prefix, wid, 30, me="box:1"))
        try:
            assert sorted((a.worker_id, b.worker_id)) == [wid, f"{wid}~2"]
            assert (await client.get(f"{redis_prefix}worker-id:{a.worker_id}")) == a._value
            assert (await client.get(f"{redis_prefix}worker-id:{b.worker_id}")) == b._value
        finally:
            await a.release()
            await b.release()


async def test_an_id_given_with_a_suffix_of_its_own_never_shares_one(client, redis_prefix):
    """STOCKADE_WORKER_ID=worker-1~2 while worker-1 and worker-1~2 are held: one claim namespace, so the
    configured worker-1~2 and the suffixed worker-1 never run as one id."""
    a = await claim_worker_id(client, redis_prefix, "worker-1", 30, me="h1:1")
    b = await claim_worker_id(client, redis_prefix, "worker-1", 30, me="h2:1")
    c = await claim_worker_id(client, redis_prefix, "worker-1~2", 30, me="h3:1")
    d = await claim_worker_id(client, redis_prefix, "worker-1", 30, me="h4:1")
    try:
        assert (a.worker_id, b.worker_id, c.worker_id, d.worker_id) == (
            "worker-1", "worker-1~2", "worker-1~2~2", "worker-1~3")
    finally:
        for x in (a, b, c, d):
            await x.release()


@pytest.mark.parametrize("how", ["reset", "blackhole"])
async def test_redis_away_during_renew_and_release_and_release_twice(client, redis_url, redis_prefix, how):
    """Redis cut (refused, or silent) while the worker runs: renewals fail quietly and the worker goes on, the
    claim is renewed again once Redis is back; a release at stop with Redis away neither hangs nor raises."""
    parts = urlsplit(redis_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.start()
    via = await open_redis(proxy.url(path=parts.path or "/0"), timeout_s=0.5)
    key = redis_prefix + "worker-id:w"
    try:
        claim = await claim_worker_id(via, redis_prefix, "w", 30, me="box:1")
        claim._task.cancel()
        proxy.cut(how)
        await asyncio.wait_for(claim.renew(), 10)  # no error: tried again next time
        proxy.restore()
        await client.delete(key)  # it lapsed while Redis was away: the next renewal takes it again
        await asyncio.wait_for(claim.renew(), 10)
        assert (await client.get(key)) == claim._value
        proxy.cut(how)
        await asyncio.wait_for(claim.release(), 10)  # the claim lapses after its ttl
        await asyncio.wait_for(claim.release(), 10)
        proxy.restore()
        assert (await client.get(key)) == claim._value
        await claim.release()
        await claim.release()  # twice: nothing left to do
        assert await client.get(key) is None
    finally:
        await via.aclose()
        await proxy.close()


@pytest.mark.parametrize("stack_kind", ["production"])
async def test_a_start_that_fails_after_the_claim_gives_the_id_up(node_config, stack_kind, redis_url):
    """A start refused after the id was claimed (the store's recovery failed) keeps no claim renewed for the
    rest of the process: the id is free for the node that is started next."""
    from supervisor.runtime import open_runtime

    settings = node_config.model_copy(update={"worker_id": "worker-1"})
    rt = await open_runtime(settings)

    async def recover_fails() -> None:
        raise StockadeError("store.unavailable", "recovery failed")

    rt._recover = recover_fails  # type: ignore[method-assign]
    c = await open_redis(redis_url)
    try:
        with pytest.raises(StockadeError):
            await rt.start(workers=True, watch=False)
        assert rt.id_claim is None
        assert await c.get(settings.redis_prefix + "worker-id:worker-1") is None
        assert not [t for t in asyncio.all_tasks() if "_keep" in repr(t.get_coro())]
        await rt.stop()
        await rt.stop()  # twice: nothing left to release
        assert await c.get(settings.redis_prefix + "worker-id:worker-1") is None
    finally:
        await rt.stop()
        await c.aclose()


async def test_a_claim_in_flight_in_this_process_is_live_to_another_of_its_nodes(client, redis_prefix):
    """Node a's SET has landed but its claim has not returned yet when node b (same process, same host:pid)
    reads the id: b must take a's value for a live claim (-> w~2), not for a dead predecessor's to take over."""
    landed, go_on = asyncio.Event(), asyncio.Event()

    class Paused:  # node a's client: its first SET lands, then it waits
        def __getattr__(self, name):
            return getattr(client, name)

        async def set(self, *a, **kw):
            done = await client.set(*a, **kw)
            landed.set()
            await go_on.wait()
            return done

    first = asyncio.create_task(claim_worker_id(Paused(), redis_prefix, "w", 30, me="box:1"))
    await asyncio.wait_for(landed.wait(), 5)
    b = await claim_worker_id(client, redis_prefix, "w", 30, me="box:1")
    go_on.set()
    a = await asyncio.wait_for(first, 5)
    try:
        assert (a.worker_id, b.worker_id) == ("w", "w~2")
        assert await client.get(redis_prefix + "worker-id:w") == a._value
    finally:
        await b.release()
        await a.release()
