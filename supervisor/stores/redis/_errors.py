"""Driver errors become the port's ``*.unavailable`` code; nothing else leaks out."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import RedisError

from supervisor.errors import StockadeError

__all__ = ["UNAVAILABLE_ERRORS", "unavailable"]

UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)


@contextmanager
def unavailable(code: str, what: str) -> Iterator[None]:
    try:
        yield
    except UNAVAILABLE_ERRORS as exc:
        raise StockadeError(code, f"{what}: Redis did not answer ({type(exc).__name__}).") from exc
