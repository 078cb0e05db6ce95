"""The knowledge-base port: tenant-scoped documents with full-text search.

Adapters: ``supervisor.stores.sqlite.kb.SqliteKbStore`` (FTS5, bm25) and
``supervisor.stores.postgres.kb.PgKbStore`` (tsvector + GIN,
``websearch_to_tsquery``, ``ts_rank``, ``ts_headline``). Both take the query
in web-search syntax: words are AND-ed, ``"quoted phrases"``, ``or``,
``-excluded``; English stemming and stop words. SQLite reads a query as
``websearch_to_tsquery`` does, operator characters inside words included (its
docstring lists where the word parsers still differ). An exclusion only narrows: an
``or`` alternative with no word to look for (``-fox``, ``the -fox``,
``-"lazy dog"``) is dropped, so a query made only of such finds nothing (``[]``)
rather than every document without those words. Scores rank results *within*
one search; they are not comparable across adapters.

Text is Unicode NFC on both adapters (``normalize_doc``, ``nfc_query``): ``café`` typed as ``e`` +
U+0301 (NFD, as macOS input methods send it) is the same word as the precomposed ``é``. SQLite's
tokenizer happened to fold the two (it drops diacritics); PostgreSQL's parser kept them apart, so
the same document was found by one spelling of the query on one stack and by both on the other.

``add`` with an existing ``doc_id`` replaces that document (so a repeated add
with the same id is idempotent); without one a fresh id is generated.

Quota (``KbQuota``, from ``STOCKADE_KB_QUOTA_MB`` / ``STOCKADE_KB_QUOTA_DOCS``):
each tenant may keep at most ``max_docs`` documents and ``max_bytes`` bytes of
document text (UTF-8 bytes of body + title + source, ``doc_bytes``). Usage is a
per-tenant counter row (``kb_usage``) kept by a trigger on ``kb_docs``, so no
write path can forget it; ``add`` reads it, checks and writes in one
transaction that holds the tenant's counter row (PostgreSQL) or the database
(SQLite, ``BEGIN IMMEDIATE``) locked, so concurrent adds cannot together
overshoot. A write that ends exactly at a limit is accepted; one
that would pass it is refused with ``kb.quota`` and stores nothing. A write that
does not grow a measure (a replace by a shorter text) is never refused for that
measure, so a tenant over a lowered quota can still shrink; ``delete`` frees.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Protocol

from supervisor.errors import StockadeError
from supervisor.ids import new_id

__all__ = [
    "DEFAULT_QUOTA_BYTES", "DEFAULT_QUOTA_DOCS", "DOC_ID", "KbHit", "KbQuota", "KbStore", "KbUsage", "MAX_LIMIT",
    "MAX_QUERY_CHARS", "MAX_SOURCE_CHARS", "MAX_TEXT_CHARS", "MAX_TITLE_CHARS", "SNIPPET_MARK", "check_doc",
    "check_doc_id", "check_search", "doc_bytes", "nfc_query", "normalize_doc",
]

MAX_TEXT_CHARS = 200_000  # PostgreSQL caps one tsvector at 1 MB; this stays well below for any text
MAX_TITLE_CHARS = 500
MAX_SOURCE_CHARS = 2000
MAX_QUERY_CHARS = 1000
MAX_LIMIT = 50
SNIPPET_MARK = "**"  # around matched words in snippets (Markdown bold in the UI)
DOC_ID = re.compile(r"[A-Za-z0-9][\x21-\x7e]{0,199}")  # printable ASCII, no spaces: ids may be URLs
_NUL = "\x00"
DEFAULT_QUOTA_BYTES = 100 * 1024 * 1024  # the defaults of STOCKADE_KB_QUOTA_MB / STOCKADE_KB_QUOTA_DOCS
DEFAULT_QUOTA_DOCS = 100_000


@dataclass(frozen=True)
class KbHit:
    doc_id: str
    title: str | None
    source: str | None
    snippet: str
    score: float


@dataclass(frozen=True)
class KbUsage:
    docs: int
    bytes: int


@dataclass(frozen=True)
class KbQuota:
    """Per-tenant limits; each adapter takes one at construction and enforces it in ``add``."""

    max_bytes: int = DEFAULT_QUOTA_BYTES
    max_docs: int = DEFAULT_QUOTA_DOCS

    def check(self, used: KbUsage, old_bytes: int | None, new_bytes: int) -> None:
        """Refuse (``kb.quota``) a write of ``new_bytes`` replacing a document of ``old_bytes`` (None: a new one)."""
        docs = used.docs + (1 if old_bytes is None else 0)
        grown = new_bytes - (old_bytes or 0)
        if docs > self.max_docs and old_bytes is None:
            what = f"{self.max_docs} documents"
        elif used.bytes + grown > self.max_bytes and grown > 0:
            what = f"{self.max_bytes} bytes of text"
        else:
            return
        raise StockadeError(
            "kb.quota", f"the tenant's knowledge base quota of {what} would be exceeded; delete documents to make room",
            quota_docs=self.max_docs, quota_bytes=self.max_bytes, used_docs=used.docs, used_bytes=used.bytes,
        )


def doc_bytes(text: str, title: str | None, source: str | None) -> int:
    """What a document counts against ``max_bytes``: the same sum the ``kb_usage`` triggers take in SQL, of
    the text as it is stored (NFC, ``normalize_doc``)."""
    return sum(len(v.encode("utf-8", "surrogatepass")) for v in normalize_doc(text, title, source) if v is not None)


class KbStore(Protocol):
    async def add(
        self, tenant_id: str, text: str, *, title: str | None = None, source: str | None = None,
        doc_id: str | None = None,
    ) -> str:
        """Insert or replace a document; return its id. ``not_found`` for an unknown tenant,
        ``kb.quota`` (nothing stored) when it would take the tenant past its quota."""
        ...

    async def search(self, tenant_id: str, query: str, *, limit: int = 5) -> list[KbHit]:
        """Best matches first; ``[]`` for a query with no word to look for (stop words, exclusions only)."""
        ...

    async def delete(self, tenant_id: str, doc_id: str) -> bool:
        """True if the tenant had the document (its bytes and count are freed), False if not;
        ``input.invalid`` for an id ``add`` would refuse (``check_doc_id``)."""
        ...

    async def usage(self, tenant_id: str) -> KbUsage:
        """What the tenant's documents count against its quota."""
        ...


