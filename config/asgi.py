"""The ASGI application uvicorn serves (``make run``, production): routed by scope type.

A request for a preview host (``<port>-<sandbox id>.<SANDBOX_PREVIEW_DOMAIN>``, an
exposed service at an origin of its own) goes to ``sandboxes.preview``, whatever its
type; otherwise ``http`` goes to Django (its views run in threads); ``websocket`` to
``sandboxes.websocket`` (the web terminal), which authenticates with the Django session
itself; ``lifespan`` lets a stopping server end the web terminal sessions it holds, each
with its ``terminal_close`` audit event, rather than leaving them unrecorded. Why not
Django Channels: docs/architecture.md, "Serving".

Django's own ASGI handler runs each synchronous middleware's hooks and the view as
separate steps, each a switch from the event loop to the request's thread and back:
about fifteen per request here, several milliseconds on a busy machine. Every one of
them runs in the same thread of that request anyway (a thread of its own per request, so
a long call holds nobody else's), so ``OneStepASGIHandler`` runs the middleware and the
view in that thread in one step: the same threads, the same order, two switches. The
event loop still reads the request, streams an asynchronous body (the service proxy's,
static files) and answers other requests meanwhile.
"""

import asyncio
import os
from typing import Any

import django
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponseBase

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


class OneStepASGIHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)  # the synchronous chain, as under WSGI

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)


django.setup(set_prefix=False)
django_application = OneStepASGIHandler()

from sandboxes import preview, websocket  # noqa: E402 - needs Django set up
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
    if scope["type"] != "lifespan" and (where := preview.target(scope)) is not None:
        await preview.application(scope, receive, send, where)  # <port>-<sandbox>.<domain>
    elif scope["type"] == "http":
        await django_application(scope, receive, send)
    elif scope["type"] == "websocket":
        await websocket.application(scope, receive, send)
    elif scope["type"] == "lifespan":
        await lifespan(receive, send)
    else:
        raise ValueError(f"unknown ASGI scope type {scope['type']!r}")
