"""Opening the shared Redis client, tuned to fail fast.

An outage must refuse calls within about the socket timeout, not hang them:
short connect/read timeouts, and a single immediate retry on a broken
connection (a pooled socket that died when Redis restarted) instead of
redis-py's default three retries with exponential back-off. Timeouts are not
retried: a Redis that does not answer is treated as down.

Blocking reads (XREAD / XREADGROUP ``BLOCK``) must stay under the socket
timeout; the adapters derive their block time from it (``block_ms``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from supervisor.errors import StockadeError

__all__ = ["block_ms", "open_redis", "redact_url"]


def redact_url(url: str) -> str:
    """The URL without its password, safe for logs and error messages.

    Only scheme, user, host, port and path are kept: redis-py also takes the password from the query
    (``?password=...``), and a password with an unescaped ``#`` or ``?`` ends up in the query or fragment.
    """
    p = urlsplit(url)
    host = p.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{p.port}" if p.port else ""
    except ValueError:
        port = ""
    user = f"{p.username or ''}:***@" if p.password is not None else (f"{p.username}@" if p.username else "")
    return f"{p.scheme}://{user}{host}{port}{p.path}"


async def open_redis(url: str, *, timeout_s: float = 1.5, ping: bool = True) -> aioredis.Redis:
    """A pooled asyncio client (``decode_responses=True``).

    With ``ping`` an unreachable server raises ``StockadeError('store.unavailable')``
    at once; without it the first command does.
    """
    client = aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        health_check_interval=30,
    )
    if ping:
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise StockadeError("store.unavailable", f"Redis is not reachable at {redact_url(url)}: {exc}") from None
    return client


def block_ms(client: aioredis.Redis, ceiling_ms: int = 1000) -> int:
    """How long one blocking read may wait: well under the client's socket timeout."""
    timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
    if timeout is None:
        return ceiling_ms
    return max(10, min(ceiling_ms, int(timeout * 1000 * 0.6)))
