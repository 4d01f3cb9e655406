"""The ASGI application (uvicorn; ``manage.py serve`` and production).

Django's own ASGI handler runs each synchronous middleware's hooks and the view as
separate steps, each a switch from the event loop to the request's thread and back:
about fifteen per request here, several milliseconds on a busy machine. Every one of
them runs in the same thread of that request anyway (a thread of its own per request, so
a long call holds nobody else's), so this handler runs the middleware and the view in
that thread in one step: the same threads, the same order, two switches. The event loop
still reads the request, streams an asynchronous body (the service proxy's, static
files) and answers other requests meanwhile.
"""

import os

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
application = OneStepASGIHandler()
