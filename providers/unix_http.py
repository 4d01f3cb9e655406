"""HTTP over unix sockets for ``requests``: the ``http+unix://`` service URLs.

A provider whose exposed services are reachable only through a unix socket on the
control plane's host (``local``) reports their URLs as ``http+unix://<socket path,
percent-encoded>/<path>`` (the form requests-unixsocket uses), for example
``http+unix://%2Fvar%2Flib%2Fsandboxes%2Flocal%2Fsandboxes%2Fsbx-1%2Fservices%2Fweb.sock/``.
:func:`session` gives a ``requests.Session`` that sends such URLs over the socket (and
every other URL as usual). Requests carry ``Host: localhost``. Socket paths longer than
``sun_path`` (about 100 bytes) are reached through the directory's file descriptor.

Plain Python and requests/urllib3, no Django: the service proxy and tests both use it.
"""

from __future__ import annotations

import os
import socket
import threading
from collections import OrderedDict
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

SCHEME = "http+unix"
#: What the service behind a unix socket sees as its own origin (the Host header).
UPSTREAM_ORIGIN = "http://localhost"


def url_for(path: Path | str, rest: str = "/") -> str:
    """``http+unix://`` URL of the socket at ``path`` (``rest`` is the HTTP path)."""
    return f"{SCHEME}://{quote(str(path), safe='')}{rest}"


def socket_path(url: str) -> str:
    """The socket path of an ``http+unix://`` URL."""
    return unquote(urlsplit(url).netloc)


def connect(path: str, timeout: float | None = None) -> socket.socket:
    """A stream socket connected to the unix socket at ``path`` (any length)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        client.settimeout(timeout)
        if len(os.fsencode(path)) < 100:
            client.connect(path)
        else:
            head, name = os.path.split(path)
            directory = os.open(head, os.O_PATH | os.O_CLOEXEC)
            try:
                client.connect(f"/proc/self/fd/{directory}/{name}")
            finally:
                os.close(directory)
    except BaseException:
        client.close()
        raise
    return client


class _UnixConnection(HTTPConnection):
    def __init__(self, *args, socket_path: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.socket_path = socket_path

    def _new_conn(self) -> socket.socket:
        timeout = self.timeout if isinstance(self.timeout, int | float) else None
        return connect(self.socket_path, timeout)


class _UnixPool(HTTPConnectionPool):
    ConnectionCls = _UnixConnection

    def __init__(self, socket_path: str, **kwargs) -> None:
        super().__init__("localhost", **kwargs)
        self.conn_kw["socket_path"] = socket_path


class UnixAdapter(HTTPAdapter):
    """A transport adapter for ``http+unix://`` URLs (proxy settings do not apply).

    One connection pool per socket, kept for the ``max_sockets`` used most recently: a
    long-lived adapter (the service proxy keeps one per process, for keep-alive) must not
    keep a pool for every sandbox it ever reached.
    """

    def __init__(self, *, max_sockets: int = 100, **kwargs) -> None:
        super().__init__(**kwargs)
        self.pools: OrderedDict[str, _UnixPool] = OrderedDict()
        self.max_sockets = max_sockets
        self._pools_lock = threading.Lock()  # requests from several threads share it

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        return self._pool(request.url)

    def get_connection(self, url, proxies=None):  # requests < 2.32.2
        return self._pool(url)

    def _pool(self, url: str) -> _UnixPool:
        path = socket_path(url)
        with self._pools_lock:
            pool = self.pools.get(path)
            if pool is None:
                pool = self.pools[path] = _UnixPool(path, maxsize=self._pool_maxsize)
                if len(self.pools) > self.max_sockets:
                    # Its idle connections close; one still in use closes when returned.
                    self.pools.popitem(last=False)[1].close()
            else:
                self.pools.move_to_end(path)
        return pool

    def request_url(self, request, proxies) -> str:
        return request.path_url

    def close(self) -> None:
        super().close()
        with self._pools_lock:
            for pool in self.pools.values():
                pool.close()
            self.pools.clear()


def session() -> requests.Session:
    """A ``requests.Session`` that also speaks ``http+unix://``."""
    made = requests.Session()
    made.mount(f"{SCHEME}://", UnixAdapter())
    return made
