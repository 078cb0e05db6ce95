"""Characters a name may not hold: bundle file names and descriptions, tenant, user and project names.

Controls (a newline, a terminal escape), format characters (U+202E, the right-to-left override, makes
``\u202egnp.py`` read as ``ypg.png``), lone surrogates and line/paragraph separators: a name or a text
that shows as something else than it is, or breaks a log line, in every listing, log and UI it reaches.
"""

from __future__ import annotations

import unicodedata

__all__ = ["hidden_char"]

_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_JOINERS = frozenset("\u200c\u200d")  # ZWNJ, ZWJ: format characters several scripts and emoji sequences need
# The subdivision flags of Unicode's emoji list (England, Scotland, Wales): a black flag, tag characters
# (U+E0020-U+E007E, format characters) spelling the region, and CANCEL TAG. Tag characters anywhere else
# are text no screen shows ("ASCII smuggling": instructions hidden from a reviewer, read by a model).
_FLAGS = tuple("\U0001F3F4" + "".join(chr(0xE0000 + ord(c)) for c in region) + "\U000E007F"
               for region in ("gbeng", "gbsct", "gbwls"))


def hidden_char(text: str, allowed: str = "") -> str | None:
    """The first control, format, surrogate or separator character of ``text`` not in ``allowed``, else None."""
    if "\U000E007F" in text:  # a subdivision flag's tags are shown as the flag
        for flag in _FLAGS:
            text = text.replace(flag, "")
    for c in text:
        if unicodedata.category(c) in _CATEGORIES and c not in _JOINERS and c not in allowed:
            return c
    return None
