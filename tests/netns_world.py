"""A small "internet" inside network namespaces a test makes: no packet of a test that
uses it ever leaves them, whatever addresses it names.

    netns <upstream>  "the host": where sandboxes' traffic leaves from
                      (LOCAL_SANDBOX_NET_NAMESPACE). Addresses HOST/24 on a veth and
                      HOST_PUBLIC/32 (a second, public address of the host); a service
                      on 0.0.0.0:HOST_PORT (so also on its 127.0.0.1: "host loopback
                      services", PostgreSQL's and the control plane's kind).
      | veth
    netns <world>     GATEWAY/24, the default route of <upstream>; on its loopback the
                      test hosts: public ones (PUBLIC, PUBLIC_OTHER, PUBLIC_LISTED),
                      private (PRIVATE), shared/CGNAT (SHARED) and the cloud metadata
                      address (METADATA). Every host answers HTTP on WEB_PORT with the
                      address it was reached at; DNS on GATEWAY:53 answers NAMES.

Servers run in threads of the test process: a socket made by a thread that entered a
namespace belongs to that namespace.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import struct
import subprocess
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from providers.local import syscalls

HOST = "45.0.0.1"
HOST_PUBLIC = "46.0.0.1"
GATEWAY = "45.0.0.2"
PUBLIC = "93.184.216.34"
PUBLIC_OTHER = "93.184.216.35"
PUBLIC_LISTED = "1.1.1.1"
PRIVATE = "10.9.9.9"
SHARED = "100.64.0.9"
METADATA = "169.254.169.254"
WORLD_HOSTS = (PUBLIC, PUBLIC_OTHER, PUBLIC_LISTED, PRIVATE, SHARED, METADATA)
WEB_PORT = 80
HOST_PORT = 8081
NAMES = {
    "public.example": PUBLIC,
    "other.example": PUBLIC_OTHER,
    "inside.example": PRIVATE,
    "metadata.example": METADATA,
}


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def in_netns(path: str, function: Callable):
    """Call ``function`` in a thread that entered the network namespace at ``path``."""
    outcome: dict = {}

    def work() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                syscalls.setns(fd, syscalls.CLONE_NEWNET)
            finally:
                os.close(fd)
            outcome["value"] = function()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class World:
    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}{secrets.token_hex(2)}"
        self.upstream_name = f"sbxup{tag}"
        self.world_name = f"sbxwo{tag}"
        self.upstream = f"/run/netns/{self.upstream_name}"
        self.world = f"/run/netns/{self.world_name}"
        #: Connections accepted, by the address they reached (world hosts and the host).
        self.accepted: Counter[str] = Counter()
        self._sockets: list[socket.socket] = []
        self._stop = threading.Event()

    def __enter__(self) -> World:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _build(self) -> None:
        up, wo = self.upstream_name, self.world_name
        ip("netns", "add", up)
        ip("netns", "add", wo)
        veth_up, veth_wo = f"u{up[-9:]}", f"w{wo[-9:]}"
        peer = ("peer", "name", veth_wo, "netns", wo)
        ip("link", "add", veth_up, "netns", up, "type", "veth", *peer)
        ip("-n", up, "addr", "add", f"{HOST}/24", "dev", veth_up)
        ip("-n", up, "addr", "add", f"{HOST_PUBLIC}/32", "dev", "lo")
        ip("-n", wo, "addr", "add", f"{GATEWAY}/24", "dev", veth_wo)
        for address in WORLD_HOSTS:
            ip("-n", wo, "addr", "add", f"{address}/32", "dev", "lo")
        for ns, dev in ((up, veth_up), (wo, veth_wo)):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", dev, "up")
        ip("-n", up, "route", "add", "default", "via", GATEWAY)
        self._listen(self.world, ("0.0.0.0", WEB_PORT), socket.SOCK_STREAM, self._web)
        self._listen(self.upstream, ("0.0.0.0", HOST_PORT), socket.SOCK_STREAM, self._web)
        self._listen(self.world, (GATEWAY, 53), socket.SOCK_DGRAM, self._dns)

    def _listen(self, netns: str, address: tuple, kind: int, serve: Callable) -> None:
        def make() -> socket.socket:
            sock = socket.socket(socket.AF_INET, kind)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            if kind == socket.SOCK_STREAM:
                sock.listen(64)
            return sock

        sock = in_netns(netns, make)
        self._sockets.append(sock)
        threading.Thread(target=serve, args=(sock,), daemon=True).start()

    def _web(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                reached = conn.getsockname()[0]
                self.accepted[reached] += 1
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nreached " + reached.encode())

    def _dns(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                query, peer = sock.recvfrom(4096)
            except OSError:
                return
            with contextlib.suppress(Exception):
                sock.sendto(_answer(query), peer)

    def close(self) -> None:
        self._stop.set()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for name in (self.upstream_name, self.world_name):
            if Path(f"/run/netns/{name}").exists():
                subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def _answer(query: bytes) -> bytes:
    """A DNS answer: the A record of NAMES, or NXDOMAIN."""
    ident, _flags, qdcount = struct.unpack(">HHH", query[:6])
    offset, labels = 12, []
    while query[offset]:
        length = query[offset]
        labels.append(query[offset + 1 : offset + 1 + length].decode())
        offset += 1 + length
    question = query[12 : offset + 5]
    qtype = struct.unpack(">H", query[offset + 1 : offset + 3])[0]
    address = NAMES.get(".".join(labels).lower())
    if address is None:
        return struct.pack(">HHHHHH", ident, 0x8183, qdcount, 0, 0, 0) + question
    if qtype != 1:
        return struct.pack(">HHHHHH", ident, 0x8180, qdcount, 0, 0, 0) + question
    record = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(address)
    return struct.pack(">HHHHHH", ident, 0x8180, qdcount, 1, 0, 0) + question + record
