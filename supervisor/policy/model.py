"""The compiled policy: frozen rules, the request the engine judges and the verdict it returns."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from supervisor.policy._glob import Glob, tool_glob
from supervisor.policy._regex import _SURROGATE
from supervisor.policy.conditions import compile_condition

__all__ = [
    "NO_MATCH", "RESTRICTIVENESS", "VERDICTS", "ApprovalSpec", "Condition", "Order", "Policy", "PolicyRequest", "Rule",
    "RuleIndex", "Velocity", "Verdict",
]

VERDICTS = ("allow", "deny", "require_approval", "delay", "downgrade")
# Layer combination keeps the most restrictive verdict.
RESTRICTIVENESS = {"allow": 0, "downgrade": 1, "delay": 2, "require_approval": 3, "deny": 4}
NO_MATCH = "no matching rule"


@dataclass(frozen=True)
class Condition:
    path: tuple[str, ...]  # below ``args``
    op: str
    operand: Any
    regex: Any = None  # compiled RE2 program for ``matches``
    regex_cost: int = 1  # its program size: the per-character cost charged to the budget
    check: Any = None  # conditions.compile_condition(...): (value, budget) -> bool

    def __post_init__(self) -> None:
        if self.check is None:
            object.__setattr__(self, "check", compile_condition(self.op, self.operand, self.regex, self.regex_cost))


@dataclass(frozen=True)
class Velocity:
    max: int
    per_s: float
    scope: str  # run | user


@dataclass(frozen=True)
class Order:
    after: Glob | None = None  # the rule matches while no such tool has completed in the run
    not_after: Glob | None = None  # the rule matches once such a tool has passed policy in the run


@dataclass(frozen=True)
class ApprovalSpec:
    """What a require_approval rule asks of its approvers (the defaults: one approver, any key)."""

    approvers: int = 1
    separate: bool = False


@dataclass(frozen=True)
class Rule:
    id: str
    tools: tuple[Glob, ...]
    verdict: str
    reason: str | None = None
    resources: tuple[Glob, ...] | None = None
    conditions: tuple[Condition, ...] = ()
    roles: frozenset[str] | None = None
    users: frozenset[str] | None = None
    projects: frozenset[str] | None = None
    content: Any = None  # one RE2 program for all the rule's content patterns
    content_cost: int = 1
    velocity: Velocity | None = None
    order: Order | None = None
    delay_s: float = 0.0
    replacements: Mapping[str, Any] = field(default_factory=dict)  # top-level argument name -> new value (downgrade)
    line: int | None = None
    # require_approval: how it is decided (distinct approvers; separation of duties); None for other verdicts
    approval: ApprovalSpec | None = None

    def matches_tool(self, tool: str) -> bool:
        return any(g.matches(tool) for g in self.tools)


@dataclass(frozen=True, eq=False)
class Policy:
    """A validated policy document. ``version`` is the sha256 of its canonical JSON form."""

    rules: tuple[Rule, ...]
    version: str
    layer: str = "tenant"  # default | tenant | bundle
    source: str = "policy"
    prices: Mapping[str, float] = field(default_factory=dict)  # tool name or glob -> USD per call
    llm_prices: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # model id -> {input_per_mtok, output_per_mtok}
    limits: Mapping[str, float | int] = field(default_factory=dict)  # rate-limit overrides (supervisor.limits names)
    has_patterns: bool = False  # some rule uses content or matches (regex work grows with argument size)
    has_velocity: bool = False  # some rule counts calls (only then does the caller need to pass histories)
    has_user_velocity: bool = False  # some rule counts a user's calls across runs (velocity scope user)
    _by_tool: dict[str | tuple[str, ...], RuleIndex] = field(default_factory=dict, repr=False, compare=False)

    def index_for_tool(self, tool: str, aliases: tuple[str, ...] = ()) -> RuleIndex:
        """The rules whose tool glob matches ``tool`` or one of its ``aliases``, in order, indexed (memoised)."""
        key: str | tuple[str, ...] = (tool, *aliases) if aliases else tool
        hit = self._by_tool.get(key)
        if hit is None:
            hit = RuleIndex(tuple(r for r in self.rules if r.matches_tool(tool) or any(map(r.matches_tool, aliases))))
            if len(self._by_tool) >= 4096:  # callers pass only valid names, but stay bounded anyway
                self._by_tool.clear()
            self._by_tool[key] = hit
        return hit

    def approval_spec(self, rule_id: str | None) -> ApprovalSpec | None:
        """The approval terms of the require_approval rule ``rule_id``; None if this policy has no such rule."""
        return next((r.approval for r in self.rules if r.id == rule_id and r.approval is not None), None)

    def price_for(self, tool: str) -> float | None:
        """USD per call: the exact name's price, else the first glob (document order) that matches."""
        if tool in self.prices:
            return self.prices[tool]
        for pattern, price in self.prices.items():
            if "*" in pattern and tool_glob(pattern).matches(tool):
                return price
        return None


