"""A circuit breaker per LLM provider: after N consecutive failures, fail fast for a cool-down.

closed --N consecutive failures--> open --cool-down elapsed--> half-open (one probe call)
half-open --probe succeeds--> closed;  --probe fails--> open again (a fresh cool-down).

Failing fast protects the run (no 2 minutes of retries against a dead upstream)
and the provider (no retry storm while it recovers). The clock is injectable so
tests move time instead of sleeping. Single event loop: no locking needed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal

from supervisor.errors import StockadeError

__all__ = ["CircuitBreaker"]

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(
        self, name: str, *, threshold: int = 5, cooldown_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if threshold < 1 or cooldown_s <= 0:
            raise ValueError("threshold >= 1 and cooldown_s > 0")
        self.name = name
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self._probing or self._clock() - self._opened_at >= self.cooldown_s:
            return "half_open"
        return "open"

    def before_call(self) -> None:
        """Raise ``llm.circuit_open`` unless a call may go out now (closed, or the one half-open probe)."""
        if self._opened_at is None:
            return
        waited = self._clock() - self._opened_at
        if waited < self.cooldown_s:
            raise self._open_error(self.cooldown_s - waited)
        if self._probing:
            raise self._open_error(1.0)  # another call is probing; its outcome decides
        self._probing = True

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self.threshold:
            self._opened_at = self._clock()
        self._probing = False

    def release(self) -> None:
        """The call ended without saying anything about the provider's health (e.g. it was cancelled)."""
        self._probing = False

    def _open_error(self, retry_after: float) -> StockadeError:
        return StockadeError(
            "llm.circuit_open",
            f"the {self.name} provider failed {self.threshold} times in a row; calls are paused, "
            f"retry in {max(1, math.ceil(retry_after))} s",
            provider=self.name,
            retry_after=round(retry_after, 3),
        )
