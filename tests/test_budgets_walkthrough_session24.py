"""Budget walkthrough (session 24): PUT /v1/budgets from two API nodes at once.

- Two nodes setting the first cap of one account at once: node B's ``SELECT ... FOR UPDATE`` found no row
  (node A's insert was not committed yet), its upsert then waited for A and overwrote A's cap - and B's
  ``budget.updated`` record said ``previous: null``, though B replaced A's cap. Now the cap is inserted
  first (``ON CONFLICT DO NOTHING`` waits for A) and read FOR UPDATE only when it existed.
- Two PUTs naming the same accounts in opposite orders locked the cap rows in request order: a deadlock,
  one PUT aborted after deadlock_timeout (``ledger.unavailable`` for a valid request). Rows are now locked
  in one order (scope, scope_id); the answer keeps the request's order.
"""

from __future__ import annotations

import asyncio
import math
import secrets

import asyncpg
import pytest

from supervisor.errors import StockadeError
from supervisor.stores.postgres.db import open_postgres
from supervisor.stores.postgres.ledger import PgLedger
from tests.test_budget_attacks_session6 import blocked_by

pytestmark = pytest.mark.timeout(60)

T = "ten_walk24"


@pytest.fixture
async def two_nodes(fresh_pg_url: str):
    a = await open_postgres(fresh_pg_url, min_size=1, max_size=4)  # migrates the fresh database
    b = await open_postgres(fresh_pg_url, min_size=1, max_size=4)
    async with a.acquire() as conn:
        await conn.execute("INSERT INTO tenants (id, name, created_at) VALUES ($1, 'walk24', 0)", T)
    try:
        yield fresh_pg_url, PgLedger(a), PgLedger(b)
    finally:
        await a.close()
        await b.close()


async def test_a_first_cap_written_by_two_nodes_at_once_names_the_cap_it_replaced(two_nodes):
    url, _a, b = two_nodes
    # node A's PUT, mid-transaction: its cap inserted, not committed yet
    conn = await asyncpg.connect(url)
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute("INSERT INTO budget_caps (tenant_id, scope, scope_id, cap_micro, period, updated_at)"
                           " VALUES ($1, 'tenant', $1, 5000000, 'month', 0)", T)
        put_b = asyncio.ensure_future(b.set_caps(T, [("tenant", T, 7_000_000, "lifetime")]))
        await blocked_by(url, conn.get_server_pid())  # B waits on A's row
        await tx.commit()
    except BaseException:
        await tx.rollback()
        raise
    finally:
        await conn.close()
    [written] = await asyncio.wait_for(put_b, 10)
    # was: previous None - B's record hid that it replaced A's 5 USD monthly cap
    assert (written.previous_cap_micro, written.previous_period) == (5_000_000, "month")
    assert (written.cap_micro, written.period) == (7_000_000, "lifetime")


async def test_two_nodes_writing_the_same_caps_in_opposite_orders_never_deadlock(two_nodes):
    url, a, b = two_nodes
    await a.set_caps(T, [("tenant", T, 1, "month"), ("user", "usr_x", 1, "month")])
    # node A's PUT of [tenant, user] has locked the tenant cap; node B's PUT of [user, tenant] starts
    conn = await asyncpg.connect(url)
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute("SELECT set_config('deadlock_timeout', '50ms', true)")
        await conn.fetch("SELECT 1 FROM budget_caps WHERE tenant_id = $1 AND scope = 'tenant' FOR UPDATE", T)
        put_b = asyncio.ensure_future(b.set_caps(T, [("user", "usr_x", 3_000_000, "month"), ("tenant", T, 2_000_000, "month")]))
        await blocked_by(url, conn.get_server_pid())
        # A goes on to its second account, the user's: B must not be holding it (was: it did - a deadlock)
        await asyncio.wait_for(conn.fetch(
            "SELECT 1 FROM budget_caps WHERE tenant_id = $1 AND scope = 'user' FOR UPDATE", T), 10)
        await tx.commit()
    except BaseException:
        await tx.rollback()
        raise
    finally:
        await conn.close()
    written = await asyncio.wait_for(put_b, 10)
    assert [(w.scope, w.cap_micro) for w in written] == [("user", 3_000_000), ("tenant", 2_000_000)]  # request order
    assert [(w.scope, w.previous_cap_micro) for w in written] == [("user", 1), ("tenant", 1)]


# --------------------------------------------------------------------------- held: rate limits at extreme values


@pytest.mark.parametrize("rate", [1e12, 1e300])
async def test_an_absurdly_fast_rate_is_metered_alike_on_both_stacks(limiter, rate):
    """``1e12`` per second: an interval below a micro-second (Redis meters micro-seconds). Both stacks let a burst
    of 2 through again and again, never an error, never a negative or infinite wait."""
    from supervisor.stores.records import RateRule

    rule = RateRule("p:t:u." + secrets.token_hex(4), rate, 2)
    for _ in range(20):
        d = await limiter.check([rule], None)
        assert d.allowed, d


@pytest.mark.parametrize("rate", [0, -1.0, math.nan, math.inf])
async def test_a_rate_of_zero_or_not_finite_is_refused_not_unlimited(limiter, rate):
    from supervisor.stores.records import RateRule

    with pytest.raises(StockadeError) as err:
        await limiter.check([RateRule("p:t:u." + secrets.token_hex(4), rate, 1)], None)
    assert err.value.code == "input.invalid"


def test_a_policy_rate_of_zero_or_a_tiny_count_is_policy_invalid():
    from supervisor.limits.rules import validate_overrides

    for bad in ({"user_per_s": 0}, {"user_per_s": -0.0}, {"user_per_s": math.nan}, {"user_burst": 0.5}, {"user_per_s": True}):
        with pytest.raises(StockadeError) as err:
            validate_overrides(bad)
        assert err.value.code == "policy.invalid", bad
    assert validate_overrides({"user_per_s": 1e-9}) == {"user_per_s": 1e-9}


async def test_two_deployments_sharing_redis_under_different_prefixes_keep_their_own_buckets(redis_url, redis_prefix):
    from supervisor.stores.records import RateRule
    from supervisor.stores.redis import RedisRateLimiter, open_redis

    client = await open_redis(redis_url)
    try:
        one, two = RedisRateLimiter(client, redis_prefix + "a:"), RedisRateLimiter(client, redis_prefix + "b:")
        rule = RateRule("p:ten_x:usr_y", 1e-9, 1)
        assert (await one.check([rule], None)).allowed
        assert not (await one.check([rule], None)).allowed
        assert (await two.check([rule], None)).allowed  # the other deployment's first call of the same key
        assert not (await two.check([rule], None)).allowed
    finally:
        await client.aclose()
