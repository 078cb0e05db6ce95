"""SQLite KbStore: FTS5 with bm25 ranking, one index per tenant.

Why one FTS5 table per tenant (``kb_fts_<hash>``, external content over
``kb_docs``): bm25 weighs terms by corpus statistics (document count, term
frequency across documents). In a shared index those statistics include other
tenants' documents, so a tenant could learn from score changes whether some
word appears in another tenant's knowledge base. Separate indexes make scores
depend on the tenant's own documents only.

User queries are never passed to FTS5 as syntax: they are read as PostgreSQL's
``websearch_to_tsquery`` reads them (``_lex`` follows its lexer: words AND-ed,
``"phrases"``, ``or``, ``-word``; ``!&|()<`` between words are skipped and end a word,
``apple(-banana)`` is apple without banana, ``x&y`` is x and y, ``fox:A`` is fox) and
written as FTS5 with every term double-quoted, so no user text can produce an FTS5
syntax error or reach FTS5's ``NEAR``, ``AND``/``OR``/``NOT``, ``col:``, ``^`` or ``*``
(tests/contract/test_kb_query_parity_session22.py checks both stores answer alike).

Deliberate divergences, where FTS5's words cannot say what PostgreSQL's lexemes say
(kept out of that test's tables): a stop word inside a phrase is that very word here
and any one word on PostgreSQL (``"capital of germany"``); PostgreSQL's parser keeps
some tokens whole besides their parts (``e-mail``, ``foo.com``, ``/a/b``, ``1.5``,
``..``) and then finds only documents with that very compound, where here they are
the phrase of their words; an XML tag (``<b>``) is skipped by PostgreSQL's parser, in
documents and quoted queries, and is words here; the two stemmers (porter, snowball
english) differ on some words. Spaces are those of glibc (the postgres:15 image).

Quota: ``add`` reads the tenant's ``kb_usage`` row (migration 0034; triggers on
``kb_docs`` keep it), checks and writes inside one ``BEGIN IMMEDIATE``
transaction, which holds the database write lock: no other connection or
process writes in between.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import time
import unicodedata
from collections.abc import Iterator

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
from supervisor.stores.sqlite._rows import integrity_error
from supervisor.stores.sqlite.db import SqliteDB

__all__ = ["SqliteKbStore", "fts_query"]

# PostgreSQL's english stop-word list (snowball english.stop): dropped from queries as PostgreSQL does.
_STOP = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers herself
it its itself they them their theirs themselves what which who whom this that these those am is are was were be
been being have has had having do does did doing a an the and but if or because as until while of at by for with
about against between into through during before after above below to from up down in out on off over under again
further then once here there when where why how all any both each few more most other some such no nor not only own
same so than too very s t can will just don should now
""".split())
# websearch_to_tsquery's lexer (PostgreSQL 15, tsquery.c), which this one follows character by character:
# spaces are what glibc's iswspace is in PostgreSQL's C.UTF-8 locale (U+00A0, U+2007, U+202F, U+0085, U+001C-U+001F
# are none: they are inside a word, which the word parser then splits into a phrase)
_SPACE = "\t\n\v\f\r \u1680\u2000-\u2006\u2008-\u200a\u2028\u2029\u205f\u3000"
_OPS = "!&|()<"  # skipped between operands; they end a word, as ":" does after its first character
_SKIP = re.compile(f"[{_SPACE}{_OPS}]+")
_VALUE = re.compile(f'.[^{_SPACE}{_OPS}":]*', re.S)
# "or" after an operand is an OR when what follows is no letter, digit, "-" or "_" and some operand follows
_OR = re.compile(f"[oO][rR](?=.[{_SPACE}]*[^{_SPACE}])", re.S)
_WORD = re.compile(r"[^\W_]+")  # what the word parsers keep of a word ("_" separates, as in both)
# a word's combining marks, dropped as PgKbStore._unmarked drops them (FTS5 folds them in the index)
_MARKS = re.compile("(?<=\\w)[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]+")
_TOKENIZER = "porter unicode61 remove_diacritics 2"


def _phrase(terms: list[str]) -> str:
    return '"' + " ".join(terms) + '"'  # [^\W_]+ terms hold no quote characters


