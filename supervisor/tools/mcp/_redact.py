"""A server's secrets - its stored header values and URL query values - cut out of what leaves the MCP tool.

A server can echo what it was sent: the Authorization header in a JSON-RPC error
(``map_error``), in a tool result - ``isError: true`` is MCP's ordinary tool
failure, and "invalid token Bearer ..." is a common one - or in a successful
result. Whatever it says goes to the bundle, the run's events and the
idempotency table, none of which may hold the tenant's credential (sealed at
rest, never shown by the API). The same words are kept out of the logs
(``_logs``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from supervisor.tools.mcp._egress import query_secrets

__all__ = ["REDACTED", "redact_fragments", "redact_words", "scrub_json", "secret_words", "server_secrets"]

REDACTED = "[redacted]"
FRAGMENT = 6  # the shortest part of a word that redact_fragments cuts out of a shortened quote
MIN_WORD = 8  # shorter values are left alone: cutting "prod" out of every text says nothing secret and garbles it


def secret_words(values: Iterable[str]) -> list[str]:
    """Each value, and its credential alone ("Bearer <token>" -> "<token>"), longest first."""
    words = set()
    for v in values:
        for w in (v.strip(), v.strip().rpartition(" ")[2]):
            if len(w) >= MIN_WORD:
                words.add(w)
    return sorted(words, key=len, reverse=True)


def server_secrets(headers: dict[str, str], url: str) -> list[str]:
    """What a server must never be heard repeating: its header values and URL query values (raw and decoded)."""
    return secret_words([*headers.values(), *query_secrets(url)])


def redact_words(text: str, words: Iterable[str]) -> str:
    """``text`` with each word cut out, in any case: an upper- or lower-cased copy of a hex or
    case-insensitive key is the key itself. One substring search per word (a text holds none, mostly)."""
    low = None
    for w in words:
        if w in text:
            text, low = text.replace(w, REDACTED), None
        if low is None:
            low = text.lower()
        if w.lower() in low:
            text, low = re.sub(re.escape(w), REDACTED, text, flags=re.IGNORECASE), None
    return text


def redact_fragments(text: str, words: Iterable[str]) -> str:
    """``redact_words``, and also the part of a word that a shortened quote kept: pydantic's ``input_value``
    shows the first and last characters of what it read with ``...`` between, which can cut a credential
    in two (``...uvwxyz_0123456789ABCDEF``). Any ``FRAGMENT`` or more of a word's end after ``...`` (or of
    its start before it), and any at the very start or end of the text, go too."""
    words = list(words)
    text = redact_words(text, words)
    for w in words:
        for k in range(len(w) - 1, FRAGMENT - 1, -1):
            head, tail = w[:k], w[-k:]
            for frag, where in ((tail, "..." + tail), (head, head + "...")):
                if where in text:
                    text = text.replace(where, where.replace(frag, REDACTED))
            if text.endswith(head):
                text = text[: len(text) - k] + REDACTED
            if text.startswith(tail):
                text = REDACTED + text[k:]
    return text


def scrub_json(value: Any, words: list[str]) -> Any:
    """``value`` (plain JSON, as ``result_json`` made it: fresh lists and dicts, changed in place) with each
    word cut out of every string - object keys too - and a number equal to one replaced. Iterative: a result
    may nest as deep as the server likes."""
    if not words:
        return value
    numbers = {w for w in words if w.lstrip("-").replace(".", "", 1).isdigit()}
    root = [value]
    todo: list[tuple[Any, Any]] = [(root, 0)]
    while todo:
        holder, key = todo.pop()
        v = holder[key]
        if isinstance(v, str):
            holder[key] = redact_words(v, words)
        elif isinstance(v, list):
            todo.extend((v, i) for i in range(len(v)))
        elif isinstance(v, dict):
            items = list(v.items())
            v.clear()
            for k, x in items:
                v[redact_words(k, words)] = x
            todo.extend((v, k) for k in v)
        elif numbers and isinstance(v, int | float) and not isinstance(v, bool) and str(v) in numbers:
            holder[key] = REDACTED
    return root[0]
