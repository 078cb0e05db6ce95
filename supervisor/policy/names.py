"""Tool names are ASCII ``[a-z0-9_.-]``, 1-128 characters; anything else is refused, never normalised.

``Echo``, a full-width ``ｅcho``, ``e<ZWJ>cho``, ``echo\\x00`` or ``echo `` are
not spellings of ``echo``: they are invalid names. Folding case or Unicode
here would let a look-alike reach a rule written for another tool.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MAX_TOOL_NAME", "is_resolved_tool_name", "is_valid_tool_name"]

MAX_TOOL_NAME = 128
_NAME = re.compile(r"[a-z0-9_.-]{1,128}", re.ASCII)
# What a generic door resolves a call to (mcp.call -> mcp.<server>.<tool>): the MCP server's own tool name
# keeps its case (getUser), so upper case is allowed - never in a name the bundle spells itself.
_RESOLVED = re.compile(r"[A-Za-z0-9_.-]{1,200}", re.ASCII)


def is_valid_tool_name(name: Any) -> bool:
    # fullmatch, not match + "$": "$" would accept a trailing newline.
    return type(name) is str and _NAME.fullmatch(name) is not None


def is_resolved_tool_name(name: Any) -> bool:
    """A name a tool resolved a call to (``mcp.<server>.<tool>`` from ``mcp.call``); ASCII, case kept."""
    return type(name) is str and _RESOLVED.fullmatch(name) is not None
