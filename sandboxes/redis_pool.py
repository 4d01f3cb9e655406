"""One Redis connection pool per process for the ``throttle`` cache.

Django makes a cache object per thread, and its Redis client a connection pool per cache
object. Under ASGI every request runs in a new thread, so every request made a new pool,
and with it a new connection to Redis (and redis-py's client set-up, which reads package
metadata from disk): several milliseconds per API call and per proxied request, for one
GET or INCR. This pool class hands every cache object of the process the same pool.
"""

from __future__ import annotations

import threading
from typing import Any

import redis

_pools: dict[tuple, redis.ConnectionPool] = {}
_lock = threading.Lock()


class SharedConnectionPool(redis.ConnectionPool):
    """``from_url`` answers the process's pool for that URL and those options.

    redis-py's pools notice a fork and start afresh in the child, so a shared one is as
    safe across django-q2's forks as a private one."""

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> redis.ConnectionPool:
        key = (url, tuple(sorted((name, repr(value)) for name, value in kwargs.items())))
        pool = _pools.get(key)
        if pool is None:
            with _lock:
                pool = _pools.get(key)
                if pool is None:
                    pool = _pools[key] = super().from_url(url, **kwargs)
        return pool
