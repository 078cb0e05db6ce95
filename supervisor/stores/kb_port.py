"""The knowledge-base port: tenant-scoped documents with full-text search.

Adapters: ``supervisor.stores.sqlite.kb.SqliteKbStore`` (FTS5, bm25) and
``supervisor.stores.postgres.kb.PgKbStore`` (tsvector + GIN,
``websearch_to_tsquery``, ``ts_rank``, ``ts_headline``). Both take the query
in web-search syntax: words are AND-ed, ``"quoted phrases"``, ``or``,
``-excluded``; English stemming and stop words. Scores rank results *within*
one search; they are not comparable across adapters.

``add`` with an existing ``doc_id`` replaces that document (so a repeated add
with the same id is idempotent); without one a fresh id is generated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from supervisor.errors import StockadeError
from supervisor.ids import new_id

__all__ = [
    "DOC_ID", "KbHit", "KbStore", "MAX_LIMIT", "MAX_QUERY_CHARS", "MAX_SOURCE_CHARS", "MAX_TEXT_CHARS",
    "MAX_TITLE_CHARS", "SNIPPET_MARK", "check_doc", "check_search",
]

MAX_TEXT_CHARS = 200_000  # PostgreSQL caps one tsvector at 1 MB; this stays well below for any text
MAX_TITLE_CHARS = 500
MAX_SOURCE_CHARS = 2000
MAX_QUERY_CHARS = 1000
MAX_LIMIT = 50
SNIPPET_MARK = "**"  # around matched words in snippets (Markdown bold in the UI)
DOC_ID = re.compile(r"[A-Za-z0-9][\x21-\x7e]{0,199}")  # printable ASCII, no spaces: ids may be URLs
_NUL = "\x00"


@dataclass(frozen=True)
class KbHit:
    doc_id: str
    title: str | None
    source: str | None
    snippet: str
    score: float


class KbStore(Protocol):
    async def add(
        self, tenant_id: str, text: str, *, title: str | None = None, source: str | None = None,
        doc_id: str | None = None,
    ) -> str:
        """Insert or replace a document; return its id. ``not_found`` for an unknown tenant."""
        ...

    async def search(self, tenant_id: str, query: str, *, limit: int = 5) -> list[KbHit]:
        """Best matches first; ``[]`` for a query with no searchable words."""
        ...

    async def delete(self, tenant_id: str, doc_id: str) -> bool:
        """True if the document existed."""
        ...


def check_doc(text: str, title: str | None, source: str | None, doc_id: str | None) -> str:
    """Validate a document (same rules on both adapters); return the doc id to use."""
    if not isinstance(text, str) or not text.strip():
        raise StockadeError("input.invalid", "kb document text is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise StockadeError("input.too_large", f"kb document text longer than {MAX_TEXT_CHARS} characters")
    for value, what, cap in ((title, "title", MAX_TITLE_CHARS), (source, "source", MAX_SOURCE_CHARS)):
        if value is not None and (not isinstance(value, str) or len(value) > cap):
            raise StockadeError("input.invalid", f"kb {what} must be a string of at most {cap} characters")
    if any(v is not None and _NUL in v for v in (text, title, source)):
        raise StockadeError("input.invalid", "kb documents cannot contain NUL characters")
    if doc_id is None:
        return new_id("doc_")
    if not isinstance(doc_id, str) or not DOC_ID.fullmatch(doc_id):
        raise StockadeError("input.invalid", "doc_id: 1-200 printable ASCII characters without spaces")
    return doc_id


def check_search(query: str, limit: int) -> None:
    if not isinstance(query, str) or len(query) > MAX_QUERY_CHARS or _NUL in query:
        raise StockadeError("input.invalid", f"kb query must be text of at most {MAX_QUERY_CHARS} characters")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise StockadeError("input.invalid", f"kb search limit must be 1..{MAX_LIMIT}")
