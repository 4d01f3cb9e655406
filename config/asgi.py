"""The ASGI application uvicorn serves (``make run``, production): routed by scope type.

``http`` goes to Django (its views run in threads); ``websocket`` to
``sandboxes.websocket`` (the web terminal), which authenticates with the Django session
itself; ``lifespan`` lets a stopping server end the web terminal sessions it holds, each
with its ``terminal_close`` audit event, rather than leaving them unrecorded. Why not
Django Channels: docs/architecture.md, "Serving".
"""

import asyncio
import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_asgi_application()  # sets Django up: imports below need it

from sandboxes import websocket  # noqa: E402
from sandboxes.services import terminal_hub  # noqa: E402


async def lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await asyncio.to_thread(terminal_hub.close_all, "the web server stopped")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await django_application(scope, receive, send)
    elif scope["type"] == "websocket":
        await websocket.application(scope, receive, send)
    elif scope["type"] == "lifespan":
        await lifespan(receive, send)
    else:
        raise ValueError(f"unknown ASGI scope type {scope['type']!r}")
