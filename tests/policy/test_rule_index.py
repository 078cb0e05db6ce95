"""The per-tool resource index may only skip rules that cannot match: verdicts equal a straight scan."""

from __future__ import annotations

import random

import pytest

from supervisor.policy import PolicyRequest, evaluate, load_policy
from supervisor.policy.model import RuleIndex

HEADS = ["/", "/ws/", "/ws/a", "/ws/ab/", "/etc/", "https://", "https://api.example.com/", "s3://b/",
         "/ws/a\ufffd", "/wsx", ""]
TAILS = ["", "*", "**", "*/x", "**/y.txt", "*.json", "/**"]
RESOURCES = ["/", "/ws", "/ws/", "/ws/a", "/ws/a/", "/ws/ab/c", "/ws/ab/c/y.txt", "/ws/abc.json", "/etc/passwd",
             "/wsx/1", "https://api.example.com/v1", "https://evil.example/", "s3://b/k", "", "/ws/a\ud800",
             "/ws/a\ufffd/x", "/ws/a\ud800/x", "/ÉTC/", "x", "/ws/a/x"]


def _policy(rng: random.Random, n: int):
    lines = ["version: 1", "rules:"]
    for i in range(n):
        lines += [f"  - id: r{i}", "    tool: fs.read", f"    verdict: {rng.choice(['allow', 'deny', 'delay'])}"]
        if lines[-1].endswith("delay"):
            lines.append("    delay_s: 1")
        kind = rng.random()
        if kind < 0.8:
            globs = [rng.choice(HEADS) + rng.choice(TAILS) for _ in range(rng.choice([1, 1, 2]))]
            globs = [g for g in globs if g] or ["**"]
            lines.append("    resource: [" + ", ".join(f'"{g}"' for g in globs) + "]")
        if rng.random() < 0.2:
            lines.append(f"    role: {rng.choice(['admin', 'member'])}")
    return load_policy("\n".join(lines) + "\n")


def _scan(policy, req):
    """The verdict a straight scan of every rule gives (the index switched off)."""
    saved = RuleIndex._MIN_RULES
    RuleIndex._MIN_RULES = 10**9
    try:
        policy._by_tool.clear()
        return evaluate(policy, req)
    finally:
        RuleIndex._MIN_RULES = saved
        policy._by_tool.clear()


@pytest.mark.parametrize("seed", range(40))
def test_index_never_changes_a_verdict(seed):
    rng = random.Random(seed)
    pol = _policy(rng, rng.choice([8, 20, 60]))
    for resource in [*RESOURCES, None, 42]:
        for role in ("admin", "member"):
            req = PolicyRequest(tool="fs.read", args={}, resource=resource, role=role, user=None, project=None,
                                history=())
            assert evaluate(pol, req) == _scan(pol, req), (seed, resource, role)


def test_index_skips_rules_that_cannot_match():
    text = ["version: 1", "rules:"]
    for i in range(99):
        text += [f"  - id: ws-{i}", "    tool: fs.read", f'    resource: "/workspace/p{i}/**"', "    verdict: allow"]
    text += ["  - id: sys", "    tool: fs.read", '    resource: "/etc/**"', "    verdict: deny"]
    pol = load_policy("\n".join(text) + "\n")
    idx = pol.index_for_tool("fs.read")
    assert [r.id for r in idx.candidates("/etc/passwd")] == ["sys"]
    assert [r.id for r in idx.candidates("/workspace/p7/a")] == ["ws-7"]
    assert [r.id for r in idx.candidates("/workspace/p1/")] == ["ws-1"]  # not ws-10..19: their heads differ
    assert idx.candidates("/workspace/p1") == []  # "/workspace/p1/**" needs the slash
    assert len(idx.candidates("/workspace/p1\ud800")) == 100  # surrogates: no shortcut
    req = PolicyRequest(tool="fs.read", args={}, resource="/etc/passwd", role="member", user=None, project=None,
                        history=())
    assert evaluate(pol, req).rule_id == "sys"
