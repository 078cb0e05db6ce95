"""Characters a bundle's file names and description may not hold.

Controls (a newline, a terminal escape), format characters (U+202E, the right-to-left override, makes
``\u202egnp.py`` read as ``ypg.png``), lone surrogates and line/paragraph separators: a name or a text
that shows as something else than it is, or breaks a log line, in every listing, log and UI it reaches.
"""

from __future__ import annotations

import unicodedata

__all__ = ["hidden_char"]

_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_JOINERS = frozenset("\u200c\u200d")  # ZWNJ, ZWJ: format characters several scripts and emoji sequences need


def hidden_char(text: str, allowed: str = "") -> str | None:
    """The first control, format, surrogate or separator character of ``text`` not in ``allowed``, else None."""
    for c in text:
        if unicodedata.category(c) in _CATEGORIES and c not in _JOINERS and c not in allowed:
            return c
    return None
