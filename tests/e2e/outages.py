"""Outages for tests: a private redis-server the test owns (stopped and started again on its port), and
PostgreSQL outages confined to one database (its connections cut; new ones refused for a while)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from supervisor.audit.chain import verify_chain
from tests.e2e.harness import SSE, read_sse

TERMINAL = frozenset({"run.completed", "run.failed", "run.canceled", "run.timed_out"})

__all__ = ["Follower", "PrivateRedis", "alive", "chain_verifies", "pg_outage", "runs_locked", "terminate_backends",
           "waiting_statement"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """``redis-server`` on a free port, without persistence: every start is an empty Redis."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> None:
        assert self.proc is None, "already running"
        deadline = time.monotonic() + timeout
        while True:  # the port of a server just killed may take a moment to be free again
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--daemonize", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while self.proc.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
                time.sleep(0.02)
            self.kill()
            if time.monotonic() >= deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGTERM: a clean shutdown; SIGKILL: a crash) and wait until it is gone."""
        assert self.proc is not None, "not running"
        self.proc.send_signal(sig)
        self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        """A Redis that hangs (SIGSTOP): connections stay open, nothing answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
                self.proc.kill()
            self.proc.wait(10)
            self.proc = None


def _admin_url(db_url: str) -> tuple[str, str]:
    p = urlsplit(db_url)
    return urlunsplit((p.scheme, p.netloc, "/postgres", p.query, p.fragment)), p.path.lstrip("/")


async def terminate_backends(db_url: str) -> int:
    """Cut every connection to the test's own database (what a PostgreSQL restart does to them)."""
    admin_url, name = _admin_url(db_url)
    admin = await asyncpg.connect(admin_url)
    try:
        return await admin.fetchval("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                    " WHERE datname = $1 AND pid <> pg_backend_pid()", name)
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def pg_outage(db_url: str) -> AsyncIterator[None]:
    """The test's own database refuses new connections and its connections are cut, until the block ends."""
    admin_url, name = _admin_url(db_url)
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        for _ in range(500):  # termination is asynchronous: until the server has no backend left there
            if not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", name):
                break
            await asyncio.sleep(0.02)
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


class Follower:
    """One SSE client reading a run's stream to its end, noting every event as it comes. ``resume``: a
    stream closed before the run's end (or refused, the store away) is opened again with Last-Event-ID,
    as an EventSource does; ``resumed`` counts the times."""

    def __init__(self, client, run_id: str, *, resume: bool = False) -> None:
        self.events: list[SSE] = []
        self.resumed = 0
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._read(client, run_id, resume))

    async def _read(self, client, run_id: str, resume: bool) -> None:
        try:
            while True:
                headers = {"Last-Event-ID": str(self.events[-1].id)} if self.events else {}
                try:
                    async for e in read_sse(client, f"/v1/runs/{run_id}/events", headers=headers):
                        self.events.append(e)
                        self._changed.set()
                except (httpx.HTTPError, AssertionError):  # cut, or refused (503: the store away)
                    if not resume:
                        raise
                if not resume or (self.events and self.events[-1].event in TERMINAL):
                    return
                self.resumed += 1
                await asyncio.sleep(0.2)  # an EventSource's retry delay
        finally:
            self._changed.set()

    async def until(self, pred, within: float = 30.0) -> SSE:
        """The first event matching ``pred`` (waits for it)."""
        async with asyncio.timeout(within):
            while True:
                for e in self.events:
                    if pred(e):
                        return e
                if self.task.done():
                    self.task.result()
                    raise AssertionError(f"the stream ended without it: {[e.event for e in self.events]}")
                self._changed.clear()
                await self._changed.wait()

    async def end(self, within: float = 60.0) -> list[SSE]:
        await asyncio.wait_for(self.task, within)
        return self.events


async def chain_verifies(node, tid: str) -> None:
    records, after = [], 0
    while page := await node.rt.services.audit.list(tid, after_seq=after, limit=500):
        records += page
        after = page[-1].seq
    assert records and verify_chain(tid, records, node.rt.sealer) is None, verify_chain(tid, records, node.rt.sealer)


async def alive(node) -> None:
    """No background task of the node died on the way."""
    for t in node.rt.tasks:
        assert not t.done(), t


async def waiting_statement(admin, name: str, text: str, within: float = 20.0) -> int:
    """The pid of the node's backend blocked on a lock while running a statement containing ``text``."""
    async with asyncio.timeout(within):
        while True:
            pid = await admin.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'"
                " AND position($2 in query) > 0 LIMIT 1", name, text)
            if pid is not None:
                return pid
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def runs_locked(db_url: str) -> AsyncIterator[tuple[Any, str]]:
    """The runs table locked (as a long migration or an operator's maintenance does), and an admin
    connection to find and cancel the node's statements waiting on it (pg_cancel_backend)."""
    name = db_url.rsplit("/", 1)[1]
    locker = await asyncpg.connect(db_url)
    admin = await asyncpg.connect(db_url.rsplit("/", 1)[0] + "/postgres")
    tx = locker.transaction()
    try:
        await tx.start()
        await locker.execute("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
        yield admin, name
    finally:
        with contextlib.suppress(Exception):
            await tx.rollback()
        await locker.close()
        await admin.close()