def _lex(text: str) -> Iterator[tuple[str, str]]:  # ("not", "-"), ("or", "or"), ("val", a word or phrase)
    """websearch_to_tsquery's tokens: between operands spaces and ``!&|()<`` are skipped and ``or`` may be an
    OR; where an operand may start they are skipped too, ``-`` is a NOT, ``"`` opens a phrase (to the next
    ``"`` or the end), anything else is a word up to a space, ``!&|()<``, ``"`` or ``:`` (``fox:A`` is fox
    and ``:A``, ``fox:-dog`` fox and ``:-dog``: the tsvector reader stops at a weight's ``:``)."""
    i, n, operand = 0, len(text), True
    while i < n:
        skip = _SKIP.match(text, i)
        if skip:
            i = skip.end()
        elif not operand and _OR.match(text, i) and not (text[i + 2] in "-_0123456789" or text[i + 2].isalpha()):
            yield "or", "or"
            i, operand = i + 2, True
        elif text[i] == "-" and operand:
            yield "not", "-"
            i += 1
        elif text[i] == '"':
            end = text.find('"', i + 1)
            end = n if end < 0 else end
            yield "val", text[i + 1:end]
            i, operand = end + 1, False
        else:
            operand = True  # after an operand: an implicit AND, then this character starts the next one
            if text[i] != "-":
                m = _VALUE.match(text, i)
                yield "val", m.group()
                i, operand = m.end(), False


def fts_query(text: str) -> str | None:
    """Web-search syntax -> a safe FTS5 expression; None if nothing searchable remains.

    Read as ``websearch_to_tsquery`` reads it (``_lex``): NOT binds tightest, then the implicit AND, then
    OR. A word or phrase is the phrase of its words less the stop words at either end (``fox:A`` is fox,
    ``"the fox"`` is fox, ``state-of-the-art`` keeps its "of the"); one of stop words only, or of no word
    (``<->``'s ``>``), takes the NOTs before it with it. ``--fox`` is NOT NOT fox: fox, which alone does not
    count as a word looked for (PgKbStore's ``_looked_for`` drops an alternative that starts with a NOT).
    """
    nfd = unicodedata.normalize("NFD", text)
    if _MARKS.search(nfd):  # "oŕ" is the word "or" to PgKbStore, which reads the query _unmarked
        text = unicodedata.normalize("NFC", _MARKS.sub("", nfd))
    # OR-separated [positives, negatives, looks]: ``looks`` once a positive is not a double negation
    groups: list[tuple[list[str], list[str], list[bool]]] = [([], [], [False])]
    pending = 0  # NOTs read before this operand
    for kind, value in _lex(text):
        if kind == "not":
            pending += 1
            continue
        if kind == "or":
            if groups[-1][0] or groups[-1][1]:
                groups.append(([], [], [False]))
            continue
        terms = _WORD.findall(value.lower())
        while terms and terms[0] in _STOP:
            terms.pop(0)
        while terms and terms[-1] in _STOP:
            terms.pop()
        nots, pending = pending, 0
        if not terms:
            continue  # a stop word, or no word at all, takes the NOTs before it with it ("apple - the" is apple)
        positives, negatives, looks = groups[-1]
        if nots % 2:
            negatives.append(_phrase(terms))
        else:
            positives.append(_phrase(terms))
            looks[0] = looks[0] or nots == 0
    exprs: list[str] = []
    for positives, negatives, looks in groups:
        if not looks[0]:
            continue  # exclusions only: looks for nothing (kb_port), as PgKbStore's _looked_for drops it
        expr = " AND ".join(positives)
        if negatives:
            expr = f"({expr}) NOT ({' OR '.join(negatives)})"
        exprs.append(f"({expr})")
    return " OR ".join(exprs) if exprs else None


def _fts_table(tenant_id: str) -> str:
    return "kb_fts_" + hashlib.sha256(tenant_id.encode("utf-8")).hexdigest()[:24]


_USAGE = "SELECT docs, bytes FROM kb_usage WHERE tenant_id = ?"
# the same sum as kb_port.doc_bytes and the kb_usage triggers
_BYTES = ("length(CAST(body AS BLOB)) + coalesce(length(CAST(title AS BLOB)), 0)"
          " + coalesce(length(CAST(source AS BLOB)), 0)")


def _usage(row: sqlite3.Row | None) -> KbUsage:
    return KbUsage(int(row["docs"]), int(row["bytes"])) if row else KbUsage(0, 0)


