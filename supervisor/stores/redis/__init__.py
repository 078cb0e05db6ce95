"""Redis adapters (production): live event tail, run queue, rate limiter and velocity history.

Every adapter takes the shared client from ``open_redis`` and a key prefix;
Redis failures surface as ``store.unavailable`` / ``rate.unavailable``.
"""

from supervisor.stores.redis.client import open_redis, redact_url
from supervisor.stores.redis.event_bus import RedisEventBus
from supervisor.stores.redis.rate_limiter import RedisRateLimiter
from supervisor.stores.redis.run_queue import RedisRunQueue
from supervisor.stores.redis.velocity import RedisVelocityLog

__all__ = ["RedisEventBus", "RedisRateLimiter", "RedisRunQueue", "RedisVelocityLog", "open_redis", "redact_url"]
