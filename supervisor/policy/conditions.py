"""``when:`` conditions: strict-typed comparisons on ``args.<dotted path>``.

Types never convert. Values fall into kinds: bool, number (int or float, not
bool, finite), str, null, list, dict. A comparison between different kinds is
false for every operator, ``ne`` and ``not_in`` included: ``"2000"`` is not a
number, ``True`` is not ``1``, and a value of the wrong kind never satisfies a
condition in either direction. NaN and +-inf (e.g. ``1e309``) are of no kind:
every operator is false for them, also when they sit inside a list or dict.
A missing path (absent key, index past the end, a step into a scalar) makes
the condition false.

=========  =====================================================================
operator   holds when
=========  =====================================================================
eq         same kind and equal (lists/dicts: element-wise, strictly)
ne         same kind and not equal
in         strictly equal to one element of the operand list
not_in     of the kind of some element of the operand list, equal to none
gt gte     both numbers and the comparison holds
lt lte
contains   value is a str and operand a str that occurs in it; or value is a
           list with an element strictly equal to the operand
matches    value is a str of at most ``MAX_SCAN_CHARS`` characters and the
           RE2 pattern occurs in it (``search``); a longer str, or a spent
           ``Budget``, makes the rule undecidable: the call is denied
=========  =====================================================================

Path segments address dict keys; a segment of decimal digits also indexes a
list (``args.messages.0.content``).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

from supervisor.policy import _regex

__all__ = [
    "MAX_SCAN_CHARS", "MISSING", "OPS", "REGEX_BUDGET", "STEP_BUDGET", "Budget", "Check", "Undecidable",
    "compile_condition", "kind", "lookup", "regex_search", "scalar_key", "strict_eq", "test",
]

MAX_SCAN_CHARS = 1 << 20  # characters a pattern may scan per evaluation (see content matching)
REGEX_BUDGET = 1 << 27  # see Budget
STEP_BUDGET = 100_000
_MAX_DEPTH = 32

OPS = ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "contains", "matches")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class Undecidable(Exception):
    """A rule cannot be decided within the evaluation bounds; the caller fails closed."""


def kind(v: Any) -> str | None:
    t = type(v)  # exact types first: the hot path
    if t is str:
        return "str"
    if t is int:
        return "number"
    if t is float:
        return "number" if math.isfinite(v) else None
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "number"
    if isinstance(v, float):
        return "number" if math.isfinite(v) else None
    if isinstance(v, str):
        return "str"
    if isinstance(v, Mapping):
        return "dict"
    if isinstance(v, list | tuple):
        return "list"
    return None


class Budget:
    """The work one evaluation may do; exceeding it makes the current rule undecidable.

    ``regex`` units are characters x RE2 program instructions (measured worst
    case, DFA-hostile patterns falling back to the NFA: ~3.5 ns per unit on
    the 2-vCPU VM, so 2**27 units ~ 0.5 s; typical patterns run 1-2 ns per
    character whatever their size). ``steps`` are Python-level element visits.
    """

    __slots__ = ("regex", "steps")

    def __init__(self, regex: int = REGEX_BUDGET, steps: int = STEP_BUDGET) -> None:
        self.regex = regex
        self.steps = steps

    def charge_regex(self, units: int) -> None:
        self.regex -= units
        if self.regex < 0:
            raise Undecidable("the evaluation's pattern-matching budget is spent")

    def charge(self, steps: int) -> None:
        self.steps -= steps
        if self.steps < 0:
            raise Undecidable("the evaluation's work budget is spent")


def _clean(v: Any, budget: Budget) -> bool:
    """Every value inside ``v`` has a kind (no NaN/inf, no foreign types) within the depth bound."""
    todo = [(v, 0)]
    while todo:
        x, depth = todo.pop()
        budget.charge(1)
        k = kind(x)
        if k is None or depth > _MAX_DEPTH:
            return False
        if k == "list":
            todo.extend((y, depth + 1) for y in x)
        elif k == "dict":
            for key, y in x.items():
                if not isinstance(key, str):
                    return False
                todo.append((y, depth + 1))
    return True


def strict_eq(a: Any, b: Any, depth: int = 0) -> bool:
    ka, kb = kind(a), kind(b)
    if ka is None or ka != kb or depth > _MAX_DEPTH:
        return False
    if ka == "list":
        return len(a) == len(b) and all(strict_eq(x, y, depth + 1) for x, y in zip(a, b, strict=True))
    if ka == "dict":
        return a.keys() == b.keys() and all(strict_eq(a[k], b[k], depth + 1) for k in a)
    return bool(a == b)


def lookup(args: Any, path: tuple[str, ...]) -> Any:
    """The value at ``path`` inside ``args`` or ``MISSING``."""
    cur = args
    for seg in path:
        if type(cur) is dict or isinstance(cur, Mapping):
            if seg not in cur:
                return MISSING
            cur = cur[seg]
        elif isinstance(cur, list | tuple) and seg.isdigit() and seg.isascii():
            i = int(seg)
            if i >= len(cur):
                return MISSING
            cur = cur[i]
        else:
            return MISSING
    return cur


def scalar_key(v: Any) -> tuple[str, Any] | None:
    """``(kind, value)`` of a scalar with a kind, else None: equal keys <=> strictly equal values."""
    k = kind(v)
    if k is None or k == "list" or k == "dict":
        return None
    return (k, v)  # ("number", 1) == ("number", 1.0); ("bool", True) != ("number", 1)


_CMP = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}
Check = Callable[[Any, "Budget"], bool]


def compile_condition(op: str, operand: Any, regex: Any = None, regex_cost: int = 1) -> Check:
    """A predicate ``(value, budget) -> bool`` with the semantics of ``test``, specialised per operator."""
    if op in _CMP:
        cmp = _CMP[op]

        def number(v: Any, budget: Budget) -> bool:
            t = type(v)
            if t is int or (t is float and math.isfinite(v)):
                return bool(cmp(v, operand))
            return kind(v) == "number" and bool(cmp(v, operand))  # subclasses; never bool, NaN, inf
        return number
    if op in ("eq", "ne") and scalar_key(operand) is not None:
        key = scalar_key(operand)
        if op == "eq":
            return lambda v, budget: scalar_key(v) == key
        return lambda v, budget: (k := scalar_key(v)) is not None and k[0] == key[0] and k != key
    if op in ("in", "not_in"):
        keys = frozenset(scalar_key(x) for x in operand)  # operands are scalars (validated)
        if op == "in":
            return lambda v, budget: scalar_key(v) in keys
        kinds = frozenset(k[0] for k in keys if k is not None)
        return lambda v, budget: (k := scalar_key(v)) is not None and k[0] in kinds and k not in keys
    return lambda v, budget: test(op, v, operand, budget, regex, regex_cost)


def test(op: str, value: Any, operand: Any, budget: Budget, regex: Any = None, regex_cost: int = 1) -> bool:
    """Does ``value <op> operand`` hold? ``operand`` was validated at load time."""
    if value is MISSING:
        return False
    if op == "eq":
        return strict_eq(value, operand)  # walks in step with the operand: bounded by the policy's size
    if op == "ne":
        return kind(value) == kind(operand) and _clean(value, budget) and not strict_eq(value, operand)
    if op == "in":
        return any(strict_eq(value, x) for x in operand)
    if op == "not_in":
        k = kind(value)
        return k is not None and any(kind(x) == k for x in operand) and _clean(value, budget) and not any(
            strict_eq(value, x) for x in operand
        )
    if op in ("gt", "gte", "lt", "lte"):
        if kind(value) != "number":
            return False
        if op == "gt":
            return bool(value > operand)
        if op == "gte":
            return bool(value >= operand)
        if op == "lt":
            return bool(value < operand)
        return bool(value <= operand)
    if op == "contains":
        k = kind(value)
        if k == "str":
            budget.charge_regex(len(value))  # a C-speed substring scan
            return isinstance(operand, str) and operand in value
        if k == "list":
            budget.charge(len(value))
            return any(strict_eq(x, operand) for x in value)
        return False
    if op == "matches":
        if kind(value) != "str":
            return False
        if len(value) > MAX_SCAN_CHARS:
            raise Undecidable(f"an argument is longer than {MAX_SCAN_CHARS} characters")
        budget.charge_regex(len(value) * regex_cost)
        return regex_search(regex, value)
    raise ValueError(f"unknown operator {op!r}")  # unreachable: ops are validated at load time


def regex_search(regex: Any, text: str) -> bool:
    return _regex.search(regex, text)
