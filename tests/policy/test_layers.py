"""Layers: default -> tenant (replaces) -> bundle (can only narrow)."""

from __future__ import annotations

import pytest

from supervisor.policy import (
    NO_MATCH,
    RESTRICTIVENESS,
    default_policy,
    evaluate,
    evaluate_layers,
    load_bundle_policy,
    load_policy,
)
from tests.policy.test_engine import req

VERDICT_RULE = {
    "allow": {},
    "deny": {"reason": "no"},
    "require_approval": {},
    "delay": {"delay_s": 3},
    "downgrade": {"downgrade": {"args.model": "cheap"}},
}


def tenant_with(verdict: str | None):
    if verdict is None:  # the tenant has rules, none for echo
        return load_policy("version: 1\nrules:\n  - {id: other, tool: kb.search, verdict: allow}\n")
    extra = "".join(f", {k}: {v!r}" if not isinstance(v, dict) else f", {k}: {{'args.model': cheap}}"
                    for k, v in VERDICT_RULE[verdict].items())
    return load_policy(f"version: 1\nrules:\n  - {{id: t-{verdict}, tool: echo, verdict: {verdict}{extra}}}\n")


def bundle_with(verdict: str | None):
    if verdict is None:  # the bundle has rules, none for echo: no opinion
        return load_bundle_policy({"rules": [{"id": "b-other", "tool": "kb.*", "verdict": "deny"}]}, source="bundle")
    rule = {"id": f"b-{verdict}", "tool": "echo", "verdict": verdict, **VERDICT_RULE[verdict]}
    return load_bundle_policy({"rules": [rule]}, source="bundle")


V = ["allow", "downgrade", "delay", "require_approval", "deny"]


@pytest.mark.parametrize("t", [*V, None])
@pytest.mark.parametrize("b", [*V, None, "absent"])
def test_bundle_only_narrows(t, b):
    tenant = tenant_with(t)
    bundle = None if b == "absent" else bundle_with(b)
    v = evaluate_layers(tenant, bundle, req("echo"))
    if t is None:  # tenant no-match is a deny no bundle can lift
        assert (v.verdict, v.rule_id, v.reason, v.layer) == ("deny", None, NO_MATCH, "tenant")
        return
    if b in (None, "absent"):  # no opinion: the tenant's verdict stands
        assert (v.verdict, v.rule_id, v.layer) == (t, f"t-{t}", "tenant")
        return
    expected = max(t, b, key=lambda x: RESTRICTIVENESS[x])
    assert v.verdict == expected
    # ties keep the tenant's rule; otherwise the stricter layer names its rule
    winner = "tenant" if RESTRICTIVENESS[t] >= RESTRICTIVENESS[b] else "bundle"
    assert v.layer == winner
    assert v.rule_id == (f"t-{t}" if winner == "tenant" else f"b-{b}")
    if expected != "deny":
        # obligations of both layers survive: a bundle approval does not drop a tenant downgrade
        assert v.delay_s == (3 if "delay" in (t, b) else 0)
        assert dict(v.replacements) == ({"model": "cheap"} if "downgrade" in (t, b) else {})


def test_bundle_allow_cannot_widen_tenant_deny_or_no_match():
    bundle = load_bundle_policy({"rules": [{"id": "b-all", "tool": "*", "verdict": "allow"}]}, source="bundle")
    tenant = load_policy("version: 1\nrules:\n  - {id: no-echo, tool: echo, verdict: deny}\n")
    assert evaluate_layers(tenant, bundle, req("echo")).rule_id == "no-echo"
    assert evaluate_layers(tenant, bundle, req("http.request")).verdict == "deny"
    assert evaluate_layers(default_policy(), bundle, req("http.request")).verdict == "deny"  # default: no egress


def test_conflicting_downgrades_keep_the_tenants_value():
    tenant = load_policy("version: 1\nrules:\n  - {id: t, tool: llm.chat, verdict: downgrade, "
                         "downgrade: {args.model: tenant-cheap, args.max_tokens: 100}}\n")
    bundle = load_bundle_policy({"rules": [{"id": "b", "tool": "llm.chat", "verdict": "require_approval"},
                                           ]}, source="bundle")
    v = evaluate_layers(tenant, bundle, req("llm.chat"))
    assert (v.verdict, v.rule_id, v.layer) == ("require_approval", "b", "bundle")
    assert dict(v.replacements) == {"model": "tenant-cheap", "max_tokens": 100}
    bundle2 = load_bundle_policy({"rules": [{"id": "b2", "tool": "llm.chat", "verdict": "downgrade",
                                             "downgrade": {"args.model": "bundle-cheap", "args.stream": False}}]},
                                 source="bundle")
    v = evaluate_layers(tenant, bundle2, req("llm.chat"))
    assert (v.verdict, v.rule_id) == ("downgrade", "t")
    assert dict(v.replacements) == {"model": "tenant-cheap", "max_tokens": 100, "stream": False}


def test_default_policy_allows_only_tools_that_stay_inside_the_tenant():
    p = default_policy()
    for tool in ("echo", "llm.chat", "kb.search", "kb.add", "kb.delete", "storage.read", "storage.write", "code.run"):
        v = evaluate(p, req(tool))
        assert (v.verdict, v.layer) == ("allow", "default"), tool
    for tool in ("http.request", "mcp.call", "mcp.github.create_issue", "storage", "code.exec"):
        v = evaluate(p, req(tool))
        assert (v.verdict, v.rule_id, v.layer) == ("deny", None, "default"), tool


def test_tenant_policy_replaces_the_default():
    tenant = load_policy("version: 1\nrules:\n  - {id: only-http, tool: http.request, verdict: allow}\n")
    assert evaluate(tenant, req("echo")).verdict == "deny"  # not inherited from the default
    assert evaluate(tenant, req("http.request")).verdict == "allow"
