"""What a store outage tells a tenant: the code, never the operator's infrastructure.

``store.unavailable`` (and ``audit.unavailable``, which wraps it) carry the driver's message: the
database's address, a file path. It reached tenants in problem+json bodies, Socket.IO acks, a
tool call's error frame, idempotency replays and audit records (session 8). Tenants now get a fixed
sentence; the operator's detail goes to the server log (and the CLI, which is the operator's).
"""

from __future__ import annotations

import logging

import pytest

from supervisor.errors import StockadeError
from supervisor.stores.postgres.db import open_postgres

pytestmark = pytest.mark.timeout(60)

HIDDEN = "127.0.0.1:1"
DB = "stockade_operator_only_name"


async def real_outage(pg_url: str) -> StockadeError:
    """The error the PostgreSQL adapter raises when its database is gone (not made up here)."""
    with pytest.raises(StockadeError) as exc:
        await open_postgres(pg_url.rsplit("/", 1)[0] + f"/{DB}", migrate=False)
    assert exc.value.code == "store.unavailable" and DB in exc.value.detail
    return exc.value


async def test_the_api_shows_the_code_and_logs_the_address(node, monkeypatch, caplog, pg_url):
    outage = await real_outage(pg_url)
    tid, key = await node.tenant()

    async def get_run(*a, **k):
        raise outage

    monkeypatch.setattr(node.rt.services.runs, "get_run", get_run)
    with caplog.at_level(logging.WARNING, logger="stockade.api"):
        r = await node.client(key).get("/v1/runs/run_x")
    body = r.json()
    assert r.status_code == 503 and body["code"] == "store.unavailable" and body["retryable"] is True
    assert DB not in r.text and "PostgreSQL" not in r.text, body
    assert any(DB in rec.getMessage() for rec in caplog.records)  # the operator still learns it


@pytest.mark.parametrize("code", ["store.unavailable", "store.misconfigured", "audit.unavailable"])
def test_operator_codes_have_a_public_sentence_and_keep_their_detail(code):
    exc = StockadeError(code, f"cannot connect to PostgreSQL: OSError: {HIDDEN} refused")
    assert HIDDEN in exc.detail and HIDDEN in str(exc)  # the CLI and logs
    assert HIDDEN not in exc.public_detail and HIDDEN not in exc.to_dict()["message"]


def test_other_codes_show_their_detail():
    exc = StockadeError("policy.denied", "system files")
    assert exc.public_detail == "system files" == exc.to_dict()["message"]