class RuleIndex:
    """One tool's rules, in order, plus an index that skips rules whose resource cannot match.

    A resource glob matches only resources that start with its literal head
    (the pattern up to its first ``*``; the whole pattern when it has none),
    so each rule is filed under the heads of its resource globs, by length.
    ``candidates(resource)`` looks up the resource's prefixes of those lengths
    and returns, in rule order, a superset of the rules that can match it: every
    rule is still checked in full by the evaluator, so the index can only skip
    work, never change a verdict. With 99 rules over ``/workspace/pN/**`` and the
    resource ``/etc/passwd`` one rule is left to check instead of a hundred.
    """

    __slots__ = ("_by_len", "_plain", "_unindexed", "rules")

    _MIN_RULES = 8  # below this a straight scan is as fast

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.rules = rules
        self._unindexed = len(rules) < self._MIN_RULES
        # rules with no resource matcher are candidates for every resource
        self._plain = tuple(i for i, r in enumerate(rules) if r.resources is None)
        by_len: dict[int, dict[str, list[int]]] = {}
        for i, r in enumerate(rules):
            for g in r.resources or ():
                head = g.pattern.split("*", 1)[0]
                by_len.setdefault(len(head), {}).setdefault(head, []).append(i)
        self._by_len = tuple(sorted(by_len.items()))

    def candidates(self, resource: Any) -> Sequence[Rule]:
        rules = self.rules
        if self._unindexed:
            return rules
        if type(resource) is not str:
            return [rules[i] for i in self._plain]  # a resource matcher never matches a non-string
        if not resource.isascii() and _SURROGATE.search(resource):
            return rules  # regex globs see lone surrogates as U+FFFD: no prefix shortcut for those
        found = set(self._plain)
        n = len(resource)
        for length, heads in self._by_len:
            if length > n:
                break
            hit = heads.get(resource[:length])
            if hit is not None:
                found.update(hit)
        return [rules[i] for i in sorted(found)]


@dataclass(frozen=True)
class PolicyRequest:
    """One call as the engine sees it. Histories are chronological ``(tool, ts)`` pairs on the
    same clock as ``now`` of earlier calls that passed policy.

    ``tool`` is the name the call is counted under (velocity); a rule whose tool glob matches it *or* one of
    ``aliases`` matches the call (every MCP call is also ``mcp.call``). ``called_as``: the name the bundle
    called when a generic door resolved the call to ``tool`` (``mcp.call`` -> ``mcp.<server>.<tool>``); then
    that name must be a valid tool name, and ``tool`` only a resolved one (an MCP tool's name keeps its case)."""

    tool: str
    args: Mapping[str, Any]
    resource: str | None
    role: str
    user: str | None
    project: str | None
    history: Sequence[tuple[str, float]]  # this run (velocity scope run, not_after when ``seen`` is None)
    user_history: Sequence[tuple[str, float]] = ()  # this user, across runs (velocity scope user)
    now: float = field(default_factory=time.monotonic)
    seen: Collection[str] | None = None  # every tool that passed policy in this run; None: tools in history
    completed: Collection[str] | None = None  # tools that completed in this run (``after``); None: as seen
    aliases: tuple[str, ...] = ()
    called_as: str | None = None


@dataclass(frozen=True)
class Verdict:
    verdict: str
    rule_id: str | None
    reason: str | None
    layer: str | None
    delay_s: float = 0
    replacements: Mapping[str, Any] = field(default_factory=dict)
    approval: ApprovalSpec | None = None  # require_approval: the deciding rule's terms
