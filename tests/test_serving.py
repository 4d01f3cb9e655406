"""What every request pays under ASGI, kept small: the one-step handler (config/asgi.py)
and the process-wide Redis pool of the ``throttle`` cache (sandboxes/redis_pool.py)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from django.core.cache.backends.redis import RedisCache

from config.asgi import OneStepASGIHandler, application, django_application
from sandboxes.redis_pool import SharedConnectionPool

pytestmark = pytest.mark.django_db(transaction=True)


def asgi_get(path: str) -> tuple[int, dict[bytes, bytes], bytes]:
    """GET ``path`` from the project's ASGI application, in-process."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    sent: list[dict] = []

    async def run() -> None:
        messages = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive() -> dict:
            if messages:
                return messages.pop()
            await asyncio.sleep(60)
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        await application(scope, receive, send)

    # In a thread of its own: the browser tests leave Playwright's event loop running in
    # the main thread, where asyncio.run() is then refused.
    thread = threading.Thread(target=asyncio.run, args=(run(),))
    thread.start()
    thread.join(60)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    headers = {name.lower(): value for name, value in start["headers"]}
    return start["status"], headers, body


def test_the_asgi_application_runs_the_whole_middleware_chain_and_the_view():
    assert isinstance(django_application, OneStepASGIHandler)  # what `application` routes http to
    status, headers, body = asgi_get("/login/")
    assert status == 200
    assert headers[b"x-frame-options"] == b"DENY"  # the last middleware's answer
    assert b"csrfmiddlewaretoken" in body  # the CSRF middleware ran before the view
    status, headers, _ = asgi_get("/api/v1/no-such-thing")
    assert status == 404
    assert headers[b"content-type"] == b"application/json"


def test_the_throttle_caches_of_every_thread_share_one_redis_pool():
    """Django makes a cache object per thread (per request under ASGI): with the shared
    pool class they all use one pool, instead of one new connection each."""
    options = {"OPTIONS": {"pool_class": "sandboxes.redis_pool.SharedConnectionPool"}}
    pools = []

    def pool_of_a_new_cache() -> None:
        cache = RedisCache("redis://127.0.0.1:6379/13", options)
        pools.append(cache._cache._get_connection_pool(write=True))

    threads = [threading.Thread(target=pool_of_a_new_cache) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(pools) == 3
    assert pools[0] is pools[1] is pools[2]
    assert isinstance(pools[0], SharedConnectionPool)
    other = SharedConnectionPool.from_url("redis://127.0.0.1:6379/14")
    assert other is not pools[0]  # another server or database, another pool
