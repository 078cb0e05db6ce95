"""PostgreSQL KbStore: generated tsvector + GIN, ``websearch_to_tsquery``, ``ts_rank``, ``ts_headline``.

Every statement runs in ``tenant_tx`` (row-level security on ``kb_docs``) and
filters by ``tenant_id`` as well. ``websearch_to_tsquery`` never raises on
user text (unlike ``to_tsquery``), so the query is passed through as data.
``ts_headline`` is costly (it re-parses the document), so it runs only on the
``limit`` best rows.
"""

from __future__ import annotations

import time

from supervisor.stores.kb_port import SNIPPET_MARK, KbHit, check_doc, check_search
from supervisor.stores.postgres._rows import CONSTRAINT_ERRORS, constraint_error
from supervisor.stores.postgres.db import PgDB

__all__ = ["PgKbStore"]

_HEADLINE_OPTS = (
    f'StartSel="{SNIPPET_MARK}", StopSel="{SNIPPET_MARK}", MaxWords=35, MinWords=15, '
    'MaxFragments=2, FragmentDelimiter=" … "'
)

_SEARCH = f"""
WITH q AS (SELECT websearch_to_tsquery('english'::regconfig, $2) AS query),
top AS (
    SELECT d.doc_id, d.title, d.source, d.body, ts_rank(d.tsv, q.query) AS score
    FROM kb_docs d, q
    WHERE d.tenant_id = $1 AND d.tsv @@ q.query
    ORDER BY score DESC, d.doc_id
    LIMIT $3
)
SELECT top.doc_id, top.title, top.source, top.score,
       ts_headline('english'::regconfig, top.body, q.query, '{_HEADLINE_OPTS}') AS snippet
FROM top, q
ORDER BY top.score DESC, top.doc_id
"""


class PgKbStore:
    def __init__(self, db: PgDB) -> None:
        self._db = db

    async def add(
        self, tenant_id: str, text: str, *, title: str | None = None, source: str | None = None,
        doc_id: str | None = None,
    ) -> str:
        doc_id = check_doc(text, title, source, doc_id)
        now = time.time()
        async with self._db.tenant_tx(tenant_id) as c:
            try:
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
            rows = await c.fetch(_SEARCH, tenant_id, query, limit)
        return [KbHit(r["doc_id"], r["title"], r["source"], r["snippet"], float(r["score"])) for r in rows]

    async def delete(self, tenant_id: str, doc_id: str) -> bool:
        async with self._db.tenant_tx(tenant_id) as c:
            status = await c.execute("DELETE FROM kb_docs WHERE tenant_id = $1 AND doc_id = $2", tenant_id, doc_id)
        return status.endswith(" 1")