def _utf8(value: str) -> bool:
    """False for text with a lone surrogate (JSON ``"\\ud800"`` decodes to one): it has no UTF-8 form, so
    one adapter's driver would crash on it and the other's refuse it; both refuse it here, the same way."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
    if not all(v is None or _utf8(v) for v in (text, title, source)):
        raise StockadeError("input.invalid", "kb documents must be valid Unicode text (no lone surrogates)")
    if doc_id is None:
        return new_id("doc_")
    return check_doc_id(doc_id)


def _nfc(value: str | None) -> str | None:
    # only text that can be normalised: anything else is left for check_doc / check_search to refuse
    if isinstance(value, str) and _utf8(value) and not unicodedata.is_normalized("NFC", value):
        return unicodedata.normalize("NFC", value)
    return value


def normalize_doc(text: str, title: str | None, source: str | None) -> tuple[str, str | None, str | None]:
    """The document as it is stored and indexed: NFC, so that each spelling of a word is one word on both
    adapters. Before ``check_doc``: the limits apply to what is stored."""
    return _nfc(text), _nfc(title), _nfc(source)  # type: ignore[return-value]


def nfc_query(query: str) -> str:
    """The query as the documents are stored (``normalize_doc``)."""
    return _nfc(query)  # type: ignore[return-value]


def check_doc_id(doc_id: str) -> str:
    """A document id ``add`` accepts (and so one ``delete`` may name), else ``input.invalid``."""
    if not isinstance(doc_id, str) or not DOC_ID.fullmatch(doc_id):
        raise StockadeError("input.invalid", "doc_id: 1-200 printable ASCII characters without spaces")
    return doc_id


def check_search(query: str, limit: int) -> None:
    if not isinstance(query, str) or len(query) > MAX_QUERY_CHARS or _NUL in query or not _utf8(query):
        raise StockadeError("input.invalid", f"kb query must be text of at most {MAX_QUERY_CHARS} characters")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise StockadeError("input.invalid", f"kb search limit must be 1..{MAX_LIMIT}")
