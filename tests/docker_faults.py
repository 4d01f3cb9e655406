"""Fault injection for the docker SDK at its HTTP edge, in front of a real dockerd.

``FaultyTransport.install(client)`` wraps the adapter the docker SDK sends its requests
through. ``fail("POST /containers/create", status=500)`` makes the next such request
answer 500 without reaching the daemon; ``after=True`` lets the daemon do the work and
then answers 500 (the answer was lost). ``calls`` records every route, in order. Routes
are ``METHOD /path`` with the API version dropped and ids/names written ``{id}``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import docker
import requests
from requests.adapters import BaseAdapter

_VERSION = re.compile(r"^/v\d+\.\d+")
_KINDS = {"containers", "images", "networks", "exec", "volumes"}
_VERBS = {"create", "json", "prune", "load", "search"}


def route_of(method: str, url: str) -> str:
    path = _VERSION.sub("", unquote(urlsplit(url).path))
    parts = path.split("/")
    out: list[str] = []
    index = 0
    while index < len(parts):
        part = parts[index]
        out.append(part)
        if part in _KINDS and index + 1 < len(parts) and parts[index + 1] not in _VERBS:
            # An image reference may hold slashes: everything up to the action is the id.
            end = len(parts) - 1 if parts[-1] in {"json", "tag", "push", "history"} else index + 2
            end = max(end, index + 2)
            out.append("{id}")
            index = end
            continue
        index += 1
    return f"{method} {'/'.join(out)}"


@dataclass
class _Fault:
    status: int
    after: bool
    skip: int


class FaultyTransport(BaseAdapter):
    def __init__(self, inner: BaseAdapter) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[str] = []
        self._faults: dict[str, list[_Fault]] = {}

    @classmethod
    def install(cls, client: docker.DockerClient) -> FaultyTransport:
        prefix = "http+docker://"
        wrapper = cls(client.api.get_adapter(prefix + "localhost"))
        client.api.mount(prefix, wrapper)
        return wrapper

    def fail(self, route: str, *, status: int = 500, after: bool = False, skip: int = 0) -> None:
        """Fail the (skip + 1)-th coming call of ``route``."""
        self._faults.setdefault(route, []).append(_Fault(status, after, skip))

    def _take(self, route: str) -> _Fault | None:
        pending = self._faults.get(route)
        if not pending:
            return None
        fault = pending[0]
        if fault.skip:
            fault.skip -= 1
            return None
        pending.pop(0)
        return fault

    def send(self, request: requests.PreparedRequest, **kwargs) -> requests.Response:
        route = route_of(request.method or "GET", request.url or "")
        self.calls.append(route)
        fault = self._take(route)
        if fault is not None and not fault.after:
            return self._error(request, fault.status)
        response = self.inner.send(request, **kwargs)
        if fault is not None:
            response.close()
            return self._error(request, fault.status)
        return response

    @staticmethod
    def _error(request: requests.PreparedRequest, status: int) -> requests.Response:
        response = requests.Response()
        response.status_code = status
        response._content = json.dumps({"message": "injected fault"}).encode()
        response.headers["Content-Type"] = "application/json"
        response.url = request.url or ""
        response.request = request
        return response

    def close(self) -> None:
        self.inner.close()
