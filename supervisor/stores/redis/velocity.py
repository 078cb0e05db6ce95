"""Per-user call history for the policy's ``velocity: {scope: user}`` rules, shared by every node.

A user's runs are served by any worker; with each worker counting only the calls it saw, "at most 5
calls of send_email per hour per user" let 5 through per worker. Here the history of one (tenant,
principal, tool) is a Redis list of call times (newest first, at most ``MAX_VELOCITY`` of them) plus a
version counter. ``read`` returns the version and the calls' ages (by the Redis server's clock, so
nodes with skewed clocks share one timeline); ``record`` adds the call only if the version is still
the one read - if another node recorded a call meanwhile, it returns False and the caller judges the
call again with the new history (optimistic: no lock is held across the decision, none can leak).
Both keys expire after the longest window a policy may name. Any Redis failure is
``policy.unavailable``: the policy step fails closed.
"""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from supervisor.policy.schema import MAX_VELOCITY, MAX_WINDOW_S
from supervisor.stores.redis._errors import unavailable

__all__ = ["RedisVelocityLog"]

# KEYS: list, version. ARGV: how many. -> {version, server time in us, [times in us, newest first]}
# (times are kept as strings: Lua 5.1 numbers would print a 16-digit microsecond count as 1.7e+15)
_READ = """
local t = redis.call('TIME')
local now = t[1] .. string.rep('0', 6 - #t[2]) .. t[2]
return {redis.call('GET', KEYS[2]) or '0', now, redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)}
"""
# KEYS: list, version. ARGV: the version read, how many to keep, ttl in ms. -> 1 recorded, 0 changed since
_RECORD = """
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
redis.call('LPUSH', KEYS[1], t[1] .. string.rep('0', 6 - #t[2]) .. t[2])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""
_TTL_MS = str(int((MAX_WINDOW_S + 60) * 1000))
_WHAT = "The shared call history of velocity rules is unavailable; the call was not run"


class RedisVelocityLog:
    def __init__(self, client: aioredis.Redis, prefix: str = "stockade:") -> None:
        self._prefix = prefix
        self._read = client.register_script(_READ)
        self._record = client.register_script(_RECORD)

    def _keys(self, tenant_id: str, principal: str, tool: str) -> list[str]:
        # JSON: a principal is free text (a user id), so plain joining could make two histories one key
        name = json.dumps([tenant_id, principal, tool], ensure_ascii=False, separators=(",", ":"))
        return [f"{self._prefix}vel:l:{name}", f"{self._prefix}vel:v:{name}"]

    async def read(self, tenant_id: str, principal: str, tool: str) -> tuple[str, list[float]]:
        """(version, ages in seconds of the recorded calls, oldest first)."""
        with unavailable("policy.unavailable", _WHAT):
            version, now, times = await self._read(keys=self._keys(tenant_id, principal, tool), args=[MAX_VELOCITY])
        now_us = int(now)
        return _text(version), [max(0.0, (now_us - int(t)) / 1e6) for t in reversed(times)]

    async def record(self, tenant_id: str, principal: str, tool: str, version: str) -> bool:
        """Add a call now, unless a call was recorded since ``read`` returned ``version``."""
        with unavailable("policy.unavailable", _WHAT):
            done = await self._record(keys=self._keys(tenant_id, principal, tool), args=[version, MAX_VELOCITY, _TTL_MS])
        return int(done) == 1


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
