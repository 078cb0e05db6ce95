"""The chain step: fetches and caches the tenant policy, layers the bundle, keeps history, fails closed."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from pydantic import ConfigDict

import supervisor.chain.policy as policy_step
from supervisor.chain.base import Binding, CallState
from supervisor.chain.policy import PolicyInterceptor
from supervisor.errors import StockadeError
from supervisor.policy import default_policy, load_bundle_policy, load_policy
from supervisor.tools.base import ToolArgs

pytestmark = pytest.mark.timeout(30)


class FakePolicyStore:
    """An in-memory PolicyStore (our port): (yaml_text, version) per tenant."""

    def __init__(self) -> None:
        self.docs: dict[str, tuple[str, str]] = {}
        self.fail: Exception | None = None
        self.gets = 0

    async def get(self, tenant_id: str) -> tuple[str, str] | None:
        self.gets += 1
        if self.fail is not None:
            raise self.fail
        return self.docs.get(tenant_id)

    async def put(self, tenant_id: str, yaml_text: str, version: str) -> None:
        self.docs[tenant_id] = (yaml_text, version)

    async def set(self, tenant_id: str, text: str) -> str:
        version = load_policy(text).version
        await self.put(tenant_id, text, version)
        return version


class LlmArgs(ToolArgs):
    model: str = "openai/gpt-4.1"
    messages: list[dict[str, Any]] = []
    max_tokens: int = 1024


class LlmTool:
    name: ClassVar[str] = "llm.chat"
    args_model: ClassVar[type[ToolArgs]] = LlmArgs

    def resource(self, args: Any, ctx: Any) -> str | None:
        return None


class AnyArgs(ToolArgs):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


class AnyTool:
    name: ClassVar[str] = "any"
    args_model: ClassVar[type[ToolArgs]] = AnyArgs

    def resource(self, args: Any, ctx: Any) -> str | None:
        return getattr(args, "path", None)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def store() -> FakePolicyStore:
    return FakePolicyStore()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def step(clock: Clock) -> PolicyInterceptor:
    return PolicyInterceptor(clock=clock, stored_ttl_s=0)  # read the store on every call (the TTL has its own test)


def make_call(store: FakePolicyStore, tool: str = "echo", args: dict[str, Any] | None = None, *,
              run: str = "r1", user: str | None = "u1", bundle_policy: Any = None, role: str = "member",
              resource: str | None = None) -> CallState:
    args = dict(args or {})
    t = LlmTool() if tool == "llm.chat" else AnyTool()
    call = CallState(
        binding=Binding(tenant_id="t1", run_id=run, bundle="b", bundle_version="v1", user_id=user, role=role,
                        bundle_policy=bundle_policy),
        tool_name=tool, raw_args=args,
    )
    call.services = SimpleNamespace(policies=store)
    call.tool = t
    call.args = t.args_model.model_validate(args)
    call.resource = resource
    return call


class Next:
    """The rest of the chain: records calls; can block on an event or fail."""

    def __init__(self) -> None:
        self.calls: list[CallState] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.fail = False

    async def __call__(self, call: CallState) -> dict[str, Any]:
        self.calls.append(call)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise StockadeError("tool.failed", "boom")
        return {"ok": True}


async def denied(step: PolicyInterceptor, call: CallState, nxt: Next) -> StockadeError:
    with pytest.raises(StockadeError) as exc:
        await step(call, nxt)
    return exc.value


async def test_no_stored_policy_means_the_default(step, store):
    nxt = Next()
    call = make_call(store, "echo", {"x": 1})
    assert await step(call, nxt) == {"ok": True}
    d = default_policy()
    assert (call.verdict, call.rule_id, call.policy_version) == ("allow", "default.echo", d.version)
    assert call.extra["policy_layer"] == "default"
    assert call.extra["prices"] == dict(d.prices)
    assert call.extra["llm_prices"]["openai/gpt-4.1-mini"] == {"input_per_mtok": 0.4, "output_per_mtok": 1.6}
    assert call.extra["rate_overrides"] == {}
    call = make_call(store, "http.request", {"url": "https://example.com"})
    err = await denied(step, call, nxt)
    assert (err.code, err.extra["rule_id"], call.outcome, call.verdict) == ("policy.denied", "policy.no_match", "tool.denied", "deny")
    assert err.detail == "no matching rule"
    assert len(nxt.calls) == 1


async def test_stored_policy_is_parsed_once_per_version(step, store, monkeypatch):
    parsed: list[str] = []
    real = policy_step.load_policy

    def counting(text: str, **kw: Any):
        parsed.append(text)
        return real(text, **kw)

    monkeypatch.setattr(policy_step, "load_policy", counting)
    text = "version: 1\nrules:\n  - {id: e, tool: echo, verdict: allow}\nlimits: {tenant_per_s: 3}\nprices: {echo: 0.5}\n"
    v1 = await store.set("t1", text)
    nxt = Next()
    for _ in range(5):
        call = make_call(store, "echo")
        await step(call, nxt)
        assert (call.rule_id, call.policy_version) == ("e", v1)
        assert call.extra["rate_overrides"] == {"tenant_per_s": 3.0}
        assert call.extra["prices"] == {"echo": 0.5}
    assert len(parsed) == 1 and store.gets == 5
    v2 = await store.set("t1", text.replace("0.5", "0.7"))
    call = make_call(store, "echo")
    await step(call, nxt)
    assert call.policy_version == v2 != v1 and len(parsed) == 2
    # a store that labels another document with a known version never gets the cached rules
    other = "version: 1\nrules: []\n"
    await store.put("t1", other, v1)
    call = make_call(store, "echo")
    err = await denied(step, call, nxt)
    assert err.code == "policy.denied" and call.policy_version == load_policy(other).version


@pytest.mark.parametrize("failure", [StockadeError("store.unavailable"), ConnectionError("db down"), RuntimeError("bug")])
async def test_store_failure_fails_closed(step, store, failure):
    store.fail = failure
    nxt = Next()
    call = make_call(store, "echo")
    err = await denied(step, call, nxt)
    assert err.code == "policy.unavailable" and call.outcome == "policy.unavailable"
    assert nxt.calls == []


async def test_invalid_stored_policy_fails_closed(step, store):
    await store.put("t1", "version: 1\nrules: [{id: a, tool: echo, verdict: yes}]\n", "whatever")
    nxt = Next()
    err = await denied(step, make_call(store, "echo"), nxt)
    assert err.code == "policy.unavailable"
    assert nxt.calls == []


async def test_bundle_layer_must_be_a_compiled_policy(step, store):
    nxt = Next()
    call = make_call(store, "echo", bundle_policy={"rules": []})
    assert (await denied(step, call, nxt)).code == "policy.unavailable"
    assert nxt.calls == []


@pytest.mark.parametrize("name", ["Echo", "ｅcho", "e\u200dcho", "echo\x00", "echo ", "", "x" * 200])
async def test_look_alike_tool_names_are_refused_before_evaluation(step, store, name):
    store.fail = AssertionError("the store must not even be asked")
    nxt = Next()
    call = make_call(store, "echo")
    call.tool_name = name
    err = await denied(step, call, nxt)
    assert err.code == "input.invalid"
    assert nxt.calls == [] and store.gets == 0


async def test_bundle_layer_narrows_through_the_binding(step, store):
    await store.set("t1", "version: 1\nrules:\n  - {id: e, tool: echo, verdict: allow}\n")
    narrowing = load_bundle_policy({"rules": [
        {"id": "b-big", "tool": "echo", "when": {"args.n": {"gt": 10}}, "verdict": "deny", "reason": "bundle says no"},
        {"id": "b-any", "tool": "*", "verdict": "allow"},
    ]}, source="bundle b")
    nxt = Next()
    call = make_call(store, "echo", {"n": 11}, bundle_policy=narrowing)
    err = await denied(step, call, nxt)
    assert (err.extra["rule_id"], err.extra["layer"], err.detail) == ("b-big", "bundle", "bundle says no")
    call = make_call(store, "echo", {"n": 1}, bundle_policy=narrowing)
    await step(call, nxt)
    assert (call.verdict, call.rule_id) == ("allow", "e")
    call = make_call(store, "kb.search", bundle_policy=narrowing)  # bundle allow, tenant no-match
    err = await denied(step, call, nxt)  # named in the audit record like any verdict (session 15; it was None)
    assert (err.extra["rule_id"], call.rule_id, err.detail) == ("policy.no_match", "policy.no_match", "no matching rule")


async def test_require_approval_continues_to_the_approval_step(step, store):
    await store.set("t1", "version: 1\nrules:\n  - {id: ask, tool: echo, verdict: require_approval, reason: big}\n")
    nxt = Next()
    call = make_call(store, "echo")
    await step(call, nxt)
    assert (call.verdict, call.rule_id, call.reason) == ("require_approval", "ask", "big")
    assert nxt.calls == [call]


async def test_delay_sleeps_then_continues(store, clock):
    slept: list[float] = []

    async def fake_sleep(s: float) -> None:
        slept.append(s)

    step = PolicyInterceptor(clock=clock, sleep=fake_sleep)
    await store.set("t1", "version: 1\nrules:\n  - {id: slow, tool: echo, verdict: delay, delay_s: 7.5}\n")
    nxt = Next()
    call = make_call(store, "echo")
    await step(call, nxt)
    assert slept == [7.5] and nxt.calls == [call] and call.verdict == "delay"
    # and with the real clock: the call is held for the delay
    real = PolicyInterceptor()
    await store.set("t1", "version: 1\nrules:\n  - {id: slow, tool: echo, verdict: delay, delay_s: 0.05}\n")
    t0 = time.monotonic()
    await real(make_call(store, "echo"), nxt)
    assert time.monotonic() - t0 >= 0.05


async def test_downgrade_replaces_arguments_through_the_schema(step, store):
    await store.set("t1", "version: 1\nrules:\n"
                          "  - {id: cheap, tool: llm.chat, verdict: downgrade,"
                          " downgrade: {args.model: openai/gpt-4.1-mini, args.max_tokens: 256}}\n")
    nxt = Next()
    call = make_call(store, "llm.chat", {"model": "openai/gpt-4.1", "messages": [{"role": "user", "content": "hi"}]})
    await step(call, nxt)
    assert call.verdict == "downgrade"
    assert (call.args.model, call.args.max_tokens) == ("openai/gpt-4.1-mini", 256)
    assert call.raw_args["model"] == "openai/gpt-4.1-mini" and call.raw_args["messages"][0]["content"] == "hi"
    assert call.extra["downgraded"] == {
        "rule_id": "cheap", "layer": "tenant",
        "args": {"model": {"from": "openai/gpt-4.1", "to": "openai/gpt-4.1-mini"},
                 "max_tokens": {"from": None, "to": 256}},
    }
    # a replacement the tool's schema refuses denies the call instead of running it with bad arguments
    await store.set("t1", "version: 1\nrules:\n  - {id: bad, tool: llm.chat, verdict: downgrade,"
                          " downgrade: {args.max_tokens: lots}}\n")
    nxt2 = Next()
    call = make_call(store, "llm.chat", {"model": "openai/gpt-4.1"})
    err = await denied(step, call, nxt2)
    assert err.code == "policy.denied" and err.extra["rule_id"] == "bad" and nxt2.calls == []
    # and one that moves the call to a resource the policy does not allow is refused too (the downgraded
    # call is judged afresh, at its new resource)
    await store.set("t1", "version: 1\nrules:\n  - {id: move, tool: storage.read, resource: '/ws/**', verdict: downgrade,"
                          " downgrade: {args.path: /elsewhere}}\n")
    call = make_call(store, "storage.read", {"path": "/ws/a"}, resource="/ws/a")
    err = await denied(step, call, nxt2)
    assert "resource" in err.detail and nxt2.calls == []


VELOCITY = "version: 1\nrules:\n  - {id: fast, tool: echo, velocity: {max: 2, per_s: 10}, verdict: deny}\n" \
           "  - {id: e, tool: '*', verdict: allow}\n"


async def test_velocity_through_the_interceptor(step, store, clock):
    await store.set("t1", VELOCITY)
    nxt = Next()
    for _ in range(2):
        await step(make_call(store, "echo"), nxt)
    err = await denied(step, make_call(store, "echo"), nxt)
    assert err.extra["rule_id"] == "fast"
    await step(make_call(store, "kb.search"), nxt)  # other tools are not counted
    await step(make_call(store, "echo", run="r2"), nxt)  # nor other runs
    clock.t += 10.5  # the window moved on
    await step(make_call(store, "echo"), nxt)
    # denied calls are not recorded: they do not extend the lock-out
    assert len(nxt.calls) == 5


async def test_velocity_cannot_be_beaten_by_parallel_calls(step, store):
    await store.set("t1", VELOCITY)
    nxt = Next()
    nxt.gate = asyncio.Event()  # every admitted call stays in flight
    tasks = [asyncio.create_task(step(make_call(store, "echo"), nxt)) for _ in range(6)]
    # wait until all refusals are in, with the admitted ones parked on the gate
    while sum(1 for t in tasks if t.done()) < 4:
        await asyncio.wait(tasks, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    assert len(nxt.calls) == 2
    nxt.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(r, StockadeError) and r.code == "policy.denied" for r in results) == 4


async def test_order_after_needs_a_completed_call(step, store):
    await store.set("t1", "version: 1\nrules:\n"
                          "  - {id: review-first, tool: pay, order: {after: review}, verdict: deny}\n"
                          "  - {id: e, tool: '*', verdict: allow}\n")
    assert (await denied(step, make_call(store, "pay"), Next())).extra["rule_id"] == "review-first"
    failing = Next()
    failing.fail = True
    with pytest.raises(StockadeError):
        await step(make_call(store, "review"), failing)  # passed policy, then failed
    assert (await denied(step, make_call(store, "pay"), Next())).extra["rule_id"] == "review-first"
    blocked = Next()
    blocked.gate = asyncio.Event()
    in_flight = asyncio.create_task(step(make_call(store, "review"), blocked))
    await blocked.entered.wait()
    assert (await denied(step, make_call(store, "pay"), Next())).extra["rule_id"] == "review-first"
    blocked.gate.set()
    await in_flight
    call = make_call(store, "pay")
    await step(call, Next())
    assert call.rule_id == "e"
    assert (await denied(step, make_call(store, "pay", run="r2"), Next())).extra["rule_id"] == "review-first"


async def test_order_not_after_counts_attempts(step, store):
    await store.set("t1", "version: 1\nrules:\n"
                          "  - {id: no-exfil, tool: http.request, order: {not_after: 'secrets.*'}, verdict: deny}\n"
                          "  - {id: e, tool: '*', verdict: allow}\n")
    await step(make_call(store, "http.request"), Next())
    failing = Next()
    failing.fail = True
    with pytest.raises(StockadeError):
        await step(make_call(store, "secrets.read"), failing)
    assert (await denied(step, make_call(store, "http.request"), Next())).extra["rule_id"] == "no-exfil"
    step.forget_run("t1", "r1")
    await step(make_call(store, "http.request"), Next())


async def test_user_velocity_spans_runs(step, store):
    await store.set("t1", "version: 1\nrules:\n"
                          "  - {id: per-user, tool: echo, velocity: {max: 2, per_s: 60, scope: user}, verdict: deny}\n"
                          "  - {id: e, tool: '*', verdict: allow}\n")
    await step(make_call(store, "echo", run="a"), Next())
    await step(make_call(store, "echo", run="b"), Next())
    assert (await denied(step, make_call(store, "echo", run="c"), Next())).extra["rule_id"] == "per-user"
    await step(make_call(store, "echo", run="c", user="u2"), Next())


async def test_history_memory_is_bounded(store, clock):
    step = PolicyInterceptor(clock=clock, max_runs=3)
    await store.set("t1", VELOCITY)
    for i in range(10):
        await step(make_call(store, "echo", run=f"r{i}"), Next())
    assert len(step._runs) == 3
    run = step._runs[("t1", "r9")]
    for _ in range(2000):
        run.of("echo").append(("echo", 0.0))
    assert len(run.of("echo")) == policy_step.MAX_VELOCITY


async def test_large_arguments_with_regex_rules_are_evaluated_off_the_loop(step, store, monkeypatch):
    await store.set("t1", "version: 1\nrules:\n"
                          "  - {id: secret, tool: echo, content: '(?i)password', verdict: deny}\n"
                          "  - {id: e, tool: echo, verdict: allow}\n")
    threads: list[Any] = []
    real = asyncio.to_thread

    async def spy(fn: Any, *a: Any) -> Any:
        threads.append(fn)
        return await real(fn, *a)

    monkeypatch.setattr(policy_step.asyncio, "to_thread", spy)
    await step(make_call(store, "echo", {"t": "small"}), Next())
    assert threads == []
    big = "x" * 200_000 + " PassWord"
    err = await denied(step, make_call(store, "echo", {"t": big}), Next())
    assert err.extra["rule_id"] == "secret" and len(threads) == 1
    call = make_call(store, "echo", {"t": "x" * 200_000})
    await step(call, Next())
    assert call.rule_id == "e" and len(threads) == 2


async def test_stored_policy_is_cached_briefly_and_forgotten_on_change(store):
    cached = PolicyInterceptor(stored_ttl_s=60)
    text = "version: 1\nrules:\n  - {id: e, tool: echo, verdict: allow}\n"
    await store.set("t1", text)
    nxt = Next()
    for _ in range(3):
        await cached(make_call(store, "echo"), nxt)
    assert store.gets == 1
    await store.set("t1", "version: 1\nrules:\n  - {id: d, tool: echo, verdict: deny}\n")
    cached.forget_tenant("t1")
    call = make_call(store, "echo")
    with pytest.raises(StockadeError) as exc:
        await cached(call, nxt)
    assert exc.value.code == "policy.denied" and call.rule_id == "d" and store.gets == 2
