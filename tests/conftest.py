"""Shared fixtures: a fresh PostgreSQL database and Redis key prefix per test run.

PostgreSQL and Redis are real (never mocked). Set STOCKADE_TEST_DATABASE_URL /
STOCKADE_TEST_REDIS_URL to point elsewhere. With STOCKADE_REQUIRE_SERVICES=1
(``make test``, CI) an unreachable service fails the run instead of skipping.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PG_ADMIN_URL = os.environ.get("STOCKADE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("STOCKADE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE = os.environ.get("STOCKADE_REQUIRE_SERVICES") == "1"
RUN_TAG = f"{os.getpid()}_{secrets.token_hex(3)}"


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def _need(url: str, port: int, what: str) -> None:
    if not _reachable(url, port):
        msg = f"{what} is not reachable at {url}"
        if REQUIRE:
            pytest.fail(msg + " (make test starts it; see deployment/bin/ensure-services)", pytrace=False)
        pytest.skip(msg)  # only outside make test / CI


def _with_db(url: str, db: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, "/" + db, p.query, p.fragment))


async def _create_db(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_db(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


_SESSION_DB: list[str] = []  # the session database's URL, once a test asked for it


@pytest.fixture(scope="session")
def pg_url():
    """A fresh database for this test run, dropped at the end."""
    _need(PG_ADMIN_URL, 5432, "PostgreSQL")
    name = f"stockade_test_{RUN_TAG}"
    asyncio.run(_create_db(name))
    _SESSION_DB.append(_with_db(PG_ADMIN_URL, name))
    yield _SESSION_DB[0]
    _SESSION_DB.clear()
    asyncio.run(_drop_db(name))


async def _forget_signing_key(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("DELETE FROM deployment_keys WHERE name = 'receipt.signing'")
    except asyncpg.UndefinedTableError:  # not migrated yet
        pass
    finally:
        await conn.close()


@pytest.fixture(autouse=True)
def _one_deployment_per_test():
    """The session database is every test's deployment, one after the other: the receipt signing key a test's
    nodes recorded as the deployment's (supervisor/audit/signing_check.py; a rotation test moves it) is
    forgotten after it, so the next test's first node records its own (tests/e2e/harness.py gives them one)."""
    yield
    if _SESSION_DB:
        asyncio.run(_forget_signing_key(_SESSION_DB[0]))


@pytest.fixture
def fresh_pg_url():
    """A fresh, empty database for one test (migrations, RLS)."""
    _need(PG_ADMIN_URL, 5432, "PostgreSQL")
    name = f"stockade_test_{RUN_TAG}_{secrets.token_hex(3)}"
    asyncio.run(_create_db(name))
    yield _with_db(PG_ADMIN_URL, name)
    asyncio.run(_drop_db(name))


@pytest.fixture(scope="session")
def redis_url():
    _need(REDIS_URL, 6379, "Redis")
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url):
    """A fresh key prefix per test; its keys are deleted afterwards."""
    prefix = f"stockade-test:{RUN_TAG}:{secrets.token_hex(4)}:"
    yield prefix

    async def _cleanup() -> None:
        import redis.asyncio as aioredis

        r = aioredis.from_url(redis_url)
        try:
            keys = [k async for k in r.scan_iter(match=prefix + "*", count=1000)]
            if keys:
                await r.delete(*keys)
        finally:
            await r.aclose()

    asyncio.run(_cleanup())


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest):
    """Each RateLimiter adapter: in-memory, and Redis under a fresh key prefix."""
    from supervisor.stores.memory import MemoryRateLimiter
    from supervisor.stores.redis import RedisRateLimiter, open_redis

    if request.param == "memory":
        yield MemoryRateLimiter()
        return
    client = await open_redis(request.getfixturevalue("redis_url"))
    yield RedisRateLimiter(client, request.getfixturevalue("redis_prefix"))
    await client.aclose()


# What a process started in a terminal has: Python's KeyboardInterrupt handler, and the default for SIGTERM.
# Not what this process found: a test run started in the background by a non-interactive shell (`cmd &` in a
# script, as a CI job may be) inherits SIGINT *ignored*, and CPython then keeps it ignored - a Ctrl-C test saw
# no KeyboardInterrupt and the command returned 0 (the clean-clone CI failure of session 12; found in
# session 13, tests/test_signal_baseline_session13.py), and every child process would inherit the same.
_OWN_HANDLERS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}


def _put_back_own_handlers() -> None:
    for sig, handler in _OWN_HANDLERS.items():
        if signal.getsignal(sig) is not handler:
            signal.signal(sig, handler)


_put_back_own_handlers()


@pytest.fixture(autouse=True)
def _signal_handlers_kept():
    """Every test starts and ends with the process's own SIGINT/SIGTERM handlers (above). An in-process
    uvicorn server swaps them for its own while it serves and puts back what it found when it ends: one
    left running, or servers stopped out of start order, left a server's handler behind. Put back before
    and after each test, whatever the test (or a module or session fixture between two tests) did."""
    _put_back_own_handlers()
    yield
    _put_back_own_handlers()