class SqliteKbStore:
    def __init__(self, db: SqliteDB, quota: KbQuota | None = None) -> None:
        self._db = db
        self._quota = quota or KbQuota()
        self._ready: set[str] = set()

    def _ensure_index(self, conn: sqlite3.Connection, table: str) -> None:
        """Create the tenant's index inside the caller's transaction (remembered only after it commits)."""
        if table not in self._ready:
            conn.execute(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {table} USING fts5("
                f"title, body, content='kb_docs', content_rowid='id', tokenize='{_TOKENIZER}')"
            )

    def _index_exists(self, table: str) -> bool:
        if table in self._ready:
            return True
        found = self._db.query_one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
        if found:
            self._ready.add(table)
        return found is not None

    async def add(
        self, tenant_id: str, text: str, *, title: str | None = None, source: str | None = None,
        doc_id: str | None = None,
    ) -> str:
        text, title, source = normalize_doc(text, title, source)
        doc_id = check_doc(text, title, source, doc_id)
        size = doc_bytes(text, title, source)
        table = _fts_table(tenant_id)
        now = time.time()
        try:
            with self._db.tx() as c:
                old = c.execute(
                    f"SELECT id, title, body, {_BYTES} AS size FROM kb_docs WHERE tenant_id = ? AND doc_id = ?",
                    (tenant_id, doc_id),
                ).fetchone()
                self._quota.check(_usage(c.execute(_USAGE, (tenant_id,)).fetchone()),
                                  None if old is None else int(old["size"]), size)
                self._ensure_index(c, table)
                if old is not None:
                    c.execute(
                        f"INSERT INTO {table} ({table}, rowid, title, body) VALUES ('delete', ?, ?, ?)",
                        (old["id"], old["title"], old["body"]),
                    )
                    c.execute(
                        "UPDATE kb_docs SET title = ?, source = ?, body = ?, updated_at = ? WHERE id = ?",
                        (title, source, text, now, old["id"]),
                    )
                    rowid = old["id"]
                else:
                    rowid = c.execute(
                        "INSERT INTO kb_docs (tenant_id, doc_id, title, source, body, created_at, updated_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (tenant_id, doc_id, title, source, text, now, now),
                    ).lastrowid
                c.execute(f"INSERT INTO {table} (rowid, title, body) VALUES (?, ?, ?)", (rowid, title, text))
        except sqlite3.IntegrityError as exc:
            raise integrity_error(exc) from None
        self._ready.add(table)
        return doc_id

    async def search(self, tenant_id: str, query: str, *, limit: int = 5) -> list[KbHit]:
        check_search(query, limit)
        expr = fts_query(nfc_query(query))
        table = _fts_table(tenant_id)
        if expr is None or not self._index_exists(table):
            return []
        rows = self._db.query(
            f"SELECT d.doc_id, d.title, d.source,"
            f" snippet({table}, 1, '{SNIPPET_MARK}', '{SNIPPET_MARK}', '…', 24) AS snip,"
            f" bm25({table}, 2.0, 1.0) AS rank"
            f" FROM {table} JOIN kb_docs d ON d.id = {table}.rowid"
            f" WHERE {table} MATCH ? AND d.tenant_id = ?"
            f" ORDER BY rank, d.doc_id LIMIT ?",
            (expr, tenant_id, limit),
        )
        # bm25 is "lower is better" and negative; flip it so a higher score is a better match
        return [KbHit(r["doc_id"], r["title"], r["source"], r["snip"], -float(r["rank"])) for r in rows]

    async def delete(self, tenant_id: str, doc_id: str) -> bool:
        check_doc_id(doc_id)
        table = _fts_table(tenant_id)
        with self._db.tx() as c:
            old = c.execute(
                "SELECT id, title, body FROM kb_docs WHERE tenant_id = ? AND doc_id = ?", (tenant_id, doc_id)
            ).fetchone()
            if old is None:
                return False
            self._ensure_index(c, table)
            c.execute(
                f"INSERT INTO {table} ({table}, rowid, title, body) VALUES ('delete', ?, ?, ?)",
                (old["id"], old["title"], old["body"]),
            )
            c.execute("DELETE FROM kb_docs WHERE id = ?", (old["id"],))
        self._ready.add(table)
        return True

    async def usage(self, tenant_id: str) -> KbUsage:
        return _usage(self._db.query_one(_USAGE, (tenant_id,)))
