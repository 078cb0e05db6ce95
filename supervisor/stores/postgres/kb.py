"""PostgreSQL KbStore: generated tsvector + GIN, ``websearch_to_tsquery``, ``ts_rank``, ``ts_headline``.

Every statement runs in ``tenant_tx`` (row-level security on ``kb_docs``) and
filters by ``tenant_id`` as well. ``websearch_to_tsquery`` takes user text as
data (unlike ``to_tsquery`` it has no syntax errors), with one exception: each
``-`` of a run (``---x``, ``- - - x``, ``-(-(-x``) is one more NOT on a 32-deep
parser stack, and 33 fail the whole search with ``tsquery stack too small``
(XX000: an internal error, not a result). ``_fold_negations`` shortens every
run to one or two ``-`` (same parity: ``!!!x`` is ``!x``), so no query gets there.
``ts_headline`` is costly (it re-parses the document), so it runs only on the
``limit`` best rows. ``websearch_to_tsquery`` reads ``-fox`` as ``!'fox'``, which
matches every document without fox; the port says such a query looks for
nothing (SQLite's FTS5 cannot even express it), so ``search`` parses the query
first and drops the ``|`` alternatives that are negations only (``_looked_for``).

Accents fold as FTS5's ``remove_diacritics`` folds them (migration 0046): ``tsv`` is
built on ``stockade_kb_fold(text)``, the query on ``_unmarked(query)``, both the
text less its words' combining marks; ``ts_headline`` parses with
``stockade_kb_headline`` (``unaccent`` where the extension could be created).

Quota: ``add`` locks the tenant's ``kb_usage`` row (migration 0034; a trigger on
``kb_docs`` keeps it), then reads the replaced document's size, checks, and
writes, all in one transaction: a concurrent add of the same tenant waits on the
row lock and, READ COMMITTED, its next statement sees what this one committed.
``delete`` takes the same lock first, so every writer locks counter then
document, in that order (FACTS.md: one lock order, no deadlock).
"""

from __future__ import annotations

import re
import time
import unicodedata

import asyncpg

from supervisor.stores.kb_port import (
    SNIPPET_MARK,
    KbHit,
    KbQuota,
    KbUsage,
    check_doc,
    check_doc_id,
    check_search,
    doc_bytes,
    nfc_query,
    normalize_doc,
)
from supervisor.stores.postgres._rows import CONSTRAINT_ERRORS, constraint_error
from supervisor.stores.postgres.db import PgDB

__all__ = ["PgKbStore"]

# Ties are ordered by doc_id byte by byte (COLLATE "C"), as SQLite orders them: under the database's
# collation (en_US.utf8 in the postgres image) ``a_3`` came before ``B-1``, so the two stacks listed
# equal scores differently and kept different documents at the ``limit``.
_HEADLINE_OPTS = (
    f'StartSel="{SNIPPET_MARK}", StopSel="{SNIPPET_MARK}", MaxWords=35, MinWords=15, '
    'MaxFragments=2, FragmentDelimiter=" … "'
)

# The query as kb_docs.tsv is built (migration 0046: 'english' on the text less its diacritics, as FTS5 folds
# them; the query is _unmarked first), and again for ts_headline, which re-parses the accented body with
# stockade_kb_headline (english + unaccent) and so marks "café" only for a query that reads the same way.
_PARSE = ("SELECT websearch_to_tsquery('english'::regconfig, $1)::text AS query,"
          " websearch_to_tsquery('stockade_kb_headline'::regconfig, $1)::text AS headline")
