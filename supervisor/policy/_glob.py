"""Globs for tool names and resolved resources; both compile to linear-time matchers.

Tool globs: ``*`` matches any run of characters (dots included: ``mcp.*``
matches ``mcp.github.create_issue``); every other character is literal and
must be a valid tool-name character, so an upper-case or non-ASCII pattern is
an error rather than a rule that silently never matches.

Resource globs: ``**`` matches any run of characters, ``/`` included; ``*``
matches any run without ``/``; everything else is literal (``?``, ``[`` and
``.`` too - resources are URLs and paths, where those are ordinary
characters). ``..`` has no special meaning: the resolver removed dot-segments
before the policy sees the resource, and patterns are NFC like resources. ``/ws/**`` matches ``/ws/a`` and ``/ws/``
but not ``/ws``, ``/wsx`` or ``/ws-evil/a``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from supervisor.policy._regex import _compile_one
from supervisor.policy._regex import fullmatch as _fullmatch

__all__ = ["MAX_GLOB_CHARS", "Glob", "GlobProblem", "resource_glob", "tool_glob"]

MAX_GLOB_CHARS = 1024
_TOOL_GLOB = re.compile(r"[a-z0-9_.*-]{1,128}")
# An MCP tool's own name may have upper case (``getUser``): a call of it is judged as ``mcp.<server>.getUser``,
# so a rule must be able to name it so. Only there: ``Echo`` or ``HTTP.request`` would match no call at all, and
# a deny written that way would deny nothing.
_MCP_TOOL_GLOB = re.compile(r"mcp\.[a-z0-9_*-]{1,64}\.[A-Za-z0-9_.*-]{1,120}")


class GlobProblem(ValueError):
    pass


@dataclass(frozen=True)
class Glob:
    pattern: str
    kind: str  # any | exact | prefix | regex
    value: str = ""
    regex: Any = None
    cost: int = 1  # regex globs: RE2 program size, charged per character matched (evaluation budget)

    def matches(self, text: str) -> bool:
        k = self.kind
        if k == "exact":
            return text == self.value
        if k == "prefix":
            return text.startswith(self.value)
        if k == "any":
            return True
        return _fullmatch(self.regex, text)


def tool_glob(pattern: Any) -> Glob:
    if not isinstance(pattern, str):
        raise GlobProblem("a tool pattern must be a string")
    if len(pattern) <= 128 and pattern != pattern.lower() and _MCP_TOOL_GLOB.fullmatch(pattern) is not None:
        return _compile(pattern, star=".*", double=".*")
    if pattern.isascii() and pattern != pattern.lower() and _TOOL_GLOB.fullmatch(pattern.lower()) is not None:
        raise GlobProblem(f"tool pattern {pattern[:80]!r} has upper case: it may contain only a-z 0-9 _ . - and *, but "
                          "for an MCP tool's own name (mcp.<server>.getUser)")
    if _TOOL_GLOB.fullmatch(pattern) is None:
        raise GlobProblem(
            f"tool pattern {pattern[:80]!r} may contain only a-z 0-9 _ . - and * (at most 128 characters)"
        )
    return _compile(pattern, star=".*", double=".*")


def resource_glob(pattern: Any) -> Glob:
    if not isinstance(pattern, str) or not pattern:
        raise GlobProblem("a resource pattern must be a non-empty string")
    if len(pattern) > MAX_GLOB_CHARS:
        raise GlobProblem(f"resource pattern is longer than {MAX_GLOB_CHARS} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in pattern):
        raise GlobProblem("resource pattern contains control characters")
    if "***" in pattern:
        raise GlobProblem("resource pattern has more than two * in a row")
    # Resolvers hand the policy NFC text (storage keys); a pattern typed in NFD ("cafe\u0301") would
    # otherwise never match its own name, and a deny rule written that way would deny nothing.
    return _compile(unicodedata.normalize("NFC", pattern), star="[^/]*", double="(?s:.*)")


def _compile(pattern: str, *, star: str, double: str) -> Glob:
    if "*" not in pattern:
        return Glob(pattern, "exact", pattern)
    crosses = star == double  # tool globs: every * crosses everything
    if pattern.strip("*") == "" and (crosses or pattern == "**"):
        return Glob(pattern, "any")
    head = pattern.rstrip("*")
    if "*" not in head and (crosses or pattern.endswith("**")):
        return Glob(pattern, "prefix", head)  # "kb.*", "/ws/**": a prefix test
    parts: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            parts.append(double)
            i += 2
        elif pattern[i] == "*":
            parts.append(star)
            i += 1
        else:
            parts.append(_literal(pattern[i]))
            i += 1
    regex = _compile_one("".join(parts))
    return Glob(pattern, "regex", regex=regex, cost=max(1, int(regex.programsize)))


def _literal(ch: str) -> str:
    # Hex escapes for everything but ASCII letters and digits: unambiguous in RE2's syntax.
    if ch.isascii() and ch.isalnum():
        return ch
    return f"\\x{{{ord(ch):x}}}"
