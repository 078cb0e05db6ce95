"""Evaluation: rules in order, first match wins, no match = deny; layers only narrow.

A rule matches when every matcher it has holds, checked cheapest first:
tool glob (against the call's name or any of its aliases: ``mcp.call`` and
``mcp.<server>.<tool>`` name one MCP call, so a rule on either spelling
judges both), principal (role/user/project), resource glob, ``when``
conditions, order, velocity, content patterns.

Evaluation cost is bounded. Statically: <= 1000 rules, <= 4096 conditions,
<= 32 regex rules (loader). Per evaluation, one ``Budget`` shared by the
layers: regex work (characters x RE2 program size, linear-time engine: content
patterns, ``matches`` and resource globs with a ``*`` inside) and Python-level
steps (list scans, velocity history, argument walks, at most
``MAX_SCAN_NODES`` values / ``MAX_SCAN_CHARS`` characters). A rule that
cannot be decided within the bounds denies the call (fail closed) and names
itself in the verdict.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from supervisor.policy.conditions import MAX_SCAN_CHARS, Budget, Undecidable, lookup, regex_search
from supervisor.policy.model import NO_MATCH, RESTRICTIVENESS, ApprovalSpec, Policy, PolicyRequest, Rule, Verdict
from supervisor.policy.names import is_resolved_tool_name, is_valid_tool_name

__all__ = ["MAX_SCAN_NODES", "evaluate", "evaluate_layers", "stricter_terms"]

MAX_SCAN_NODES = 10_000
_MAX_DEPTH = 32


def evaluate(policy: Policy, req: PolicyRequest) -> Verdict:
    """The verdict of one policy layer; no matching rule -> deny with ``rule_id`` None."""
    return _decide(policy, req, Budget()) or Verdict("deny", None, NO_MATCH, policy.layer)


def evaluate_layers(tenant: Policy, bundle: Policy | None, req: PolicyRequest) -> Verdict:
    """The tenant layer decides; a bundle layer can only make that decision stricter.

    ``tenant`` is the tenant's policy, or the shipped default when it has none
    (the tenant layer replaces the default; they are never merged). The bundle
    layer's no-match means "no opinion". Otherwise the more restrictive verdict
    wins (deny > require_approval > delay > downgrade > allow; a tie keeps the
    tenant's). Obligations of the other layer are kept: the result carries the
    longest delay and the downgrade replacements of both (the tenant's value
    wins for an argument both replace), so a bundle's approval rule does not
    drop a tenant's downgrade. When both ask for approval, the bundle's rule is
    named if its ``approval:`` terms are stricter (more approvers, separation). A bundle allow never overrides a tenant deny or
    no-match: a tenant deny returns before the bundle is consulted.
    """
    budget = Budget()
    t = _decide(tenant, req, budget) or Verdict("deny", None, NO_MATCH, tenant.layer)
    if t.verdict == "deny" or bundle is None:
        return t
    b = _decide(bundle, req, budget)
    if b is None:
        return t
    if b.verdict == "deny":
        return b
    strict = b if RESTRICTIVENESS[b.verdict] > RESTRICTIVENESS[t.verdict] else t
    if b.verdict == t.verdict == "require_approval" and stricter_terms(b.approval, t.approval):
        strict = b  # the bundle asks for more people (or for separation): its rule decides how
    return Verdict(
        strict.verdict, strict.rule_id, strict.reason, strict.layer,
        delay_s=max(t.delay_s, b.delay_s),
        replacements={**b.replacements, **t.replacements},
        approval=strict.approval,
    )


def stricter_terms(b: ApprovalSpec | None, t: ApprovalSpec | None) -> bool:
    """Whether the bundle's approval terms (``b``) ask for at least as much as the tenant's (``t``), and more.

    The approval step applies the terms of one rule (the one the verdict names), so when both layers
    ask for a human the rule with the dominating terms is named; terms neither dominates (3 approvers
    vs. separation) keep the tenant's rule.
    """
    b, t = b or ApprovalSpec(), t or ApprovalSpec()
    return b.approvers >= t.approvers and b.separate >= t.separate and b != t


def _valid_names(req: PolicyRequest) -> bool:
    if req.called_as is None:
        ok = is_valid_tool_name(req.tool)
    else:
        ok = is_valid_tool_name(req.called_as) and is_resolved_tool_name(req.tool)
    return ok and type(req.aliases) is tuple and all(map(is_valid_tool_name, req.aliases))


def _decide(policy: Policy, req: PolicyRequest, budget: Budget) -> Verdict | None:
    if not _valid_names(req):
        return Verdict("deny", None, "invalid tool name", policy.layer)
    ctx = _Ctx(req, budget)
    for rule in policy.index_for_tool(req.tool, req.aliases).candidates(req.resource):
        try:
            hit = _matches(rule, req, ctx)
        except Undecidable as exc:
            return Verdict("deny", rule.id, f"rule {rule.id} cannot be evaluated: {exc}", policy.layer)
        if hit:
            return Verdict(
                rule.verdict, rule.id, rule.reason, policy.layer,
                delay_s=rule.delay_s if rule.verdict == "delay" else 0.0,
                replacements=dict(rule.replacements) if rule.verdict == "downgrade" else {},
                approval=rule.approval,
            )
    return None


class _Ctx:
    """Per-evaluation memo: the tool sets of the run and the argument strings, built at most once."""

    def __init__(self, req: PolicyRequest, budget: Budget) -> None:
        self.req = req
        self.budget = budget
        self._strings: list[str] | None = None
        self.total_chars = 0
        self._seen: Collection[str] | None = req.seen
        self._completed: Collection[str] | None = req.completed

    def seen(self) -> Collection[str]:
        if self._seen is None:
            self.budget.charge(len(self.req.history))
            self._seen = {t for t, _ in self.req.history}
        return self._seen

    def completed(self) -> Collection[str]:
        if self._completed is None:
            self._completed = self.seen()
        return self._completed

    def strings(self) -> list[str]:
        if self._strings is None:
            self._strings = _strings(self.req.args, self.budget)
            self.total_chars = sum(len(s) for s in self._strings)
        return self._strings


def _matches(rule: Rule, req: PolicyRequest, ctx: _Ctx) -> bool:
    if rule.roles is not None and req.role not in rule.roles:
        return False
    if rule.users is not None and req.user not in rule.users:
        return False
    if rule.projects is not None and req.project not in rule.projects:
        return False
    budget = ctx.budget
    if rule.resources is not None:
        res = req.resource
        if type(res) is not str or not _resource_hit(rule, res, budget):
            return False
    for c in rule.conditions:
        if not c.check(lookup(req.args, c.path), budget):
            return False
    if rule.order is not None:
        o = rule.order
        if o.after is not None:
            done = ctx.completed()
            budget.charge(len(done))
            if any(o.after.matches(t) for t in done):
                return False  # "B only after A": the rule (typically a deny) stops matching once A completed
        if o.not_after is not None:
            seen = ctx.seen()
            budget.charge(len(seen))
            if not any(o.not_after.matches(t) for t in seen):
                return False  # "never B after A": the rule matches only once A has happened
    if rule.velocity is not None and not _over_velocity(rule, req, budget):
        return False
    if rule.content is not None:
        strings = ctx.strings()
        budget.charge_regex(ctx.total_chars * rule.content_cost)
        if not any(regex_search(rule.content, s) for s in strings):
            return False
    return True


def _resource_hit(rule: Rule, res: str, budget: Budget) -> bool:
    # A policy may hold tens of thousands of resource globs and a resource may be an 8 KiB URL:
    # regex globs are charged like patterns (characters x program size), the rest one step each.
    for g in rule.resources or ():
        if g.kind == "regex":
            budget.charge_regex(len(res) * g.cost)
        else:
            budget.charge(1)
        if g.matches(res):
            return True
    return False


def _over_velocity(rule: Rule, req: PolicyRequest, budget: Budget) -> bool:
    """Would this call be call number max+1 (or later) of the tool within the window?"""
    v = rule.velocity
    assert v is not None
    history = req.history if v.scope == "run" else req.user_history
    start = req.now - v.per_s
    count = 0
    for i in range(len(history) - 1, -1, -1):  # newest first; stop at the window's start
        budget.charge(1)
        tool, ts = history[i]
        if ts <= start:
            break
        if tool == req.tool:
            count += 1
            if count >= v.max:
                return True
    return False


def _strings(args: Any, budget: Budget) -> list[str]:
    """Every string in the arguments - mapping keys too, since text can hide there as well."""
    out: list[str] = []
    total = 0
    nodes = 0
    todo: list[tuple[Any, int]] = [(args, 0)]
    while todo:
        v, depth = todo.pop()
        nodes += 1
        budget.charge(1)
        if nodes > MAX_SCAN_NODES or depth > _MAX_DEPTH:
            raise Undecidable(f"arguments have more than {MAX_SCAN_NODES} values or nest deeper than {_MAX_DEPTH}")
        if isinstance(v, str):
            total += len(v)
            if total > MAX_SCAN_CHARS:
                raise Undecidable(f"argument text is longer than {MAX_SCAN_CHARS} characters in total")
            out.append(v)
        elif isinstance(v, Mapping):
            for k, x in v.items():
                todo.append((k, depth + 1))
                todo.append((x, depth + 1))
        elif isinstance(v, list | tuple):
            todo.extend((x, depth + 1) for x in v)
    return out
