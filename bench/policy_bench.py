"""Policy decision rate: 100 rules, the match is the last one. Bounded: about 6 s in all.

    .venv/bin/python bench/policy_bench.py

Scenarios:
  same-tool   99 rules name the called tool and each fails on a condition,
              principal or resource check; rule 100 allows (worst case for
              the per-tool rule index).
  mixed       99 rules for other tools, rule 100 allows (the index skips them).
  content     same-tool plus one content rule (RE2) scanning ~2 KB of arguments.
  chain step  same-tool through PolicyInterceptor (store lookup, cache hit,
              history bookkeeping), with an in-memory store.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supervisor.chain.base import Binding, CallState  # noqa: E402
from supervisor.chain.policy import PolicyInterceptor  # noqa: E402
from supervisor.policy import PolicyRequest, evaluate, load_policy  # noqa: E402

SECONDS = 1.2  # per scenario


def same_tool_rules() -> list[str]:
    rules = []
    for i in range(99):
        k = i % 4
        if k == 0:
            rules.append(f"  - {{id: r{i}, tool: llm.chat, when: {{args.max_tokens: {{gt: {100_000 + i}}}}}, verdict: deny}}")
        elif k == 1:
            rules.append(f"  - {{id: r{i}, tool: llm.chat, role: admin{i}, verdict: allow}}")
        elif k == 2:
            rules.append(f"  - {{id: r{i}, tool: 'llm.*', when: {{args.model: {{in: [m{i}, n{i}]}}}}, verdict: deny}}")
        else:
            rules.append(f"  - {{id: r{i}, tool: llm.chat, user: [u{i}], project: p{i}, verdict: require_approval}}")
    return rules


def policy_text(rules: list[str]) -> str:
    return "version: 1\nrules:\n" + "\n".join(rules) + "\n  - {id: last, tool: '*', verdict: allow}\n"


def request(args: dict[str, Any]) -> PolicyRequest:
    return PolicyRequest(tool="llm.chat", args=args, resource=None, role="member", user="u1", project="p1",
                         history=(), now=time.monotonic())


def run_sync(name: str, policy: Any, req: PolicyRequest) -> None:
    assert evaluate(policy, req).rule_id == "last"
    lat: list[int] = []
    end = time.perf_counter() + SECONDS
    pc = time.perf_counter_ns
    while time.perf_counter() < end:
        for _ in range(200):
            t0 = pc()
            evaluate(policy, req)
            lat.append(pc() - t0)
    report(name, lat)


def report(name: str, lat: list[int]) -> None:
    lat.sort()
    mean = statistics.fmean(lat)
    p50 = lat[len(lat) // 2] / 1000
    p99 = lat[int(len(lat) * 0.99)] / 1000
    print(f"{name:<12} {1e9 / mean:>10,.0f} decisions/s   p50 {p50:7.1f} µs   p99 {p99:7.1f} µs   (n={len(lat):,})")


async def run_chain(policy_yaml: str) -> None:
    class Store:
        async def get(self, tenant_id: str) -> tuple[str, str]:
            return policy_yaml, version

    version = load_policy(policy_yaml).version
    step = PolicyInterceptor()
    services = SimpleNamespace(policies=Store())
    binding = Binding(tenant_id="t", run_id="r", bundle="b", bundle_version="1", user_id="u1", project_id="p1")

    async def nxt(call: CallState) -> dict[str, Any]:
        return {}

    lat: list[int] = []
    end = time.perf_counter() + SECONDS
    pc = time.perf_counter_ns
    i = 0
    while time.perf_counter() < end:
        for _ in range(200):
            i += 1
            call = CallState(binding=binding, tool_name="llm.chat", raw_args={"model": "x", "max_tokens": 5})
            call.services = services
            t0 = pc()
            await step(call, nxt)
            lat.append(pc() - t0)
        step.forget_run("t", "r")  # keep the history short: velocity is not what is measured here
    assert call.rule_id == "last"
    report("chain step", lat)


def main() -> None:
    args = {"model": "openai/gpt-4.1", "max_tokens": 512, "messages": [{"role": "user", "content": "hello " * 300}]}
    same = load_policy(policy_text(same_tool_rules()))
    mixed = load_policy(policy_text([f"  - {{id: r{i}, tool: tool{i}.x, verdict: deny}}" for i in range(99)]))
    content = load_policy(policy_text(same_tool_rules()[:98]
                                      + ["  - {id: secrets, tool: llm.chat, content: '(?i)password|sk-[a-z0-9]{20}', "
                                         "verdict: deny}"]))
    assert len(same.rules) == len(mixed.rules) == len(content.rules) == 100
    print(f"policy engine, 100 rules, match on the last; python {sys.version.split()[0]}")
    run_sync("same-tool", same, request(args))
    run_sync("mixed", mixed, request(args))
    run_sync("content", content, request(args))
    asyncio.run(run_chain(policy_text(same_tool_rules())))


if __name__ == "__main__":
    main()
