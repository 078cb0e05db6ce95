"""How long the event loop stood still while a test's code ran (the 'freezes every tenant' attacks)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass
class Stall:
    longest: float = 0.0  # the longest gap between two ticks of a 10 ms ticker (s)
    took: float = 0.0  # how long the body ran (s)


@asynccontextmanager
async def watch_loop(period_s: float = 0.01) -> AsyncIterator[Stall]:
    """``async with watch_loop() as stall: ...``; afterwards ``stall.longest`` and ``stall.took``."""
    stall, stop = Stall(), asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(period_s)
            now = time.perf_counter()
            stall.longest = max(stall.longest, now - last)
            last = now

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(2 * period_s)  # the ticker is running before the body starts
    t0 = time.perf_counter()
    try:
        yield stall
    finally:
        stall.took = time.perf_counter() - t0
        stop.set()
        await tick
