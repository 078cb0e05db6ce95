"""One live worker per worker id: a claim in Redis, held while the worker runs.

A worker's id names it in the run queue (its consumer in the group) and in the store (``runs.worker_id``):
the fence (``RunStore.hold``) and the lost-run watch tell workers apart by it alone. Two live workers with one
id (``docker compose up --scale worker=3`` with ``STOCKADE_WORKER_ID`` set in the service) were one worker to
both: either could extend the other's queue lease and hold the other's run. So each worker claims its id:

- ``SET {prefix}worker-id:{id} "{token} {host}:{pid}" NX PX ttl``, renewed every ttl/3 while the worker
  runs, deleted on a clean stop (only while it is still this worker's: compare and delete, one script);
- an id another worker holds: this one runs as ``{id}~2`` (or ``~3``, ...: the first one free) and says so
  in a warning, so a scaled service still runs every replica, each under an id of its own;
- an id held under this very ``host:pid`` by no live claim of this process (a container restarted after a
  crash keeps its hostname and pid 1): that holder is gone, since no other process has this pid on this
  host, and the id is taken over at once rather than waiting out the dead holder's ttl;
- a claim found lost while renewing (this worker froze past the ttl): taken again if free; held by another
  worker meanwhile, this worker logs an error, since the two now share the id, and keeps trying.

The ttl is one queue visibility timeout: a crashed worker's id is free again when its jobs are. Only an id
set in ``STOCKADE_WORKER_ID`` is claimed: the default, ``hostname:pid``, is one process's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from typing import Any

import redis.asyncio as aioredis

from supervisor.errors import StockadeError
from supervisor.stores.redis._errors import UNAVAILABLE_ERRORS, unavailable

__all__ = ["MAX_SUFFIX", "WorkerIdClaim", "claim_worker_id", "process_worker_id"]

log = logging.getLogger("stockade.worker")

MAX_SUFFIX = 64  # ~2 .. ~64: more live workers on one id than that is a misconfiguration, not a fleet

# KEYS[1] the id's key; ARGV[1] the value read (a gone holder's), ARGV[2] ours, ARGV[3] ttl ms
_TAKE_OVER = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""

# KEYS[1]; ARGV[1] ours, ARGV[2] ttl ms -> 1 renewed, 2 taken again (it had expired), 0 another worker's
_RENEW = r"""
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"""

_RELEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_WHAT = "The worker id claim is unavailable"
_LIVE: set[str] = set()  # the claims this process holds: one under its own host:pid is no dead predecessor's


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _holder(value: Any) -> str:
    return _text(value).partition(" ")[2]


class WorkerIdClaim:
    """This worker's claim on ``worker_id`` (a ``~n`` suffix added where the id asked for was taken)."""

    def __init__(self, client: aioredis.Redis, prefix: str, worker_id: str, value: str, ttl_s: float) -> None:
        self._client = client
        self._key = f"{prefix}worker-id:{worker_id}"
        self.worker_id = worker_id
        self._value = value
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._task: asyncio.Task[None] | None = None
        self._shared = False  # another worker holds the id now (told once)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keep())

    async def _keep(self) -> None:
        every = self._ttl_ms / 3000
        while True:
            await asyncio.sleep(every)
            await self.renew()

    async def renew(self) -> None:
        try:
            got = await self._renew(keys=[self._key], args=[self._value, self._ttl_ms])
        except UNAVAILABLE_ERRORS as exc:  # Redis away: the queue stalls too; tried again next time
            log.debug("worker id claim not renewed: %s", exc)
            return
        if got == 0 and not self._shared:
            self._shared = True
            try:
                other = _holder(await self._client.get(self._key))
            except UNAVAILABLE_ERRORS:
                other = "another worker"
            log.error("worker id %s was claimed by another worker (%s) while this one did not renew its claim "
                      "(stalled past %.0f s): two live workers now share the id; restart one of them",
                      self.worker_id, other, self._ttl_ms / 1000)
        elif got in (1, 2):
            self._shared = False

    async def release(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        _LIVE.discard(self._value)
        with contextlib.suppress(*UNAVAILABLE_ERRORS):  # unreleased: it lapses after one ttl
            await self._release(keys=[self._key], args=[self._value])


def process_worker_id() -> str:
    """The id of a worker given none (``STOCKADE_WORKER_ID`` unset): this process, as ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


async def claim_worker_id(client: aioredis.Redis, prefix: str, wanted: str, ttl_s: float, *,
                          me: str | None = None) -> WorkerIdClaim:
    """Claim ``wanted`` (or the first free ``wanted~n``) and keep it renewed. ``me``: this process as
    ``host:pid`` (tests name another). Raises ``settings.invalid`` when ``MAX_SUFFIX`` ids are all held,
    ``store.unavailable`` when Redis does not answer."""
    me = me or process_worker_id()
    value = f"{secrets.token_hex(8)} {me}"
    ttl_ms = max(1, int(ttl_s * 1000))
    take_over = client.register_script(_TAKE_OVER)
    first_holder = None
    _LIVE.add(value)  # before the first SET: a node of this process claiming at the same instant sees it live
    try:
        with unavailable("store.unavailable", _WHAT):
            for n in range(1, MAX_SUFFIX + 1):
                wid = wanted if n == 1 else f"{wanted}~{n}"
                key = f"{prefix}worker-id:{wid}"
                if await client.set(key, value, nx=True, px=ttl_ms):
                    break
                held = await client.get(key)
                if (held is not None and _holder(held) == me and _text(held) not in _LIVE
                        and await take_over(keys=[key], args=[held, value, ttl_ms])):
                    break  # held under this host:pid: by this process's dead predecessor
                if n == 1:
                    first_holder = _holder(held) if held is not None else "a worker"
            else:
                raise StockadeError("settings.invalid", f"worker id {wanted!r} and {wanted}~2 .. ~{MAX_SUFFIX} are all "
                                    "held by live workers: give each worker its own STOCKADE_WORKER_ID (or leave it "
                                    "unset: hostname:pid)")
    except BaseException:
        _LIVE.discard(value)
        raise
    if wid != wanted:
        log.warning("worker id %s is held by another worker (%s; a live one, or one gone less than %.0f s ago): this "
                    "worker runs as %s. Give each worker its own STOCKADE_WORKER_ID (or leave it unset)",
                    wanted, first_holder, ttl_s, wid)
    claim = WorkerIdClaim(client, prefix, wid, value, ttl_s)
    claim.start()
    return claim
