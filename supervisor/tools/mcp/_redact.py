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

from collections.abc import Iterable
from typing import Any

from supervisor.tools.mcp._egress import query_secrets

__all__ = ["REDACTED", "redact_words", "scrub_json", "secret_words", "server_secrets"]

REDACTED = "[redacted]"
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
    for w in words:
        if w in text:
            text = text.replace(w, REDACTED)
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
