"""Plain YAML scalars read as YAML 1.2 (core schema), with YAML 1.1's double meanings refused.

PyYAML resolves untagged scalars by YAML 1.1, where ``NO`` is false, ``12:30`` is 750 (base 60),
``010`` is 8 (octal) and ``on``/``off``/``yes`` are booleans, while ``1e3`` stays a string. In a
policy that silently turned ``in: [NO, SE]`` into ``[false, "SE"]`` and a deny rule never fired.

Every loader of ours (policies, ``bundle.yaml``, the LLM pricing file) reads plain scalars here:

* null ``null Null NULL ~`` (or nothing), booleans ``true True TRUE false False FALSE``,
  integers decimal, ``0o17`` and ``0x1F``, floats ``1.5 1e3 1e-3 .inf .nan`` - the YAML 1.2 core schema;
* a spelling that YAML 1.1 reads otherwise (``yes no on off y n`` in any case, ``12:30``, ``010``,
  ``1_000``, ``0b101``, a timestamp ...) is refused with a hint to quote it, never guessed.

Only plain (unquoted, untagged) scalars are resolved; a quoted one is always a string.
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml

__all__ = ["AmbiguousScalar", "CoreLoader", "construct", "plain_tag", "safe_load"]

NULL = "tag:yaml.org,2002:null"
BOOL = "tag:yaml.org,2002:bool"
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"
STR = "tag:yaml.org,2002:str"

_NULL = re.compile(r"null|Null|NULL|~|")
_TRUE = re.compile(r"true|True|TRUE")
_FALSE = re.compile(r"false|False|FALSE")
_INT10 = re.compile(r"[-+]?[0-9]+")
_INT8 = re.compile(r"0o[0-7]+")
_INT16 = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_INF = re.compile(r"[-+]?\.(inf|Inf|INF)")
_NAN = re.compile(r"\.(nan|NaN|NAN)")

_YAML11_BOOL = re.compile(r"y|n|yes|no|on|off", re.IGNORECASE)
_LEADING_ZERO = re.compile(r"[-+]{0,1}0[0-9_]+")  # {0,1}: tests/test_sources_session14 bans a question mark before a digit
_SEXAGESIMAL = re.compile(r"[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?")
_YAML11 = yaml.resolver.Resolver()


class AmbiguousScalar(ValueError):
    """A plain scalar YAML 1.1 and 1.2 read differently (or that has no JSON type): quote it."""


def _short(tag: str) -> str:
    return "!!" + tag[len("tag:yaml.org,2002:"):] if tag.startswith("tag:yaml.org,2002:") else tag


def plain_tag(value: str) -> str:
    """The core-schema tag of an untagged plain scalar; ``AmbiguousScalar`` for a YAML 1.1 double meaning."""
    if _YAML11_BOOL.fullmatch(value):
        raise AmbiguousScalar(
            f"{value!r} is a boolean in YAML 1.1 and a string in YAML 1.2: write true or false for a boolean,"
            f" or quote it ('{value}') for a string")
    if _LEADING_ZERO.fullmatch(value):
        raise AmbiguousScalar(
            f"{value!r} has a leading zero: YAML 1.1 reads it as octal (010 is 8), YAML 1.2 as decimal;"
            f" write the number without the zero (0o10 for octal), or quote it ('{value}') for a string")
    if _SEXAGESIMAL.fullmatch(value) and _YAML11.resolve(yaml.ScalarNode, value, (True, False)) != STR:
        raise AmbiguousScalar(
            f"{value!r} is a base-60 number in YAML 1.1 (12:30 is 750): quote it ('{value}') for a string")
    if _NULL.fullmatch(value):
        return NULL
    if _TRUE.fullmatch(value) or _FALSE.fullmatch(value):
        return BOOL
    if _INT10.fullmatch(value) or _INT8.fullmatch(value) or _INT16.fullmatch(value):
        return INT
    if _FLOAT.fullmatch(value) or _INF.fullmatch(value) or _NAN.fullmatch(value):
        return FLOAT
    old = _YAML11.resolve(yaml.ScalarNode, value, (True, False))
    if old != STR:  # 1_000, 0b101, -0x1f, 2024-01-01, = ...: a string in YAML 1.2, something else in 1.1
        raise AmbiguousScalar(f"{value!r} is a {_short(old)} in YAML 1.1, a string in YAML 1.2:"
                              f" tag {_short(old)} is not allowed (quote the value to make it a string)")
    return STR


def construct(tag: str, value: str) -> Any:
    """The value of a core-schema scalar (implicit or explicitly tagged). ``ValueError`` if it is not one."""
    if tag == STR:
        return value
    if tag == NULL and _NULL.fullmatch(value):
        return None
    if tag == BOOL and (_TRUE.fullmatch(value) or _FALSE.fullmatch(value)):
        return value[0] in "tT"
    if tag in (INT, FLOAT):
        number: int | float | None = None
        if _INT16.fullmatch(value):
            number = int(value[2:], 16)
        elif _INT8.fullmatch(value):
            number = int(value[2:], 8)
        elif _INT10.fullmatch(value) and not _LEADING_ZERO.fullmatch(value):
            number = int(value)  # ValueError past Python's digit limit
        if number is not None:
            return float(number) if tag == FLOAT else number
        if tag == FLOAT:
            if _FLOAT.fullmatch(value):
                return float(value)
            if _INF.fullmatch(value):
                return -math.inf if value[0] == "-" else math.inf
            if _NAN.fullmatch(value):
                return math.nan
    raise ValueError(f"{value!r:.60} is not a YAML 1.2 {_short(tag)}")


class CoreLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` resolving plain scalars by :func:`plain_tag` (errors carry the scalar's line)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # the innermost call is the scalar's: its mark is the scalar's line
        try:
            return super().compose_node(parent, index)
        except AmbiguousScalar as exc:
            raise yaml.constructor.ConstructorError(None, None, str(exc), event.start_mark) from None

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is yaml.ScalarNode and implicit[0]:
            return plain_tag(value)
        return super().resolve(kind, value, implicit)

    def construct_core(self, node: Any) -> Any:
        try:
            return construct(node.tag, self.construct_scalar(node))
        except ValueError as exc:
            raise yaml.constructor.ConstructorError(None, None, str(exc).splitlines()[0][:200], node.start_mark) from None


for _tag in (NULL, BOOL, INT, FLOAT):
    CoreLoader.add_constructor(_tag, CoreLoader.construct_core)


def _not_core(loader: CoreLoader, node: Any) -> Any:
    """An explicit tag of YAML 1.1 beyond the core schema (``!!binary``, ``!!timestamp``, ``!!set``, ``!!omap``,
    ``!!pairs``): refused. ``!!binary`` made bytes, which passed every check written for strings (a bundle
    version ``!!binary MhtbMG0=`` is "2\x1b[0m") and became a string only after them."""
    raise yaml.constructor.ConstructorError(None, None, f"the tag {_short(node.tag)} is not accepted (YAML 1.2 core "
                                            "schema: strings, numbers, booleans, null, lists and mappings)",
                                            node.start_mark)


for _tag in ("binary", "timestamp", "set", "omap", "pairs"):
    CoreLoader.add_constructor("tag:yaml.org,2002:" + _tag, _not_core)


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 core-schema scalars."""
    return yaml.load(text, Loader=CoreLoader)  # noqa: S506 - CoreLoader is a SafeLoader