# $2, $4: what _looked_for kept of the parsed queries, in tsquery's own text form (read back as written)
_SEARCH = f"""
WITH q AS (SELECT $2::tsquery AS query, $4::tsquery AS headline),
top AS (
    SELECT d.doc_id, d.title, d.source, d.body, ts_rank(d.tsv, q.query) AS score
    FROM kb_docs d, q
    WHERE d.tenant_id = $1 AND d.tsv @@ q.query
    ORDER BY score DESC, d.doc_id COLLATE "C"
    LIMIT $3
)
SELECT top.doc_id, top.title, top.source, top.score,
       ts_headline('stockade_kb_headline'::regconfig, top.body, q.headline, '{_HEADLINE_OPTS}') AS snippet
FROM top, q
ORDER BY top.score DESC, top.doc_id COLLATE "C"
"""


# what websearch_to_tsquery skips where it expects an operand: the operator characters of
# to_tsquery and the spaces of glibc's iswspace (the postgres:15 image; U+00A0 and the other no-break
# spaces are no space to it, so they are not folded across). Not U+0085: glibc has it in no space class
# (musl does), so "-" U+0085 "-x" is one NOT of the word U+0085 "-x"; folded as a run it was NOT NOT x,
# the opposite of what PostgreSQL (and SqliteKbStore) read. On a musl-built server (Alpine) U+0085 is a
# space, so 33 "-" apart by U+0085 alone still reach the parser's stack limit there.
_SKIP = "\t\n\v\f\r \u1680\u2000-\u2006\u2008-\u200a\u2028\u2029\u205f\u3000!&|()<"
# a run of NOT operators: "-" where an operand may start (at the start, after a skipped character or
# a quote), then more of them with only skipped characters between
_NOT_RUN = re.compile(f'(?<![^{_SKIP}"])-(?:[{_SKIP}]*-)+')


def _fold_negations(query: str) -> str:
    return _NOT_RUN.sub(lambda m: "-" * (2 - m.group().count("-") % 2), query)


# the combining diacritical marks stockade_kb_fold (migration 0046) strips from documents, here those of a word
_MARKS = re.compile("(?<=\\w)[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]+")


def _unmarked(query: str) -> str:
    """The query's words less their diacritics, as ``stockade_kb_fold`` leaves the documents' (``cafe`` for
    ``café``, also where no ``unaccent`` dictionary folds it). A mark on no word stays: it is an operand
    without a word to the parser, as it was, so no ``-``, U+0301, ``-`` becomes a run of NOTs for it."""
    nfd = unicodedata.normalize("NFD", query)
    return unicodedata.normalize("NFC", _MARKS.sub("", nfd)) if _MARKS.search(nfd) else query


# a token of tsquery's text form: a quoted lexeme (quote and backslash doubled inside) with its
# :weights/prefix, or any one other character (operators ! & | <-> <N>, parentheses, spaces)
_TSQ_TOKEN = re.compile(r"'(?:[^'\\]|''|\\.)*'(?::[*A-Da-d]*)?|.", re.S)


def _looked_for(tsquery: str) -> str | None:
    """``websearch_to_tsquery``'s output less its ``|`` alternatives that look for no word.

    Its output is alternatives (``|``, outermost) of operands AND-ed (``&``): a lexeme, a phrase
    (``<->``), or a negation (``!``). An alternative of negations only (``-fox``: ``!'fox'``) would
    match every document without those words; like SQLite (``fts_query``) it is dropped, so a query
    with nothing to look for finds nothing (kb_port). None when no alternative is left.
    """
    kept: list[str] = []
    start = depth = 0
    looks = False  # the current alternative has an operand that is no negation
    operand = True  # the next token at depth 0 starts an operand
    for m in _TSQ_TOKEN.finditer(tsquery):
        tok = m.group()
        if tok.isspace():
            continue
        if depth == 0 and tok == "|":
            if looks:
                kept.append(tsquery[start:m.start()].strip())
            start, looks, operand = m.end(), False, True
            continue
        if depth == 0 and operand:
            looks, operand = looks or tok != "!", False
        if tok == "(":
            depth += 1
        elif tok == ")":
            depth -= 1
        elif depth == 0 and tok == "&":
            operand = True
    if looks:
        kept.append(tsquery[start:].strip())
    return " | ".join(f"( {alt} )" for alt in kept) if kept else None


