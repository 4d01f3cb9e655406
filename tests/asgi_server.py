"""The site's ASGI application (``config.asgi``) under a real uvicorn, in a thread of the
test process, on a loopback port: websockets included, which pytest-django's
``live_server`` (WSGI) cannot serve. In-process, so the test database and the in-memory
provider are shared with the test, as with ``live_server``.

Static files are served from the apps' and ``static/`` folders as under ``runserver``
(Django's ``ASGIStaticFilesHandler``), so pages work without ``collectstatic``.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler


class AsgiServer:
    def __init__(self) -> None:
        from config.asgi import application

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        from sandboxes import preview

        static = ASGIStaticFilesHandler(application)

        async def app(scope, receive, send) -> None:
            # Preview hosts are the sandboxes' own origins: their /static/ is theirs.
            if scope["type"] != "lifespan" and preview.target(scope) is not None:
                await application(scope, receive, send)
            else:
                await static(scope, receive, send)

        config = uvicorn.Config(
            app,
            lifespan="on",  # its shutdown ends the web terminal sessions, as in production
            log_level="warning",
            ws="auto",  # as `make run` and production
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True
        )

    def start(self) -> None:
        self.thread.start()
        while not self.server.started:  # set once it listens (or the thread died)
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            self.thread.join(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.socket.close()


@contextmanager
def asgi_server() -> Iterator[AsgiServer]:
    server = AsgiServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
