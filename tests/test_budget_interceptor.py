"""The budget step of the chain, with a fake tool over the real SQLite and PostgreSQL ledgers."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from supervisor.budget import usd_to_micro, worst_case_micro
from supervisor.chain.base import Binding, CallState
from supervisor.chain.budget import BudgetInterceptor
from supervisor.chain.execute import execute
from supervisor.errors import StockadeError
from supervisor.settings import load_settings
from supervisor.stores.postgres import PgTenantStore
from supervisor.stores.postgres.db import open_postgres
from supervisor.stores.postgres.ledger import PgLedger
from supervisor.stores.sqlite import SqliteTenantStore
from supervisor.stores.sqlite.db import open_sqlite
from supervisor.stores.sqlite.ledger import SqliteLedger
from supervisor.tools.base import ToolContext

pytestmark = pytest.mark.timeout(60)


@dataclass
class FakeTool:
    name: str = "fake"
    estimate: int | None = None  # estimate_micro's answer
    default_price_micro: int = 0
    timeout_s: float = 5.0

    def estimate_micro(self, args: Any, ctx: Any) -> int | None:
        return self.estimate


@dataclass
class Env:
    ledger: Any
    tenant_id: str
    services: Any
    events: list[tuple[str, dict[str, Any]]]

    def call(self, tool: FakeTool, *, prices: dict[str, Any] | None = None, user: str | None = None,
             project: str | None = None) -> CallState:
        b = Binding(tenant_id=self.tenant_id, run_id="run_" + secrets.token_hex(4), bundle="b", bundle_version="1",
                    user_id=user, project_id=project)

        async def emit(type_: str, data: dict[str, Any]) -> None:
            self.events.append((type_, data))

        c = CallState(binding=b, tool_name=tool.name, raw_args={}, tool=tool, services=self.services, emit=emit)
        if prices is not None:
            c.extra["prices"] = prices
        return c

    async def account(self, scope: str = "tenant", scope_id: str | None = None) -> Any:
        sid = scope_id or self.tenant_id
        return next(a for a in await self.ledger.accounts(self.tenant_id, time.time())
                    if (a.scope, a.scope_id) == (scope, sid))


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str | None:
    """None for SQLite, else the PostgreSQL URL (resolved outside the event loop: pg_url runs asyncio.run)."""
    return None if request.param == "sqlite" else request.getfixturevalue("pg_url")


@pytest.fixture
async def env(backend: str | None, tmp_path: Path):
    if backend is None:
        db: Any = await open_sqlite(tmp_path / "s.db")
        tenants: Any = SqliteTenantStore(db)
        ledger: Any = SqliteLedger(db)
    else:
        db = await open_postgres(backend, min_size=1, max_size=4)
        tenants, ledger = PgTenantStore(db), PgLedger(db)
    try:
        t = await tenants.create_tenant("t-" + secrets.token_hex(5))
        settings = load_settings(data_dir=tmp_path)
        yield Env(ledger, t.id, SimpleNamespace(settings=settings, ledger=ledger), [])
    finally:
        await db.close()


class Next:
    """A stand-in for the rest of the chain that records whether it ran."""

    def __init__(self, cost: int | None = None, exc: BaseException | None = None) -> None:
        self.calls = 0
        self.cost = cost
        self.exc = exc
        self.seen_reserved: int | None = None

    async def __call__(self, call: CallState) -> dict[str, Any]:
        self.calls += 1
        self.seen_reserved = call.reserved_micro
        if self.cost is not None:
            call.cost_micro = self.cost
        if self.exc is not None:
            raise self.exc
        return {"ok": True}


def test_worst_case_sources():
    assert worst_case_micro(FakeTool(estimate=1234), None, None, {"fake": 1}) == 1234  # the tool knows best
    assert worst_case_micro(FakeTool(), None, None, {"fake": 0.001}) == 1000  # policy price, exact in micro
    assert worst_case_micro(FakeTool(name="kb.search"), None, None, {"kb.*": "0.0005"}) == 500  # glob
    assert worst_case_micro(FakeTool(default_price_micro=7), None, None, {"other": 1}) == 7
    assert usd_to_micro(0.1 + 0.2) == 300_000
    with pytest.raises(StockadeError):
        worst_case_micro(FakeTool(), None, None, {"fake": -1})


def test_domain_amounts_periods_scopes():
    from supervisor.budget import check_scopes, micro_to_usd, period_key, scopes_for

    assert period_key(1798761599.0) == "2026-12" and period_key(1798761600.0) == "2027-01"  # UTC month edge
    assert period_key(5.0, "lifetime") == "lifetime"
    assert usd_to_micro("0.0000005") == 1 and usd_to_micro(2) == 2_000_000 and micro_to_usd(1_500) == 0.0015
    for bad in (float("nan"), float("inf"), -0.01, True, "abc", 10**10, 1e300, "-1e300", "1e30000"):  # 1e300: was InvalidOperation
        with pytest.raises(StockadeError) as err:
            usd_to_micro(bad)
        assert err.value.code == "input.invalid"
    with pytest.raises(StockadeError):
        period_key(0.0, "weekly")
    assert check_scopes([("user", "u"), ("tenant", "t"), ("user", "u"), ("project", "p")]) == [
        ("tenant", "t"), ("project", "p"), ("user", "u")]
    b = Binding(tenant_id="t", run_id="r", bundle="b", bundle_version="1", user_id="u")
    assert scopes_for(b) == [("tenant", "t"), ("user", "u")]


def test_budget_refusals_write_usd_without_an_exponent():
    # was: "The user budget (0.00015 USD) has 5e-05 USD left; ..." (and 1.23457e+06 for a large cap)
    from supervisor.budget import exceeded_error, format_usd

    err = exceeded_error("user", "u", 150, 50, 100)
    assert err.detail == "The user budget (0.00015 USD) has 0.00005 USD left; this call may cost up to 0.0001 USD."
    assert err.to_dict()["remaining_usd"] == 0.00005  # the JSON fields stay numbers
    assert [format_usd(m) for m in (0, 1, 10, 1_000_000, 1_234_567_500_000, 10**15, -5)] == [
        "0", "0.000001", "0.00001", "1", "1234567.5", "1000000000", "-0.000005"]


async def test_over_cap_call_never_reaches_next(env: Env):
    await env.ledger.set_cap(env.tenant_id, "tenant", env.tenant_id, 1_000)
    nxt = Next()
    call = env.call(FakeTool(), prices={"fake": 0.002})
    with pytest.raises(StockadeError) as err:
        await BudgetInterceptor()(call, nxt)
    assert err.value.code == "budget.exceeded" and err.value.extra["tier"] == "tenant"
    assert nxt.calls == 0
    assert call.outcome == "budget.exceeded" and call.extra["budget_tier"] == "tenant"
    assert call.reservation_id is None
    acct = await env.account()
    assert (acct.spent_micro, acct.reserved_micro) == (0, 0)
    assert env.events == []


async def test_user_tier_binds_and_is_named(env: Env):
    await env.ledger.set_cap(env.tenant_id, "user", "usr_a", 500)
    nxt = Next()
    with pytest.raises(StockadeError) as err:
        await BudgetInterceptor()(env.call(FakeTool(estimate=600), user="usr_a", project="prj_a"), nxt)
    assert err.value.extra["tier"] == "user" and nxt.calls == 0
    # another user of the same tenant is not limited by usr_a's cap
    await BudgetInterceptor()(env.call(FakeTool(estimate=600), user="usr_b", project="prj_a"), Next(cost=600))


async def test_per_call_price_is_charged_on_success(env: Env):
    await env.ledger.set_cap(env.tenant_id, "tenant", env.tenant_id, 10_000)
    nxt = Next()
    call = env.call(FakeTool(), prices={"fake": 0.001})
    assert await BudgetInterceptor()(call, nxt) == {"ok": True}
    assert nxt.calls == 1 and nxt.seen_reserved == 1_000
    assert call.reservation_id and call.reserved_micro == 1_000 and call.cost_micro == 1_000
    acct = await env.account()
    assert (acct.spent_micro, acct.reserved_micro) == (1_000, 0)
    [(kind, data)] = env.events
    assert kind == "usage"
    assert data["tool"] == "fake" and data["cost_usd"] == 0.001 and data["reserved_usd"] == 0.001
    assert data["tiers"] == [{"scope": "tenant", "scope_id": env.tenant_id, "period_key": acct.period_key,
                              "spent_usd": 0.001, "cap_usd": 0.01, "remaining_usd": 0.009}]


async def test_estimated_call_commits_actual_and_releases_the_rest(env: Env):
    await env.ledger.set_cap(env.tenant_id, "tenant", env.tenant_id, 10_000)
    call = env.call(FakeTool(estimate=5_000))
    await BudgetInterceptor()(call, Next(cost=1_200))
    acct = await env.account()
    assert (acct.spent_micro, acct.reserved_micro) == (1_200, 0)
    entries = await env.ledger.entries(env.tenant_id)
    assert [(e.amount_micro, e.reservation_id, e.tool, e.run_id) for e in entries] == [
        (1_200, call.reservation_id, "fake", call.binding.run_id)]


async def test_failed_call_commits_what_it_spent_and_reraises(env: Env):
    await env.ledger.set_cap(env.tenant_id, "tenant", env.tenant_id, 10_000)
    icpt = BudgetInterceptor()
    boom = StockadeError("llm.provider_error", "stream cut")
    with pytest.raises(StockadeError) as err:
        await icpt(env.call(FakeTool(estimate=4_000)), Next(cost=300, exc=boom))
    assert err.value is boom
    acct = await env.account()
    assert (acct.spent_micro, acct.reserved_micro) == (300, 0)
    # a failed per-call priced call that spent nothing is not charged its price
    with pytest.raises(RuntimeError):
        await icpt(env.call(FakeTool(), prices={"fake": 0.002}), Next(exc=RuntimeError("x")))
    acct = await env.account()
    assert (acct.spent_micro, acct.reserved_micro) == (300, 0)
    assert [d["cost_usd"] for k, d in env.events if k == "usage"] == [0.0003, 0.0]


async def test_cancelled_call_still_settles(env: Env):
    await env.ledger.set_cap(env.tenant_id, "tenant", env.tenant_id, 10_000)
    started = asyncio.Event()

    async def hang(call: CallState) -> dict[str, Any]:
        call.cost_micro = 250  # tokens streamed before the cancel
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    task = asyncio.create_task(BudgetInterceptor()(env.call(FakeTool(estimate=2_000)), hang))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    acct = await env.account()
    assert (acct.spent_micro, acct.reserved_micro) == (250, 0)


async def test_a_tool_cancelled_mid_way_is_charged_what_it_spent_through_execute(env: Env):
    """execute() reads what the tool had spent (ToolContext.spent_micro) when the run ends mid-call."""
    await env.ledger.set_cap(env.tenant_id, "tenant", env.tenant_id, 10_000)
    started = asyncio.Event()

    class Streaming(FakeTool):
        async def run(self, args: Any, ctx: ToolContext) -> Any:
            ctx.spent_micro = 320  # e.g. an LLM answer cut off after some tokens (llm.chat sets it on cancel)
            started.set()
            await asyncio.Event().wait()

    call = env.call(Streaming(estimate=2_000))
    call.tool_ctx = ToolContext(tenant_id=env.tenant_id, run_id=call.binding.run_id, user_id=None, project_id=None,
                                emit=call.emit)
    task = asyncio.create_task(BudgetInterceptor()(call, execute))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert call.cost_micro == 320
    acct = await env.account()
    assert (acct.spent_micro, acct.reserved_micro) == (320, 0)


async def test_free_call_reserves_nothing(env: Env):
    await env.ledger.set_cap(env.tenant_id, "tenant", env.tenant_id, 0)
    nxt = Next()
    call = env.call(FakeTool(estimate=0))
    await BudgetInterceptor()(call, nxt)
    assert nxt.calls == 1 and call.reservation_id is None and env.events == []


async def test_warning_once_per_tier_per_period(env: Env):
    await env.ledger.set_cap(env.tenant_id, "tenant", env.tenant_id, 10_000)
    await env.ledger.set_cap(env.tenant_id, "user", "usr_w", 5_000)
    icpt = BudgetInterceptor()

    def warnings() -> list[tuple[str, int, float]]:
        return [(d["tier"], d["threshold_pct"], d["percent"]) for k, d in env.events if k == "budget.warning"]

    # 2,000 per call: usr_w passes 80 % of its cap on its 2nd call, the tenant on the 4th call overall.
    for user in ("usr_w", "usr_w", "usr_v", "usr_v", "usr_v"):
        await icpt(env.call(FakeTool(estimate=2_000), user=user), Next(cost=2_000))
        if len(warnings()) == 1:
            assert warnings() == [("user", 80, 80.0)]
    assert warnings() == [("user", 80, 80.0), ("tenant", 80, 80.0)]
    with pytest.raises(StockadeError) as err:
        await icpt(env.call(FakeTool(estimate=2_000), user="usr_v"), Next(cost=2_000))
    assert err.value.extra["tier"] == "tenant"
    assert len(warnings()) == 2
    assert len([k for k, _ in env.events if k == "usage"]) == 5


async def test_unavailable_ledger_fails_closed(env: Env):
    await env.ledger.set_cap(env.tenant_id, "tenant", env.tenant_id, 10_000)
    await env.ledger.db.close()
    nxt = Next()
    call = env.call(FakeTool(estimate=100))
    with pytest.raises(StockadeError) as err:
        await BudgetInterceptor()(call, nxt)
    assert err.value.code == "ledger.unavailable" and call.outcome == "ledger.unavailable"
    assert nxt.calls == 0


# --------------------------------------------------------------------------- through the real chain

POLICY = """version: 1
rules:
  - id: echo
    tool: echo
    verdict: allow