_LOCK_USAGE = "SELECT docs, bytes FROM kb_usage WHERE tenant_id = $1 FOR UPDATE"
_OLD_BYTES = ("SELECT stockade_kb_doc_bytes(title, source, body) FROM kb_docs"
              " WHERE tenant_id = $1 AND doc_id = $2")


async def _lock_usage(c: asyncpg.Connection, tenant_id: str) -> KbUsage:
    """Lock the tenant's counter row (created on its first document) and return it."""
    row = await c.fetchrow(_LOCK_USAGE, tenant_id)
    if row is None:  # a concurrent first add inserts too: ours waits for it, does nothing, then locks its row
        await c.execute(
            "INSERT INTO kb_usage (tenant_id) VALUES ($1) ON CONFLICT (tenant_id) DO NOTHING", tenant_id)
        row = await c.fetchrow(_LOCK_USAGE, tenant_id)
    return KbUsage(int(row["docs"]), int(row["bytes"]))


class PgKbStore:
    def __init__(self, db: PgDB, quota: KbQuota | None = None) -> None:
        self._db = db
        self._quota = quota or KbQuota()

    async def add(
        self, tenant_id: str, text: str, *, title: str | None = None, source: str | None = None,
        doc_id: str | None = None,
    ) -> str:
        text, title, source = normalize_doc(text, title, source)
        doc_id = check_doc(text, title, source, doc_id)
        size = doc_bytes(text, title, source)
        now = time.time()
        async with self._db.tenant_tx(tenant_id) as c:
            try:
                used = await _lock_usage(c, tenant_id)
                self._quota.check(used, await c.fetchval(_OLD_BYTES, tenant_id, doc_id), size)
                await c.execute(
                    "INSERT INTO kb_docs (tenant_id, doc_id, title, source, body, created_at, updated_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $6)"
                    " ON CONFLICT (tenant_id, doc_id) DO UPDATE SET title = EXCLUDED.title,"
                    " source = EXCLUDED.source, body = EXCLUDED.body, updated_at = EXCLUDED.updated_at",
                    tenant_id, doc_id, title, source, text, now,
                )
            except CONSTRAINT_ERRORS as exc:
                raise constraint_error(exc) from None
        return doc_id

    async def search(self, tenant_id: str, query: str, *, limit: int = 5) -> list[KbHit]:
        check_search(query, limit)
        if not query.strip():
            return []
        async with self._db.tenant_tx(tenant_id) as c:
            # NFC, as the documents are stored (normalize_doc): PostgreSQL's parser keeps the spellings apart
            parsed = await c.fetchrow(_PARSE, _fold_negations(_unmarked(nfc_query(query))))
            wanted = _looked_for(parsed["query"])
            if wanted is None:
                return []
            rows = await c.fetch(_SEARCH, tenant_id, wanted, limit, _looked_for(parsed["headline"]) or wanted)
        return [KbHit(r["doc_id"], r["title"], r["source"], r["snippet"], float(r["score"])) for r in rows]

    async def delete(self, tenant_id: str, doc_id: str) -> bool:
        check_doc_id(doc_id)
        async with self._db.tenant_tx(tenant_id) as c:
            if await c.fetchrow(_LOCK_USAGE, tenant_id) is None:
                return False  # no counter row: the tenant never stored a document
            status = await c.execute("DELETE FROM kb_docs WHERE tenant_id = $1 AND doc_id = $2", tenant_id, doc_id)
        return status.endswith(" 1")

    async def usage(self, tenant_id: str) -> KbUsage:
        async with self._db.tenant_tx(tenant_id) as c:
            row = await c.fetchrow("SELECT docs, bytes FROM kb_usage WHERE tenant_id = $1", tenant_id)
        return KbUsage(int(row["docs"]), int(row["bytes"])) if row else KbUsage(0, 0)
