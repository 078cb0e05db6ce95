"""The rate-limit step of the chain, and the rules it builds, over real adapters."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from supervisor.chain.base import Binding, CallState
from supervisor.chain.ratelimit import RateLimitInterceptor
from supervisor.errors import StockadeError
from supervisor.limits import rule_kind, rules_for_call, validate_overrides
from supervisor.settings import Settings

pytestmark = pytest.mark.timeout(30)


def settings(**kw) -> Settings:
    base = dict(
        rate_tenant_per_s=0.001, rate_tenant_burst=50, rate_user_per_s=0.001, rate_user_burst=5,
        rate_tool_per_s=0.001, rate_tool_burst=20, rate_tenant_per_hour=1000, rate_llm_tokens_per_min=6000,
    )
    base.update(kw)
    return Settings(**base)


def binding(tenant="ten1", user="u1", key="k1", run="run1") -> Binding:
    return Binding(tenant_id=tenant, run_id=run, bundle="b", bundle_version="1", user_id=user, key_id=key)


def make_call(services, tool="echo", b: Binding | None = None, **extra) -> CallState:
    return CallState(binding=b or binding(), tool_name=tool, raw_args={}, services=services, extra=dict(extra))


class Next:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, call: CallState) -> dict:
        self.calls += 1
        return {"ok": self.calls}


async def run(icpt, call, nxt):
    try:
        return await icpt(call, nxt), None
    except StockadeError as exc:
        return None, exc


async def test_allows_until_the_user_burst_then_refuses_with_retry_after(limiter):
    services = SimpleNamespace(settings=settings(), rate=limiter)
    icpt, nxt = RateLimitInterceptor(), Next()
    for i in range(5):
        call = make_call(services)
        result, err = await run(icpt, call, nxt)
        assert err is None and result == {"ok": i + 1} and call.outcome is None
    call = make_call(services)
    result, err = await run(icpt, call, nxt)
    assert result is None and err is not None
    assert err.code == "rate.limited" and err.retryable and err.http_status == 429
    assert err.extra["limit"] == "principal" and err.extra["retry_after"] > 0
    assert call.outcome == "rate.limited" and call.error is err
    assert nxt.calls == 5  # the refused call never ran


async def test_refused_calls_do_not_eat_the_other_limits(limiter):
    """User u1 is refused many times; the tenant bucket only paid for u1's five allowed calls."""
    services = SimpleNamespace(settings=settings(rate_tenant_burst=10), rate=limiter)
    icpt, nxt = RateLimitInterceptor(), Next()
    for _ in range(30):
        await run(icpt, make_call(services, b=binding(user="u1")), nxt)
    assert nxt.calls == 5
    for _ in range(10):
        await run(icpt, make_call(services, b=binding(user="u2")), nxt)
    assert nxt.calls == 10  # u2 got its 5: the tenant bucket had 5 left, not 0


async def test_tenant_overrides_from_the_policy(limiter):
    services = SimpleNamespace(settings=settings(), rate=limiter)
    icpt, nxt = RateLimitInterceptor(), Next()
    for _ in range(5):
        await run(icpt, make_call(services, rate_overrides={"user_burst": 2}), nxt)
    assert nxt.calls == 2


async def test_tenants_and_tools_have_their_own_buckets(limiter):
    services = SimpleNamespace(settings=settings(rate_user_burst=100, rate_tool_burst=3), rate=limiter)
    icpt, nxt = RateLimitInterceptor(), Next()
    outcomes = []
    for tenant, tool in [("A", "echo")] * 4 + [("A", "kb.search")] * 4 + [("B", "echo")] * 4:
        _, err = await run(icpt, make_call(services, tool=tool, b=binding(tenant=tenant)), nxt)
        outcomes.append(err.extra["limit"] if err else "ok")
    assert outcomes == ["ok"] * 3 + ["tool"] + ["ok"] * 3 + ["tool"] + ["ok"] * 3 + ["tool"]


async def test_llm_token_throughput(limiter):
    services = SimpleNamespace(settings=settings(rate_user_burst=100, rate_llm_tokens_per_min=6000), rate=limiter)
    icpt, nxt = RateLimitInterceptor(), Next()
    _, err = await run(icpt, make_call(services, tool="llm.chat", llm_tokens=4000), nxt)
    assert err is None
    call = make_call(services, tool="llm.chat", llm_tokens=4000)
    _, err = await run(icpt, call, nxt)
    assert err is not None and err.extra["limit"] == "llm_tokens"
    assert err.extra["retry_after"] == pytest.approx(20.0, abs=0.05)  # 2,000 tokens short at 100 tokens/s
    _, err = await run(icpt, make_call(services, tool="llm.chat", llm_tokens=1500), nxt)
    assert err is None  # what is left still fits
    _, err = await run(icpt, make_call(services, tool="echo"), nxt)
    assert err is None  # other tools do not spend tokens


