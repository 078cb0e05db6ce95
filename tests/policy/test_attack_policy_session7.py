"""Session 7 attacks on the policy engine and the chain's policy step: downgrades, redirect hops,
history eviction across tenants, evaluation and load cost."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from supervisor.audit.canonical import args_hash
from supervisor.chain.base import Binding, CallState
from supervisor.chain.policy import NO_MATCH_RULE, PolicyInterceptor
from supervisor.errors import StockadeError
from supervisor.policy import PolicyRequest, evaluate, evaluate_layers, load_bundle_policy, load_policy
from supervisor.settings import Settings
from supervisor.tools.llm.tool import LlmChatTool
from tests._loop import watch_loop
from tests.policy import test_interceptor as _interceptor_tests
from tests.policy.test_interceptor import FakePolicyStore, Next, denied, make_call

pytestmark = pytest.mark.timeout(60)

HI = [{"role": "user", "content": "hi"}]


store, clock, step = _interceptor_tests.store, _interceptor_tests.clock, _interceptor_tests.step  # its fixtures


@pytest.fixture(scope="module")
def llm_tool() -> LlmChatTool:
    return LlmChatTool(Settings())  # the real tool: its resource is the model


def llm_call(store: FakePolicyStore, tool: LlmChatTool, model: str, *, bundle_policy: Any = None,
             tenant: str = "t1") -> CallState:
    raw = {"model": model, "messages": HI}
    call = CallState(binding=Binding(tenant_id=tenant, run_id="r1", bundle="b", bundle_version="v1", user_id="u1",
                                     bundle_policy=bundle_policy), tool_name="llm.chat", raw_args=raw)
    call.services = SimpleNamespace(policies=store)
    call.tool = tool
    call.args = tool.args_model.model_validate(raw)
    call.resource = tool.resource(call.args, None)
    return call


# --- downgrade -------------------------------------------------------------------------------------

async def test_the_model_downgrade_works_with_the_real_llm_tool(step, store, llm_tool):
    # attack: none - the issue's own example. llm.chat's resource IS its model, so the "a downgrade must not
    # change the resource" check denied every model downgrade of the real tool.
    await store.set("t1", "version: 1\nrules:\n  - {id: cheap, tool: llm.chat, when: {args.model: {eq: openai/gpt-4.1}},"
                          " verdict: downgrade, downgrade: {args.model: openai/gpt-4.1-mini}}\n"
                          "  - {id: llm, tool: llm.chat, verdict: allow}\n")
    nxt = Next()
    call = llm_call(store, llm_tool, "openai/gpt-4.1")
    await step(call, nxt)
    assert nxt.calls == [call] and call.verdict == "downgrade" and call.rule_id == "cheap"
    assert call.args.model == "openai/gpt-4.1-mini" and call.resource == "openai/gpt-4.1-mini"


TENANT_NO_GPT5 = ("version: 1\nrules:\n"
                  "  - {id: no-gpt5, tool: llm.chat, resource: openai/gpt-5, verdict: deny, reason: too dear}\n"
                  "  - {id: ask-o3, tool: llm.chat, when: {args.model: {eq: openai/o3}}, verdict: require_approval}\n"
                  "  - {id: llm, tool: llm.chat, when: {args.model: {in: [openai/gpt-4.1-mini, openai/gpt-5,"
                  " openai/o3]}}, verdict: allow}\n")


def bundle_downgrade(model: str, rule: str = "b-up") -> Any:
    return load_bundle_policy({"rules": [{"id": rule, "tool": "llm.chat", "verdict": "downgrade",
                                          "downgrade": {"args.model": model}}]}, source="bundle")


@pytest.mark.parametrize("model", [
    "openai/gpt-5",  # attack: the bundle "downgrades" to a model the tenant denies by resource
    "anthropic/claude-opus-4",  # attack: ... to a model the tenant never allowed (tenant no-match)
])
async def test_a_bundle_downgrade_cannot_turn_a_call_into_one_the_tenant_denies(step, store, llm_tool, model):
    await store.set("t1", TENANT_NO_GPT5)
    nxt = Next()
    call = llm_call(store, llm_tool, "openai/gpt-4.1-mini", bundle_policy=bundle_downgrade(model))
    err = await denied(step, call, nxt)
    assert err.code == "policy.denied" and nxt.calls == []
    assert call.verdict == "deny" and call.outcome == "tool.denied"


async def test_a_bundle_downgrade_cannot_set_an_argument_the_tenant_denies(step, store):
    # attack: the tenant denies echo with n > 5; the bundle "downgrades" n from 1 to 1000 (resource unchanged)
    await store.set("t1", "version: 1\nrules:\n  - {id: too-big, tool: echo, when: {args.n: {gt: 5}}, verdict: deny}\n"
                          "  - {id: e, tool: echo, verdict: allow}\n")
    bundle = load_bundle_policy({"rules": [{"id": "b-up", "tool": "echo", "verdict": "downgrade",
                                            "downgrade": {"args.n": 1000}}]}, source="bundle")
    nxt = Next()
    call = make_call(store, "echo", {"n": 1}, bundle_policy=bundle)
    err = await denied(step, call, nxt)
    assert err.extra["rule_id"] == "too-big" and nxt.calls == [] and call.rule_id == "too-big"


async def test_a_downgraded_call_that_needs_approval_still_needs_it(step, store, llm_tool):
    # attack: a bundle downgrade into a model the tenant lets through only with a human's approval
    await store.set("t1", TENANT_NO_GPT5)
    nxt = Next()
    call = llm_call(store, llm_tool, "openai/gpt-4.1-mini", bundle_policy=bundle_downgrade("openai/o3"))
    await step(call, nxt)
    assert nxt.calls == [call] and call.args.model == "openai/o3"
    assert (call.verdict, call.rule_id) == ("require_approval", "ask-o3")


async def test_an_approval_of_a_downgraded_call_binds_to_the_arguments_that_run(step, store, llm_tool):
    # attack: the approver was shown the downgraded arguments but the request carried the hash of the original
    # ones, so "args_hash binds the approval to what the approver saw" did not hold
    await store.set("t1", "version: 1\nrules:\n  - {id: cheap, tool: llm.chat, verdict: downgrade,"
                          " downgrade: {args.model: openai/gpt-4.1-mini}}\n")
    bundle = load_bundle_policy({"rules": [{"id": "b-ask", "tool": "llm.chat", "verdict": "require_approval"}]},
                                source="bundle")
    call = llm_call(store, llm_tool, "openai/gpt-4.1", bundle_policy=bundle)
    call.args_hash = args_hash("llm.chat", call.raw_args)
    await step(call, Next())
    assert (call.verdict, call.rule_id) == ("require_approval", "b-ask")
    assert call.raw_args["model"] == "openai/gpt-4.1-mini"
    assert call.args_hash == args_hash("llm.chat", call.raw_args)


async def test_the_token_rate_limit_charges_the_downgraded_call(step, store, llm_tool):
    # attack: a bundle downgrade raises max_tokens from 1 to 32000 after the token-throughput estimate was
    # taken (validate step), so the per-user tokens/min limit was charged for a 1-token answer
    await store.set("t1", "version: 1\nrules:\n  - {id: llm, tool: llm.chat, verdict: allow}\n")
    bundle = load_bundle_policy({"rules": [{"id": "b-more", "tool": "llm.chat", "verdict": "downgrade",
                                            "downgrade": {"args.max_tokens": 32000}}]}, source="bundle")
    call = llm_call(store, llm_tool, "openai/gpt-4.1-mini", bundle_policy=bundle)
    call.raw_args["max_tokens"] = 1
    call.args = llm_tool.args_model.model_validate(call.raw_args)
    call.extra["llm_tokens"] = llm_tool.estimate_tokens(call.args)
    await step(call, Next())
    assert call.args.max_tokens == 32000
    assert call.extra["llm_tokens"] == llm_tool.estimate_tokens(call.args) >= 32000


@pytest.mark.parametrize("replacement", [
    "{args.no_such_arg: 1}",  # an argument the real tool does not have
    "{args.max_tokens: lots}",  # wrong type
    "{args.max_tokens: 0}",  # out of the tool's range
    "{args.model: not-a-provider}",  # a model the tool cannot route
    "{args.messages: []}",  # drops what the tool needs
])
async def test_bad_downgrades_of_the_real_llm_tool_deny_naming_the_rule(step, store, llm_tool, replacement):
    # held: the replacement goes through the tool's schema; a bad one denies the call, never crashes it
    await store.set("t1", f"version: 1\nrules:\n  - {{id: dg, tool: llm.chat, verdict: downgrade, downgrade: {replacement}}}\n")
    nxt = Next()
    call = llm_call(store, llm_tool, "openai/gpt-4.1-mini")
    err = await denied(step, call, nxt)
    assert (err.code, err.extra["rule_id"], nxt.calls) == ("policy.denied", "dg", [])


async def test_downgrades_that_do_not_settle_are_refused(step, store):
    # attack: two tenant downgrade rules that flip an argument back and forth (a -> b -> a)
    await store.set("t1", "version: 1\nrules:\n"
                          "  - {id: ab, tool: echo, when: {args.m: {eq: a}}, verdict: downgrade, downgrade: {args.m: b}}\n"
                          "  - {id: ba, tool: echo, when: {args.m: {eq: b}}, verdict: downgrade, downgrade: {args.m: a}}\n")
    nxt = Next()
    err = await denied(step, make_call(store, "echo", {"m": "a"}), nxt)
    assert err.code == "policy.denied" and nxt.calls == []


async def test_a_tenant_downgrade_applied_to_every_call_settles(step, store):
    # guard: an unconditional downgrade matches the downgraded call again with the same values: allowed
    await store.set("t1", "version: 1\nrules:\n  - {id: dg, tool: echo, verdict: downgrade, downgrade: {args.m: small}}\n")
    nxt = Next()
    call = make_call(store, "echo", {"m": "big"})
    await step(call, nxt)
    assert nxt.calls == [call] and call.raw_args == {"m": "small"} and call.rule_id == "dg"


async def test_a_downgrade_moving_the_resource_is_judged_at_the_new_resource(step, store):
    # attack: a bundle downgrade rewrites the path onto a resource the tenant denies
    await store.set("t1", "version: 1\nrules:\n  - {id: no-secret, tool: storage.read, resource: '/secret/**', verdict: deny}\n"
                          "  - {id: ws, tool: storage.read, resource: '/ws/**', verdict: allow}\n")
    bundle = load_bundle_policy({"rules": [{"id": "b-mv", "tool": "storage.read", "verdict": "downgrade",
                                            "downgrade": {"args.path": "/secret/key"}}]}, source="bundle")
    nxt = Next()
    call = make_call(store, "storage.read", {"path": "/ws/a"}, resource="/ws/a", bundle_policy=bundle)
    err = await denied(step, call, nxt)
    assert err.extra["rule_id"] == "no-secret" and "resource" in err.detail and nxt.calls == []


# --- redirect hops ---------------------------------------------------------------------------------

REDIRECT = ("version: 1\nrules:\n"
            "  - {id: no-exfil, tool: http.request, resource: 'https://internal.example/**',"
            " order: {not_after: secrets.read}, verdict: deny}\n"
            "  - {id: once, tool: http.request, resource: 'https://metered.example/**', velocity: {max: 1, per_s: 60},"
            " verdict: deny}\n"
            "  - {id: any, tool: '*', verdict: allow}\n")


async def test_a_redirect_hop_sees_the_runs_history(step, store):
    # attack: "never http to internal after secrets.read" dodged by asking a public URL that redirects inside
    await store.set("t1", REDIRECT)
    await step(make_call(store, "secrets.read"), Next())
    call = make_call(store, "http.request", resource="https://public.example/")
    await step(call, Next())
    with pytest.raises(StockadeError) as exc:
        await step.recheck_resource(call, "https://internal.example/x")
    assert exc.value.code == "policy.denied" and exc.value.extra["rule_id"] == "no-exfil"
    # what the call's record says (was: the first hop's allow - verdict allow, rule any, the public URL)
    assert (call.verdict, call.rule_id, call.resource) == ("deny", "no-exfil", "https://internal.example/x")
    assert call.outcome == "tool.denied"
    call = make_call(store, "http.request", resource="https://public.example/")
    await step(call, Next())
    await step.recheck_resource(call, "https://public.example/y")  # other hops still pass


async def test_a_redirect_hop_no_rule_matches_names_no_match(step, store):
    await store.set("t1", "version: 1\nrules:\n  - {id: public, tool: http.request, resource: 'https://public.example/**',"
                          " verdict: allow}\n")
    call = make_call(store, "http.request", resource="https://public.example/")
    await step(call, Next())
    with pytest.raises(StockadeError) as exc:
        await step.recheck_resource(call, "https://elsewhere.example/x")
    assert exc.value.extra["rule_id"] == NO_MATCH_RULE  # was: None
    assert (call.verdict, call.rule_id) == ("deny", NO_MATCH_RULE)


async def test_a_redirect_hop_does_not_count_its_own_call(step, store):
    # guard: a velocity rule must not count the call whose hop is checked; attack: a second call
    # reaching the metered host by a redirect is still the second call there
    await store.set("t1", REDIRECT)
    first = make_call(store, "http.request", resource="https://metered.example/a")
    await step(first, Next())
    await step.recheck_resource(first, "https://metered.example/b")
    second = make_call(store, "http.request", resource="https://public.example/")
    await step(second, Next())
    with pytest.raises(StockadeError) as exc:
        await step.recheck_resource(second, "https://metered.example/c")
    assert exc.value.extra["rule_id"] == "once"


async def test_a_redirect_hop_waits_out_a_delay_rule(store, clock):
    # attack: "hold requests to slow.example 5 s" dodged by a URL that redirects there
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    step = PolicyInterceptor(clock=clock, sleep=sleep, stored_ttl_s=0)
    await store.set("t1", "version: 1\nrules:\n  - {id: hold, tool: http.request, resource: 'https://slow.example/**',"
                          " verdict: delay, delay_s: 5}\n  - {id: any, tool: '*', verdict: allow}\n")
    call = make_call(store, "http.request", resource="https://public.example/")
    await step(call, Next())
    assert slept == []
    await step.recheck_resource(call, "https://slow.example/x")
    assert slept == [5.0]


# --- history memory --------------------------------------------------------------------------------

def tenant_call(store: FakePolicyStore, tenant: str, user: str, run: str) -> CallState:
    call = make_call(store, "echo", run=run, user=user)
    call.binding = Binding(tenant_id=tenant, run_id=run, bundle="b", bundle_version="v1", user_id=user)
    return call


async def test_another_tenant_cannot_evict_a_users_velocity_history(store, clock):
    # attack: tenant B calls as many users (or keys) to push tenant A's user out of the bounded history
    step = PolicyInterceptor(clock=clock, stored_ttl_s=0, max_users=4)
    per_user = ("version: 1\nrules:\n  - {id: per-user, tool: echo, velocity: {max: 2, per_s: 600, scope: user},"
                " verdict: deny}\n  - {id: e, tool: '*', verdict: allow}\n")
    await store.set("A", per_user)
    await store.set("B", per_user)
    for i in range(2):
        await step(tenant_call(store, "A", "alice", f"ra{i}"), Next())
    for i in range(50):
        await step(tenant_call(store, "B", f"bot{i}", f"rb{i}"), Next())
    err = await denied(step, tenant_call(store, "A", "alice", "ra9"), Next())
    assert err.extra["rule_id"] == "per-user"


async def test_user_velocity_holds_for_parallel_calls_of_two_runs(step, store):
    # attack: one user, two runs, calls fired at once with large arguments: with a regex rule in the policy
    # their evaluation runs on a thread, and the run lock (one per run) did not keep the second run from
    # judging against a user history that did not hold the first call yet - both passed "at most 1"
    await store.set("t1", "version: 1\nrules:\n  - {id: secret, tool: echo, content: 'password', verdict: deny}\n"
                          "  - {id: per-user, tool: echo, velocity: {max: 1, per_s: 600, scope: user}, verdict: deny}\n"
                          "  - {id: e, tool: echo, verdict: allow}\n")
    big = {"t": "x" * 100_000}
    nxt = Next()
    results = await asyncio.gather(*(step(make_call(store, "echo", big, run=f"r{i}"), nxt) for i in range(4)),
                                   return_exceptions=True)
    assert len(nxt.calls) == 1, results
    assert sum(isinstance(r, StockadeError) and r.extra.get("rule_id") == "per-user" for r in results) == 3


async def test_a_put_is_applied_at_once_even_with_a_read_in_flight(store):
    # attack: a call's store read starts before a PUT and returns the old document after the PUT's
    # forget_tenant; it was cached as fresh, so calls right after the PUT ("applied at once") used the old rules
    step = PolicyInterceptor(stored_ttl_s=60)
    await store.set("t1", "version: 1\nrules:\n  - {id: open, tool: echo, verdict: allow}\n")
    gate, reading = asyncio.Event(), asyncio.Event()
    real_get = store.get

    async def slow_get(tenant_id: str) -> Any:
        got = await real_get(tenant_id)
        reading.set()
        await gate.wait()
        return got

    store.get = slow_get  # type: ignore[method-assign]
    first = asyncio.create_task(step(make_call(store, "echo"), Next()))
    await reading.wait()
    store.get = real_get  # type: ignore[method-assign]
    await store.set("t1", "version: 1\nrules:\n  - {id: shut, tool: echo, verdict: deny}\n")
    step.forget_tenant("t1")  # what PUT /v1/policy does after storing
    gate.set()
    await first  # it started before the PUT: the old rules may decide it
    err = await denied(step, make_call(store, "echo"), Next())
    assert err.extra["rule_id"] == "shut"


# --- cost bounds -----------------------------------------------------------------------------------

def _glob_heavy_policy() -> Any:
    # ~500 KiB of resource globs whose literal head ("/") every path shares: the index cannot skip them
    lines, size, i = [], 0, 0
    while size < 500_000:
        globs = ",".join(f"'/*x{j}*y{i}'" for j in range(256))
        line = f"  - {{id: r{i}, tool: storage.read, resource: [{globs}], verdict: allow}}\n"
        lines.append(line)
        size += len(line)
        i += 1
    return load_policy("version: 1\nrules:\n" + "".join(lines))


def test_resource_glob_matching_is_charged_to_the_evaluation_budget():
    # attack: tens of thousands of resource globs against a long resource: the evaluation ran ~0.7 s on the
    # event loop for an 8 KiB URL (~6 s at 100 KiB), unbounded by the budget. Now it is bounded and denies.
    p = _glob_heavy_policy()
    r = PolicyRequest(tool="storage.read", args={}, resource="/" + "x" * 100_000, role="member", user=None,
                      project=None, history=())
    t0 = time.perf_counter()
    v = evaluate(p, r)
    elapsed = time.perf_counter() - t0
    assert v.verdict == "deny" and v.rule_id is not None and "budget" in (v.reason or "")
    assert elapsed < 1.0, elapsed
    # ordinary resources still reach their rules
    v = evaluate(p, PolicyRequest(tool="storage.read", args={}, resource="/ax3by0", role="member", user=None,
                                  project=None, history=()))
    assert (v.verdict, v.rule_id) == ("allow", "r0")


async def test_loading_a_huge_policy_does_not_stall_the_event_loop(step, store):
    # attack: a tenant PUTs fresh 512 KiB policies; each one was parsed (~1.5 s) on the worker's event loop,
    # freezing every other tenant's runs on that worker. Now it is parsed on a thread.
    text = "version: 1\nrules:\n" + "".join(
        f"  - {{id: r{i}, tool: [{','.join(f'a{i}*b{j}*c' for j in range(200))}], verdict: allow}}\n" for i in range(120))
    await store.put("t1", text, "v-huge")
    async with watch_loop() as stall:
        with pytest.raises(StockadeError):  # no rule for echo: denied - after the load
            await step(make_call(store, "echo"), Next())
    # a parse on the loop stalls it for nearly all of the call (0.9 of it and more); on a thread the longest
    # stall is a fraction (about 0.2 here; 0.35 seen once in CI, under some hiccup)
    assert stall.longest < stall.took / 2, stall


async def test_concurrent_calls_parse_a_new_large_policy_once(step, store, monkeypatch):
    # guard (of the parse-on-a-thread fix): 32 calls right after a PUT of a large policy wait for one parse, not 32
    import supervisor.chain.policy as policy_step
    parsed: list[int] = []
    real = policy_step.load_policy

    def counting(text: str, **kw: Any) -> Any:
        parsed.append(len(text))
        return real(text, **kw)

    monkeypatch.setattr(policy_step, "load_policy", counting)
    text = "version: 1\nrules:\n" + "".join(f"  - {{id: r{i}, tool: 'x{i}*', verdict: deny}}\n" for i in range(800)) + \
        "  - {id: e, tool: echo, verdict: allow}\n"
    await store.set("t1", text)
    nxt = Next()
    await asyncio.gather(*(step(make_call(store, "echo", run=f"r{i}"), nxt) for i in range(32)))
    assert len(nxt.calls) == 32 and len(parsed) == 1


# --- held ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rule, why", [
    ("{id: d, tool: echo, verdict: delay, delay_s: 61}", "delay above 60 s"),
    ("{id: d, tool: echo, verdict: delay, delay_s: 0}", "zero delay"),
    ("{id: d, tool: echo, verdict: delay, delay_s: -1}", "negative delay"),
    ("{id: d, tool: echo, verdict: delay, delay_s: .nan}", "NaN delay"),
    ("{id: d, tool: echo, verdict: delay, delay_s: .inf}", "infinite delay"),
    ("{id: d, tool: echo, verdict: delay, delay_s: '5'}", "string delay"),
    ("{id: d, tool: echo, verdict: delay, delay_s: true}", "boolean delay"),
    ("{id: d, tool: echo, verdict: allow, delay_s: 5}", "delay_s on a non-delay verdict"),
    ("{id: d, tool: echo, verdict: downgrade, downgrade: {args.model: {x: !!python/name:os.system }}}", "tagged value"),
    ("{id: d, tool: echo, verdict: downgrade, downgrade: {args.a.b: 1}}", "nested downgrade path"),
    ("{id: d, tool: echo, verdict: downgrade, downgrade: {args.n: .nan}}", "NaN replacement"),
    ("{id: d, tool: echo, verdict: downgrade, downgrade: {}}", "empty downgrade"),
    ("{id: d, tool: echo, velocity: {max: 0, per_s: 1}, verdict: deny}", "velocity max 0"),
    ("{id: d, tool: echo, velocity: {max: 2, per_s: 0}, verdict: deny}", "zero window"),
    ("{id: d, tool: echo, velocity: {max: 2, per_s: 1, scope: tenant}, verdict: deny}", "unknown scope"),
    ("{id: d, tool: echo, velocity: {max: 1001, per_s: 1}, verdict: deny}", "velocity above the kept history"),
    ("{id: d, tool: echo, order: {after: a, not_after: b}, verdict: deny}", "two order keys"),
    ("{id: d, tool: echo, order: {after: Echo}, verdict: deny}", "upper-case order glob"),
    ("{id: d, tool: ｅcho, verdict: allow}", "full-width tool glob"),
    ("{id: d, tool: \"e\\u200dcho\", verdict: allow}", "zero-width joiner in a tool glob"),
])
def test_bad_verdict_payloads_are_refused(rule, why):
    with pytest.raises(StockadeError) as exc:
        load_policy(f"version: 1\nrules:\n  - {rule}\n")
    assert exc.value.code == "policy.invalid", why


async def test_a_delay_is_cancelled_promptly_and_runs_nothing(store):
    # held: cancelling the run (timeout, cancel) during a 60 s delay ends the call at once, the tool never runs
    await store.set("t1", "version: 1\nrules:\n  - {id: slow, tool: echo, verdict: delay, delay_s: 60}\n")
    sleeping = asyncio.Event()

    async def sleep(s: float) -> None:
        sleeping.set()
        await asyncio.sleep(s)

    step = PolicyInterceptor(stored_ttl_s=0, sleep=sleep)
    nxt = Next()
    task = asyncio.create_task(step(make_call(store, "echo"), nxt))
    await sleeping.wait()
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - t0 < 0.5 and nxt.calls == []


def test_a_bundle_cannot_widen_by_rule_order_or_softer_verdicts():
    # held: a bundle's early allow / approval / delay / downgrade never lifts a later tenant deny
    tenant = load_policy("version: 1\nrules:\n  - {id: too-big, tool: echo, when: {args.n: {gt: 5}}, verdict: deny}\n"
                         "  - {id: ok, tool: echo, verdict: allow}\n")
    for verdict, extra in [("allow", {}), ("require_approval", {}), ("delay", {"delay_s": 1}),
                           ("downgrade", {"downgrade": {"args.n": 1}})]:
        bundle = load_bundle_policy({"rules": [{"id": "b", "tool": "*", "verdict": verdict, **extra}]}, source="b")
        r = PolicyRequest(tool="echo", args={"n": 9}, resource=None, role="member", user=None, project=None, history=())
        assert evaluate_layers(tenant, bundle, r).rule_id == "too-big", verdict


def test_the_version_is_a_hash_of_the_canonical_form():
    # held: the version is a content hash of the canonical form; layout does not change it, content does
    a = load_policy("version: 1\nrules:\n  - {id: e, tool: echo, verdict: allow}\n")
    b = load_policy("# comment\nversion: 1\nrules:\n- id: e\n  verdict: allow\n  tool: echo\n")
    c = load_policy("version: 1\nrules:\n  - {id: e, tool: echo, verdict: deny}\n")
    assert a.version == b.version != c.version


async def test_interceptor_refuses_a_tool_glob_look_alike(step, store):
    # held: a full-width name never reaches the rules (refused as input.invalid before the store is read)
    await store.set("t1", "version: 1\nrules:\n  - {id: e, tool: 'echo*', verdict: allow}\n")
    call = make_call(store, "echo")
    call.tool_name = "echo\u0301"
    assert (await denied(step, call, Next())).code == "input.invalid"

