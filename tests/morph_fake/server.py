"""The fake Morph API's HTTP side: routes, request validation, auth and fault injection.

It answers the endpoints the ``morphcloud`` SDK calls with the JSON shapes its pydantic
models validate, and refuses what the real API would refuse: a missing or wrong bearer
key (401), unknown or mistyped body fields (422), unknown routes (404), impossible state
changes (409).

Faults: ``fake.fail("POST /snapshot/{id}/boot", status=500)`` makes the next call of that
route answer 500 before doing anything; ``after=True`` does the work first and then
answers the error (the answer was lost: the client cannot know it happened).
``fake.calls`` records every route called, in order.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from tests.morph_fake.ssh import FakeMorphSsh
from tests.morph_fake.state import ApiFailure, MorphState, run_in


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_body(body: object, allowed: dict[str, Callable[[object], bool]]) -> dict:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ApiFailure(422, "body must be a JSON object")
    for key, value in body.items():
        check = allowed.get(key)
        if check is None:
            raise ApiFailure(422, f"unexpected field {key!r}")
        if value is not None and not check(value):
            raise ApiFailure(422, f"field {key!r} has the wrong type")
    return body


def _str_map(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


_BOOT = {
    "vcpus": _is_int,
    "memory": _is_int,
    "disk_size": _is_int,
    "metadata": _str_map,
    "ttl_seconds": _is_int,
    "ttl_action": lambda v: v in ("stop", "pause"),
}
_SNAPSHOT = {"metadata": _str_map, "ttl_seconds": _is_int}
_HTTP = {
    "name": lambda v: isinstance(v, str) and bool(v),
    "port": _is_int,
    "auth_mode": lambda v: v in ("none", "api_key"),
}
_WAKE = {
    "wake_on_ssh": lambda v: isinstance(v, bool),
    "wake_on_http": lambda v: isinstance(v, bool),
}
_TTL = {"ttl_seconds": _is_int, "ttl_action": lambda v: v in ("stop", "pause")}
_EXEC = {
    "command": lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v) and bool(v)
}


@dataclass
class _Fault:
    status: int
    after: bool
    skip: int = 0
    detail: str = "injected fault"


@dataclass
class Request:
    method: str
    params: dict[str, str]
    body: object
    groups: tuple[str, ...]


class FakeMorph:
    """Start with ``FakeMorph(api_key).start()``; ``base_url`` is what the SDK talks to."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.state = MorphState()
        self.calls: list[str] = []
        self._faults: dict[str, list[_Fault]] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        #: Morph's SSH gateway (``tests/morph_fake/ssh.py``), started with the API.
        self.ssh: FakeMorphSsh | None = None
        self._routes: list[tuple[str, re.Pattern, str, Callable[[Request], object]]] = []
        self._add_routes()

    # --- life -------------------------------------------------------------------------

    def start(self) -> FakeMorph:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                return

            def _handle(self) -> None:
                fake._serve(self)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _handle

        self.ssh = FakeMorphSsh(self.state, self.api_key).start()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/api"

    def stop(self) -> None:
        if self.ssh is not None:
            self.ssh.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self.state.close()

    # --- faults -----------------------------------------------------------------------

    def fail(
        self,
        route: str,
        *,
        status: int = 500,
        after: bool = False,
        times: int = 1,
        detail: str = "injected fault",
    ) -> None:
        if route not in {name for name, *_ in self._routes}:
            raise KeyError(f"no such route {route!r}")
        with self._lock:
            self._faults.setdefault(route, []).extend(
                _Fault(status, after, detail=detail) for _ in range(times)
            )

    def fail_nth(self, route: str, *, skip: int, status: int = 500, after: bool = False) -> None:
        """Fail the (skip + 1)-th coming call of ``route``."""
        self.fail(route, status=status, after=after)
        with self._lock:
            self._faults[route][-1].skip = skip

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, route: str) -> _Fault | None:
        with self._lock:
            pending = self._faults.get(route)
            if not pending:
                return None
            if pending[0].skip:
                pending[0].skip -= 1
                return None
            return pending.pop(0)

    # --- dispatch ---------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        status, payload = self._dispatch(handler.command, url.path, url.query, raw, handler.headers)
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _dispatch(
        self, method: str, path: str, query: str, raw: bytes, headers
    ) -> tuple[int, object]:
        if headers.get("Authorization") != f"Bearer {self.api_key}":
            return 401, {"detail": "Invalid API key"}
        if not path.startswith("/api/"):
            return 404, {"detail": "Not Found"}
        path = path[len("/api") :]
        for name, pattern, route_method, action in self._routes:
            match = pattern.fullmatch(path)
            if match is None or route_method != method:
                continue
            self.calls.append(name)
            fault = self._take_fault(name)
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                return 422, {"detail": "body is not JSON"}
            request = Request(method, dict(parse_qsl(query)), body, match.groups())
            if fault is not None and not fault.after:
                return fault.status, {"detail": fault.detail}
            try:
                with self.state.lock:
                    result = action(request)
                if callable(result):  # exec: run outside the state lock
                    result = result()
            except ApiFailure as failure:
                return failure.status, {"detail": failure.detail}
            if fault is not None:
                return fault.status, {"detail": fault.detail}
            return 200, result
        return 404, {"detail": "Not Found"}

    def _route(self, name: str, action: Callable[[Request], object]) -> None:
        method, template = name.split(" ", 1)
        pattern = re.compile(re.sub(r"\{[a-z_]+\}", r"([^/]+)", template))
        self._routes.append((name, pattern, method, action))

    # --- routes -----------------------------------------------------------------------

    def _add_routes(self) -> None:
        s = self.state
        r = self._route
        r("GET /instance", lambda q: {"data": self._filtered(q.params)})
        r("GET /instance/list", self._list_page)
        r(
            "POST /instance",
            lambda q: s.boot(q.params.get("snapshot_id", ""), _check_body(q.body, _BOOT)).as_json(),
        )
        r(
            "POST /snapshot/{id}/boot",
            lambda q: s.boot(q.groups[0], _check_body(q.body, _BOOT)).as_json(),
        )
        r("GET /instance/{id}", lambda q: s.observe(s.instance(q.groups[0])))
        r("DELETE /instance/{id}", lambda q: self._delete_instance(q.groups[0]))
        r("POST /instance/{id}/pause", lambda q: self._then_json(q, s.pause))
        r("POST /instance/{id}/resume", lambda q: self._then_json(q, s.resume))
        r("POST /instance/{id}/snapshot", self._snapshot)
        r("POST /instance/{id}/exec", self._exec)
        r("POST /instance/{id}/http", self._expose)
        r(
            "DELETE /instance/{id}/http/{name}",
            lambda q: self._then_json(q, lambda i: s.hide(i, q.groups[1])),
        )
        r("POST /instance/{id}/wake-on", self._wake_on)
        r("POST /instance/{id}/ttl", self._ttl)
        r("POST /instance/{id}/metadata", self._metadata)
        r("GET /snapshot", lambda q: {"data": [x.as_json() for x in s.snapshots.values()]})
        r("GET /snapshot/{id}", lambda q: s.observe_snapshot(s.snapshot(q.groups[0])))
        r("DELETE /snapshot/{id}", lambda q: self._delete_snapshot(q.groups[0]))

    def _filtered(self, params: dict[str, str]) -> list[dict]:
        self.state.expire()
        wanted = {
            k[len("metadata[") : -1]: v for k, v in params.items() if k.startswith("metadata[")
        }
        return [
            i.as_json()
            for i in self.state.instances.values()
            if all(i.metadata.get(k) == v for k, v in wanted.items())
        ]

    def _list_page(self, q: Request) -> dict:
        try:
            page, limit = int(q.params.get("page", 1)), int(q.params.get("limit", 50))
        except ValueError:
            raise ApiFailure(422, "page and limit must be integers") from None
        if page < 1 or not 1 <= limit <= 1000:
            raise ApiFailure(422, "page must be >= 1 and limit within 1..1000")
        items = self._filtered(q.params)
        pages = max(1, -(-len(items) // limit))
        chunk = items[(page - 1) * limit : page * limit]
        return {
            "instances": chunk,
            "total": len(items),
            "page": page,
            "size": len(chunk),
            "total_pages": pages,
            "has_next": page < pages,
            "has_prev": page > 1,
        }

    def _then_json(self, q: Request, change: Callable) -> dict:
        inst = self.state.instance(q.groups[0])
        change(inst)
        return inst.as_json()

    def _delete_instance(self, ref: str) -> dict:
        self.state.instance(ref)
        self.state.remove_instance(ref)
        return {"deleted": True}

    def _delete_snapshot(self, ref: str) -> dict:
        self.state.remove_snapshot(ref)
        return {"deleted": True}

    def _snapshot(self, q: Request) -> dict:
        body = _check_body(q.body, _SNAPSHOT)
        inst = self.state.instance(q.groups[0])
        return self.state.take_snapshot(inst, body.get("metadata") or {}).as_json()

    def _exec(self, q: Request) -> Callable[[], dict]:
        body = _check_body(q.body, _EXEC)
        if "command" not in body:
            raise ApiFailure(422, "field 'command' is required")
        inst = self.state.instance(q.groups[0])
        if inst.status != "ready":
            raise ApiFailure(409, f"Instance {inst.id} is {inst.status}")
        directory = inst.directory
        return lambda: run_in(directory, body["command"], timeout=600)

    def _expose(self, q: Request) -> dict:
        body = _check_body(q.body, _HTTP)
        if "name" not in body or "port" not in body:
            raise ApiFailure(422, "fields 'name' and 'port' are required")
        if not 1 <= body["port"] <= 65535:
            raise ApiFailure(422, "port must be within 1..65535")
        inst = self.state.instance(q.groups[0])
        self.state.expose(inst, body["name"], body["port"])
        return inst.as_json()

    def _wake_on(self, q: Request) -> dict:
        body = _check_body(q.body, _WAKE)
        inst = self.state.instance(q.groups[0])
        inst.wake_on.update({k: v for k, v in body.items() if v is not None})
        return inst.as_json()

    def _ttl(self, q: Request) -> dict:
        body = _check_body(q.body, _TTL)
        if "ttl_seconds" not in body:
            raise ApiFailure(422, "field 'ttl_seconds' is required")
        inst = self.state.instance(q.groups[0])
        self.state.set_ttl(inst, body["ttl_seconds"], body.get("ttl_action"))
        return inst.as_json()

    def _metadata(self, q: Request) -> dict:
        if not _str_map(q.body):
            raise ApiFailure(422, "metadata must map strings to strings")
        inst = self.state.instance(q.groups[0])
        inst.metadata.update(q.body)
        return inst.as_json()
