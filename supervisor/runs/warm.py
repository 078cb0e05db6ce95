"""A warm pool of sandboxes: launched ahead, Python and the SDK already imported, used once.

Cold start is dominated here by ``import asyncio`` inside the jail (~35-45 ms on
this machine, FACTS.md measures bwrap + ``python -I -S`` at 12-13 ms). A warm
slot is a sandbox launched with the default limits and its own pool uid; its
runtime connects to the slot's socket at once, the supervisor verifies the peer
(SO_PEERCRED/pidfd/ancestry, as for any run) and parks the connection after
``hello``. Nothing run-specific exists in the slot until a run takes it: then
the bundle's files are copied into the slot's ``/bundle`` (read-only inside)
and ``welcome`` tells the runtime which run it is. A slot serves exactly one run
and is never returned to the pool; no secret or state is shared between runs.

Runs whose bundle narrows the limits start cold (a live sandbox's limits cannot
be narrowed from outside reliably).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.errors import SandboxError
from sandbox.launcher import launch
from supervisor.errors import StockadeError
from supervisor.ids import new_id
from supervisor.peer import verify_peer
from supervisor.runs.sandboxing import RunDirs, build_spec, limits_for, listen_run_socket, make_run_dirs
from supervisor.wire import HEADER, decode_body

__all__ = ["WarmPool", "WarmSlot", "copy_bundle"]

log = logging.getLogger("stockade.warm")
IDLE_MAX_S = 300.0  # a slot idle longer than this is replaced (its wall-clock backstop keeps running)
REFILL_DELAY_S = 0.05  # launching forks the supervisor (~5-15 ms of a blocked loop): not while a run is starting
CONNECT_TIMEOUT_S = 10.0


@dataclass
class WarmSlot:
    proc: Any
    dirs: RunDirs
    bundle_dir: Path
    uid: int | None
    gid: int | None
    server: asyncio.AbstractServer
    created: float
    conn: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def discard(self) -> None:
        self.proc.kill()
        self.server.close()
        if self.conn.done() and not self.conn.cancelled() and self.conn.exception() is None:
            reader, writer, peer = self.conn.result()
            writer.close()
            peer.close()
        self.dirs.remove()


class WarmPool:
    def __init__(self, settings: Any, uid_pool: Any) -> None:
        self.settings = settings
        self.uid_pool = uid_pool
        self.size = settings.sandbox_warm_pool
        self._ready: list[WarmSlot] = []
        self._filling = 0
        self._closed = False
        self._tasks: set[asyncio.Task] = set()
        self.default_limits, _ = limits_for(settings, None)

    def eligible(self, manifest_limits: dict[str, Any] | None) -> bool:
        limits, _ = limits_for(self.settings, manifest_limits)
        return self.size > 0 and _same(limits, self.default_limits)

    def start(self) -> None:
        self._refill()
        self._spawn(self._recycle())

    def take(self) -> WarmSlot | None:
        now = time.monotonic()
        while self._ready:
            slot = self._ready.pop(0)
            if not slot.proc.exited and now - slot.created < IDLE_MAX_S:
                asyncio.get_running_loop().call_later(REFILL_DELAY_S, self._refill)
                return slot
            self.release(slot)
        self._refill()
        return None

    def _refill(self) -> None:
        while not self._closed and len(self._ready) + self._filling < self.size:
            self._filling += 1
            self._spawn(self._make())

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _make(self) -> None:
        slot = None
        try:
            slot = await self._launch()
            await asyncio.wait_for(asyncio.shield(slot.conn), CONNECT_TIMEOUT_S)
            if self._closed:
                slot.discard()
            else:
                self._ready.append(slot)
        except (StockadeError, SandboxError, OSError, TimeoutError) as exc:
            log.warning("warm sandbox could not be prepared: %s", exc)
            if slot is not None:
                slot.discard()
            await asyncio.sleep(1.0)  # do not spin on a broken backend; the next take() refills
        except asyncio.CancelledError:  # the pool is closing while this slot starts: it goes too
            if slot is not None and slot not in self._ready:
                slot.discard()
            raise
        finally:
            self._filling -= 1

    async def _launch(self) -> WarmSlot:
        s = self.settings
        uid = self.uid_pool.acquire() if self.uid_pool is not None else None
        gid = uid
        dirs = make_run_dirs(s, "_warm_" + new_id("w"), uid, gid, held=True)  # swept if this process dies
        bundle_dir = dirs.root / "bundle"
        bundle_dir.mkdir(mode=0o755)
        box: dict[str, Any] = {}
        launched = asyncio.Event()
        conn: asyncio.Future = asyncio.get_running_loop().create_future()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await launched.wait()
            peer = None
            try:
                peer = verify_peer(writer.get_extra_info("socket"), expected_uid=uid, sandbox_pid=box["proc"].pid)
                if conn.done():
                    raise StockadeError("peer.rejected", "the slot already has a connection")
                head = await asyncio.wait_for(reader.readexactly(HEADER.size), CONNECT_TIMEOUT_S)
                (size,) = HEADER.unpack(head)
                if size > 1024:
                    raise StockadeError("frame.too_large", "hello too large")
                hello = decode_body(await reader.readexactly(size))
                if hello.get("type") != "hello":
                    raise StockadeError("frame.invalid", "the first frame must be hello")
            except Exception as exc:  # a warm slot that misbehaves before any run is just discarded
                log.warning("warm sandbox refused: %s", exc)
                if peer is not None:
                    peer.close()
                writer.close()
                if not conn.done():
                    conn.set_exception(StockadeError("peer.rejected", "warm sandbox handshake failed"))
                return
            conn.set_result((reader, writer, peer))

        server = None
        limits = _with_wall(self.default_limits, s.run_timeout_max_s + IDLE_MAX_S + 5.0)
        try:  # a cancel (the node stopping) anywhere from here leaves no folder behind either
            server = await listen_run_socket(on_connect, dirs, s, uid, gid)
            spec = build_spec(s, dirs, bundle_dir, {}, limits, uid, gid)
            proc = await launch(spec, bwrap=s.sandbox_bwrap)
        except BaseException:
            if server is not None:
                server.close()
            dirs.remove()
            if uid is not None and self.uid_pool is not None:
                self.uid_pool.release(uid)
            raise
        box["proc"] = proc
        launched.set()
        return WarmSlot(proc=proc, dirs=dirs, bundle_dir=bundle_dir, uid=uid, gid=gid, server=server,
                        created=time.monotonic(), conn=conn)

    async def _recycle(self) -> None:
        while not self._closed:
            await asyncio.sleep(IDLE_MAX_S / 4)
            now = time.monotonic()
            for slot in list(self._ready):
                if slot.proc.exited or now - slot.created >= IDLE_MAX_S:
                    self._ready.remove(slot)
                    self.release(slot)
            self._refill()

    def release(self, slot: WarmSlot) -> None:
        slot.discard()
        if slot.uid is not None and self.uid_pool is not None:
            self.uid_pool.release(slot.uid)

    async def close(self) -> None:
        self._closed = True
        for t in list(self._tasks):
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for slot in self._ready:
            self.release(slot)
        self._ready.clear()


def copy_bundle(src: Path, dest: Path) -> None:
    """The run's bundle into the slot (read-only inside the jail: the bind is ro, files 0444)."""
    shutil.copytree(src, dest, dirs_exist_ok=True)
    for p in [dest, *dest.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o444)


def _same(a: Any, b: Any) -> bool:
    fields = ("memory_mb", "max_procs", "max_open_files", "max_file_mb", "cpu_s", "workdir_mb", "tmpfs_mb",
              "max_output_bytes")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


def _with_wall(limits: Any, wall_s: float) -> Any:
    import dataclasses

    return dataclasses.replace(limits, wall_s=wall_s)
