"""In-memory adapters for one process (the embedded default): event tail, run queue, rate limiter."""

from supervisor.stores.memory.event_bus import MemoryEventBus
from supervisor.stores.memory.rate_limiter import MemoryRateLimiter
from supervisor.stores.memory.run_queue import MemoryRunQueue

__all__ = ["MemoryEventBus", "MemoryRateLimiter", "MemoryRunQueue"]