async def test_invalid_overrides_refuse_the_call(limiter):
    services = SimpleNamespace(settings=settings(), rate=limiter)
    nxt = Next()
    call = make_call(services, rate_overrides={"user_burst": -3})
    _, err = await run(RateLimitInterceptor(), call, nxt)
    assert err is not None and err.code == "policy.invalid" and nxt.calls == 0


async def test_a_broken_limiter_fails_closed():
    class Broken:
        async def check(self, rules, now=None):
            raise RuntimeError("adapter bug")

    services = SimpleNamespace(settings=settings(), rate=Broken())
    nxt = Next()
    call = make_call(services)
    _, err = await run(RateLimitInterceptor(), call, nxt)
    assert err is not None and err.code == "rate.unavailable"
    assert call.outcome == "rate.unavailable" and nxt.calls == 0


# --- the rules themselves


def test_rules_cover_tenant_hour_principal_and_tool():
    rules = rules_for_call(settings(), binding(), "echo")
    assert [(rule_kind(r.key), r.key) for r in rules] == [
        ("tenant", "t:ten1"), ("tenant_hour", "th:ten1"), ("principal", "p:ten1:u.u1"), ("tool", "tt:ten1:echo"),
    ]
    hourly = rules[1]
    assert hourly.burst == 1000 and hourly.rate_per_s == pytest.approx(1000 / 3600)


def test_principal_falls_back_to_the_key_then_the_run():
    assert rules_for_call(settings(), binding(user=None), "echo")[2].key == "p:ten1:k.k1"
    assert rules_for_call(settings(), binding(user=None, key=None), "echo")[2].key == "p:ten1:r.run1"


def test_key_parts_are_escaped():
    a = rules_for_call(settings(), binding(tenant="a:b"), "x")
    b = rules_for_call(settings(), binding(tenant="a"), "b:x")
    assert {r.key for r in a}.isdisjoint({r.key for r in b})


def test_llm_rule_only_for_llm_chat_and_clamped_to_the_bucket():
    assert len(rules_for_call(settings(), binding(), "llm.chat", tokens=0)) == 4
    assert len(rules_for_call(settings(), binding(), "echo", tokens=500)) == 4
    tok = rules_for_call(settings(), binding(), "llm.chat", tokens=10**9)[-1]
    assert rule_kind(tok.key) == "llm_tokens" and tok.cost == tok.burst == 6000 and tok.rate_per_s == 100


def test_override_names_and_values():
    assert validate_overrides({"rate_user_burst": 3, "tenant_per_s": 2.5, "tool_burst": None}) == {
        "user_burst": 3, "tenant_per_s": 2.5,
    }
    for bad in ({"nope": 1}, {"user_burst": 0}, {"user_burst": 1.5}, {"tenant_per_s": "fast"},
                {"tenant_per_s": float("inf")}, {"user_burst": True}):
        with pytest.raises(StockadeError) as exc:
            validate_overrides(bad)
        assert exc.value.code == "policy.invalid"


def test_a_policy_tightens_the_operators_limits_and_never_lifts_them():
    """Session 20 (a helper's finding): a tenant admin's policy ``limits: {tenant_per_s: 1000000,
    tenant_per_hour: 1000000000}`` replaced the operator's STOCKADE_RATE_* settings, so one tenant decided how
    hard it loads the shared node and its providers (60 calls at once: all allowed, where the operator's
    limits allowed 5). The lower of the two applies, as for a bundle's own limits."""
    s = settings(rate_tenant_per_s=0.5, rate_tenant_burst=5, rate_tenant_per_hour=10, rate_llm_tokens_per_min=600)
    lifted = {"tenant_per_s": 1e6, "tenant_burst": 10**6, "tenant_per_hour": 10**9, "user_per_s": 1e6,
              "user_burst": 10**6, "tool_per_s": 1e6, "tool_burst": 10**6, "llm_tokens_per_min": 10**9}
    assert ([(r.rate_per_s, r.burst) for r in rules_for_call(s, binding(), "llm.chat", lifted, tokens=5)]
            == [(r.rate_per_s, r.burst) for r in rules_for_call(s, binding(), "llm.chat", None, tokens=5)])
    tight = rules_for_call(s, binding(), "echo", {"tenant_per_s": 0.1, "tenant_burst": 2, "tenant_per_hour": 4})
    assert [(r.rate_per_s, r.burst) for r in tight[:2]] == [(0.1, 2), (4 / 3600, 4)]
