"""Redis unreachable, cut mid-use, or silent: every adapter refuses with a clear code, never allows."""

from __future__ import annotations

import asyncio
import socket
import time
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest

from supervisor.chain.base import Binding, CallState
from supervisor.chain.ratelimit import RateLimitInterceptor
from supervisor.errors import StockadeError
from supervisor.settings import Settings
from supervisor.stores.records import Event, RateRule
from supervisor.stores.redis import RedisEventBus, RedisRateLimiter, RedisRunQueue, open_redis
from tests.fakes.tcp_proxy import TcpProxy

pytestmark = pytest.mark.timeout(60)

RULE = RateRule("t:x", rate_per_s=1000, burst=1000)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens once it is closed


async def code_of(coro) -> str:
    try:
        await coro
    except StockadeError as exc:
        return exc.code
    return "no error"


@pytest.fixture
async def proxy(redis_url):
    parts = urlsplit(redis_url)
    p = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await p.start()
    yield p
    await p.close()


@pytest.fixture
async def proxied(proxy, redis_url):
    """A client that reaches the real Redis only through the proxy."""
    client = await open_redis(proxy.url(path=urlsplit(redis_url).path or "/0"), timeout_s=0.5)
    yield client
    await client.aclose()


async def test_open_redis_refuses_a_dead_server():
    t0 = time.monotonic()
    assert await code_of(open_redis(f"redis://:secret@127.0.0.1:{closed_port()}/0")) == "store.unavailable"
    assert time.monotonic() - t0 < 3
    try:
        await open_redis(f"redis://:secret@127.0.0.1:{closed_port()}/0")
    except StockadeError as exc:
        assert "secret" not in str(exc)  # the password never reaches a log line


async def test_every_adapter_fails_closed_on_a_closed_port(redis_prefix):
    client = await open_redis(f"redis://127.0.0.1:{closed_port()}/0", ping=False)
    try:
        t0 = time.monotonic()
        assert await code_of(RedisRateLimiter(client, redis_prefix).check([RULE])) == "rate.unavailable"
        queue = RedisRunQueue(client, redis_prefix, 1.0)
        assert await code_of(queue.enqueue("t", "r")) == "store.unavailable"
        assert await code_of(queue.claim("w", 0.1)) == "store.unavailable"
        assert await code_of(queue.depth()) == "store.unavailable"
        bus = RedisEventBus(client, redis_prefix)
        assert await code_of(bus.publish(Event("r", 1, "status", {}, 0.0))) == "store.unavailable"
        assert await code_of(bus.tail("r", 0).__anext__()) == "store.unavailable"
        await bus.close()
        assert time.monotonic() - t0 < 5  # connection refused is immediate: nothing hangs
    finally:
        await client.aclose()


async def test_rate_limiter_cut_mid_use_then_healed(proxy, proxied, redis_prefix):
    limiter = RedisRateLimiter(proxied, redis_prefix)
    assert (await limiter.check([RULE])).allowed
    proxy.cut("reset")
    for _ in range(3):
        assert await code_of(limiter.check([RULE])) == "rate.unavailable"
    proxy.restore()
    assert (await limiter.check([RULE])).allowed  # reconnects by itself


async def test_silent_redis_times_out_fast(proxy, proxied, redis_prefix):
    limiter = RedisRateLimiter(proxied, redis_prefix)
    assert (await limiter.check([RULE])).allowed
    proxy.cut("blackhole")
    t0 = time.monotonic()
    assert await code_of(limiter.check([RULE])) == "rate.unavailable"
    assert time.monotonic() - t0 < 2.5  # socket timeout 0.5 s, and timeouts are not retried


async def test_the_chain_step_never_runs_the_tool_when_redis_is_gone(proxy, proxied, redis_prefix):
    services = SimpleNamespace(settings=Settings(), rate=RedisRateLimiter(proxied, redis_prefix))
    ran = 0

    async def next_(call):
        nonlocal ran
        ran += 1
        return {}

    binding = Binding(tenant_id="t", run_id="r", bundle="b", bundle_version="1")
    assert await RateLimitInterceptor()(CallState(binding, "echo", {}, services=services), next_) == {}
    proxy.cut("reset")
    call = CallState(binding, "echo", {}, services=services)
    assert await code_of(RateLimitInterceptor()(call, next_)) == "rate.unavailable"
    assert call.outcome == "rate.unavailable" and ran == 1


async def test_queue_cut_mid_use(proxy, proxied, redis_prefix):
    queue = RedisRunQueue(proxied, redis_prefix, 5.0)
    await queue.enqueue("t", "r1")
    job = await queue.claim("w", 1)
    assert job is not None
    proxy.cut("reset")
    assert await code_of(queue.ack(job)) == "store.unavailable"
    assert await code_of(queue.claim("w", 0.2)) == "store.unavailable"
    proxy.restore()
    await queue.ack(job)
    assert await queue.depth() == 0


async def test_live_tail_reports_the_outage_instead_of_hanging(proxy, proxied, redis_prefix):
    bus = RedisEventBus(proxied, redis_prefix)
    agen = bus.tail_batches("run1", 0, idle_s=0.05)
    assert await agen.__anext__() == []  # the shared reader is blocked in XREAD
    proxy.cut("reset")

    async def drain():
        async for _ in agen:
            pass

    assert await code_of(asyncio.wait_for(drain(), 10)) == "store.unavailable"
    assert await code_of(bus.publish(Event("run1", 1, "status", {}, 0.0))) == "store.unavailable"
    proxy.restore()
    await bus.publish(Event("run1", 1, "run.completed", {}, 0.0))
    assert [e.seq async for e in bus.tail("run1", 0)] == [1]  # a new tail works again
    await bus.close()