prices:
  echo: 0.001
"""


@pytest.fixture(params=["embedded", "postgres+redis"])
def node_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "embedded":
        return load_settings(data_dir=tmp_path)
    return load_settings(data_dir=tmp_path, database_url=request.getfixturevalue("pg_url"),
                         redis_url=request.getfixturevalue("redis_url"),
                         redis_prefix=request.getfixturevalue("redis_prefix"))


@pytest.mark.timeout(120)
async def test_concurrent_priced_echo_calls_through_the_chain_stop_exactly_at_the_cap(node_settings: Any):
    """Several runs fire priced echo calls at once against a 0.010 USD tenant cap: exactly 10 execute."""
    from supervisor.audit.chain import Sealer
    from supervisor.audit.keys import load_audit_key
    from supervisor.audit.recorder import AuditRecorder
    from supervisor.chain.build import build_chain
    from supervisor.factory import open_services
    from supervisor.policy import load_policy

    services = await open_services(node_settings)
    try:
        tenant = await services.tenants.create_tenant("t-" + secrets.token_hex(5))
        await services.ledger.set_cap(tenant.id, "tenant", tenant.id, 10_000)  # 0.010 USD
        policy = load_policy(POLICY, source="policy")
        await services.policies.put(tenant.id, POLICY, policy.version)
        chain, _ = build_chain(AuditRecorder(services.audit, Sealer(load_audit_key(node_settings))))
        go = asyncio.Event()
        events: list[tuple[str, dict[str, Any]]] = []

        async def emit(type_: str, data: dict[str, Any]) -> None:
            events.append((type_, data))

        async def one(i: int) -> str:
            b = Binding(tenant_id=tenant.id, run_id=f"run_{i % 5}", bundle="b", bundle_version="1")
            call = CallState(binding=b, tool_name="echo", raw_args={"i": i}, services=services, emit=emit)
            await go.wait()
            try:
                await chain(call)
                return "ok"
            except StockadeError as exc:
                return exc.code

        tasks = [asyncio.create_task(one(i)) for i in range(40)]
        go.set()
        outcomes = await asyncio.gather(*tasks)
        assert outcomes.count("ok") == 10, outcomes
        assert outcomes.count("budget.exceeded") == 30
        [acct] = await services.ledger.accounts(tenant.id, time.time())
        assert (acct.spent_micro, acct.reserved_micro) == (10_000, 0)
        assert len(await services.ledger.entries(tenant.id)) == 10
        assert [d["cost_usd"] for k, d in events if k == "usage"] == [0.001] * 10
        assert [d["tier"] for k, d in events if k == "budget.warning"] == ["tenant"]
        kinds = [r.kind for r in await services.audit.list(tenant.id, limit=1000)]
        assert kinds.count("budget.exceeded") == 30  # every refusal audited once
    finally:
        await services.close()
