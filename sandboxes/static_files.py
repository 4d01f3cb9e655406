"""WhiteNoise for static files, passing a file to an ASGI server as it is read.

Under ASGI Django reads a synchronous response body whole (in a thread) before sending
it, and warns each time; WhiteNoise's file responses are synchronous. Here the file is
read in the request's own thread, 256 KiB per step, and sent as it comes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponseBase
from whitenoise.middleware import WhiteNoiseMiddleware

BLOCK = 256 * 1024


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    @staticmethod
    def serve(static_file, request: HttpRequest) -> HttpResponseBase:
        response = WhiteNoiseMiddleware.serve(static_file, request)
        if isinstance(request, ASGIRequest):
            response.block_size = BLOCK  # FileResponse reads the file this much at a time
            response.streaming_content = _read_in_thread(iter(response.streaming_content))
        return response


async def _read_in_thread(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    read = sync_to_async(next)
    while (chunk := await read(chunks, None)) is not None:
        yield chunk
