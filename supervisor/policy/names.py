"""Tool names are ASCII ``[a-z0-9_.-]``, 1-128 characters; anything else is refused, never normalised.

``Echo``, a full-width ``ｅcho``, ``e<ZWJ>cho``, ``echo\\x00`` or ``echo `` are
not spellings of ``echo``: they are invalid names. Folding case or Unicode
here would let a look-alike reach a rule written for another tool.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MAX_TOOL_NAME", "is_valid_tool_name"]

MAX_TOOL_NAME = 128
_NAME = re.compile(r"[a-z0-9_.-]{1,128}", re.ASCII)


def is_valid_tool_name(name: Any) -> bool:
    # fullmatch, not match + "$": "$" would accept a trailing newline.
    return type(name) is str and _NAME.fullmatch(name) is not None
