"""U+0000 (NUL) and the stores: PostgreSQL can hold it neither in ``text`` nor in ``jsonb``.

SQLite stores it, so without a rule of our own the same input worked on the embedded stack and
failed on PostgreSQL (a bundle's emit with a NUL ended its run ``sandbox.crashed``; an exception
message with one left the run without a terminal event). The rule, the same on every stack:

* what a client sends (API bodies) is refused: ``input.invalid`` (``Text``), as is a lone UTF-16
  surrogate, which no store can encode at all;
* what a bundle or a tool produced is kept, with U+FFFD in place of each NUL (``scrub_nul``).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from pydantic import AfterValidator, StringConstraints

from supervisor.hidden_chars import hidden_char

__all__ = ["Name", "Text", "has_nul", "is_utf8_name", "reject_hidden", "reject_nul", "scrub_nul", "text"]


_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")  # a \u0000 escape, not an escaped backslash + "u0000"


_LEAVES = frozenset({int, float, bool, type(None)})  # never hold a string: not even pushed


def has_nul(value: Any) -> bool:
    # One pass over each container, its strings checked in place (only nested containers go on the
    # stack, never scalars): this runs on every audit record and event. Iterative, so any depth the
    # JSON decoder accepts is fine. Exactly str is checked, as before; dict/list/tuple subclasses are walked.
    stack = [value]
    pop, push, leaves = stack.pop, stack.append, _LEAVES
    while stack:
        v = pop()
        t = type(v)
        if t is str:
            if "\x00" in v:
                return True
        elif t is dict or (t not in leaves and isinstance(v, dict)):
            for k, x in v.items():
                tk = type(k)
                if tk is str:
                    if "\x00" in k:
                        return True
                elif tk not in leaves:
                    push(k)
                tx = type(x)
                if tx is str:
                    if "\x00" in x:
                        return True
                elif tx not in leaves:
                    push(x)
        elif t is list or t is tuple or (t not in leaves and isinstance(v, (list, tuple))):
            for x in v:
                tx = type(x)
                if tx is str:
                    if "\x00" in x:
                        return True
                elif tx not in leaves:
                    push(x)
    return False


def scrub_nul(value: Any) -> Any:
    """``value`` with U+0000 replaced by U+FFFD in every string, keys included (the same object when
    there is none). For what a bundle or a tool produced and the supervisor must store: run events,
    terminal outcomes, idempotent results."""
    if not has_nul(value):
        return value
    if type(value) is str:
        return value.replace("\x00", "\ufffd")
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return json.loads(_NUL_ESCAPE.sub(lambda m: m.group(1) + "\\ufffd", text))


_SURROGATE = re.compile("[\ud800-\udfff]")


def reject_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("NUL characters (U+0000) are not accepted")
    # A lone UTF-16 surrogate ("\ud800" is valid JSON) is no Unicode text: no store can encode it (it
    # answered 500, or 503 audit.unavailable on an approval's reason). pydantic refuses one in a constrained
    # str but lets it through an optional one (``Text | None``), so the rule is ours, on every Text field.
    if _SURROGATE.search(value) is not None:
        raise ValueError("lone UTF-16 surrogates (U+D800..U+DFFF) are not valid Unicode text")
    return value


Text = Annotated[str, AfterValidator(reject_nul)]  # a free-text API field that will be stored


def reject_hidden(value: str) -> str:
    """A name shown in listings, logs and the UI: no control, format or separator character (U+202E shows
    ``gnp.exe`` as ``exe.png``, a terminal escape recolours a log, U+200B alone is an invisible name)."""
    bad = hidden_char(value)
    if bad is not None:
        raise ValueError(f"a name may not hold control or format characters (U+{ord(bad):04X})")
    return value


Name = Annotated[str, AfterValidator(reject_nul), AfterValidator(reject_hidden)]  # a stored display name


def text(*, min_length: int | None = None, max_length: int | None = None) -> Any:
    """``Text`` of a bounded length, its limits said in characters. ``Field(max_length=...)`` on an
    optional ``Text | None`` lands on the union, not the string, and pydantic then words the error for
    a list: "body.reason: Value should have at most 2000 items after validation, not 100000"."""
    return Annotated[str, StringConstraints(min_length=min_length, max_length=max_length), AfterValidator(reject_nul)]


def is_utf8_name(name: str) -> bool:
    """False for a file name with bytes that are not UTF-8 (``os`` hands them over as lone surrogates): no
    key can spell it, no frame or JSON column can carry it."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
