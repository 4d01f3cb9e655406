"""Unix sockets at paths of any length (sun_path holds about 100 bytes).

A long path is reached through ``/proc/self/fd/<directory fd>/<name>``, so
LOCAL_SANDBOX_ROOT can be as deep as the operator likes.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from pathlib import Path


def _at(path: Path, use: Callable[[str], None]) -> None:
    if len(os.fsencode(path)) < 100:
        use(str(path))
        return
    directory = os.open(path.parent, os.O_PATH | os.O_CLOEXEC)
    try:
        use(f"/proc/self/fd/{directory}/{path.name}")
    finally:
        os.close(directory)


def connect(path: Path, timeout: float | None = None) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        client.settimeout(timeout)
        _at(path, client.connect)
    except BaseException:
        client.close()
        raise
    return client


def listen(path: Path, backlog: int = 64) -> socket.socket:
    """Bind and listen at ``path`` (replacing a stale socket file), mode 0600."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        _at(path, server.bind)
        os.chmod(path, 0o600)
        server.listen(backlog)
    except BaseException:
        server.close()
        raise
    return server
