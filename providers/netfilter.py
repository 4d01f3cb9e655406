"""Outbound policies as nftables rules in a sandbox's own network namespace, shared by
the providers that enforce them there (``local``, ``docker``; see docs/network.md).

The rules are loaded by the control plane (root) into the namespace; root inside the
sandbox has no ``CAP_NET_ADMIN`` over it and cannot change them. Linux only; plain Python.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import socket
import struct
import subprocess
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from providers.network import ALLOWLIST, NON_PUBLIC_V4, NetworkPolicy, is_public

#: The DNS forwarder's address as sandboxes see it (local: pasta maps it to a resolver).
DNS_ADDRESS = "169.254.0.53"
DNS_TIMEOUT = 3.0
CLONE_NEWNET = 0x40000000

IPv4Network = ipaddress.IPv4Network


def ruleset(
    policy: NetworkPolicy,
    *,
    deny: Iterable[IPv4Network],
    allow: Iterable[IPv4Network] = (),
    whole: bool = True,
) -> str:
    """The nftables ruleset of a sandbox's network namespace: its whole ruleset, or
    (``whole`` false: Docker keeps its DNS rules there) the ``inet sandbox`` table."""
    denied = _collapse([*NON_PUBLIC_V4, *deny])
    allowed = _collapse(allow)
    reset = ["flush ruleset"] if whole else ["table inet sandbox", "delete table inet sandbox"]
    lines = [
        *reset,
        "table inet sandbox {",
        "  set denied { type ipv4_addr; flags interval; " + _elements(denied) + "}",
        "  set allowed { type ipv4_addr; flags interval; " + _elements(allowed) + "}",
        "  chain output {",
        "    type filter hook output priority 0; policy drop;",
        '    oif "lo" accept',
        # Answers to connections made to the sandbox (an exposed service's forwarder);
        # nothing the sandbox starts is ever established without passing the rules below.
        "    ct state established,related accept",
        f"    ip daddr {DNS_ADDRESS} udp dport 53 accept",
        "    ip daddr @denied reject with icmp type admin-prohibited",
    ]
    if policy.mode == ALLOWLIST:
        lines.append("    ip daddr @allowed accept")
    elif policy.networked:
        lines.append("    meta nfproto ipv4 accept")
    lines += [
        "    meta nfproto ipv4 reject with icmp type admin-prohibited",
        "    reject",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _collapse(networks: Iterable[IPv4Network]) -> list[IPv4Network]:
    return list(ipaddress.collapse_addresses(n for n in networks if n.version == 4))


def _elements(networks: Sequence[IPv4Network]) -> str:
    return f"elements = {{ {', '.join(map(str, networks))} }}; " if networks else ""


def local_addresses() -> list[IPv4Network]:
    """The IPv4 addresses of the calling thread's network namespace (its local table)."""
    found = []
    leaf = ""
    with open("/proc/thread-self/net/fib_trie") as handle:
        for line in handle:
            text = line.strip()
            if text.startswith("|--"):
                leaf = text.split()[1]
            elif text.startswith("/32 host LOCAL") and leaf:
                found.append(IPv4Network(leaf))
    return sorted(set(found))


def resolvers(configured: Sequence[str] = ()) -> list[str]:
    """``configured``, or the nameservers of /etc/resolv.conf (IPv4 ones)."""
    if configured:
        return list(configured)
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver" and "." in parts[1]:
                found.append(parts[1])
    return found


def resolve(name: str, servers: Sequence[str], *, timeout: float = DNS_TIMEOUT) -> list[str]:
    """IPv4 addresses of ``name`` (A records, following nothing else) from ``servers``."""
    for server in servers:
        with contextlib.suppress(OSError, ValueError, struct.error):
            return _query(name, server, timeout)
    return []


def _query(name: str, server: str, timeout: float) -> list[str]:
    ident = secrets.randbits(16)
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question + b"\0\1\0\1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((server, 53))
        sock.send(packet)
        while True:
            answer = sock.recv(4096)
            if len(answer) >= 12 and struct.unpack(">H", answer[:2])[0] == ident:
                break
    _, flags, qdcount, ancount = struct.unpack(">HHHH", answer[:8])
    if flags & 0x000F:
        return []
    offset = 12
    for _ in range(qdcount):
        offset = _skip_name(answer, offset) + 4
    found = []
    for _ in range(ancount):
        offset = _skip_name(answer, offset)
        rtype, _rclass, _ttl, length = struct.unpack(">HHIH", answer[offset : offset + 10])
        offset += 10
        if rtype == 1 and length == 4:
            found.append(socket.inet_ntoa(answer[offset : offset + 4]))
        offset += length
    return found


def _skip_name(data: bytes, offset: int) -> int:
    while True:
        length = data[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            return offset + 2
        offset += 1 + length


def _setns(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _libc_setns(fd)  # os.setns is Python 3.12+
    finally:
        os.close(fd)


def _libc_setns(fd: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


def enforce(
    target: str | Path,
    policy: NetworkPolicy,
    *,
    upstream: str | Path | None = None,
    deny: Sequence[IPv4Network] = (),
    dns: Sequence[str] = (),
    nft: str = "nft",
    whole: bool = True,
) -> None:
    """Load ``policy``'s rules into the network namespace at ``target`` (a
    ``/proc/<pid>/ns/net``). The host's addresses (denied) are those of ``upstream``
    (a namespace file; None: the caller's), where allowlisted names are resolved too.
    Runs in a thread of its own (entering namespaces changes only that thread).
    Raises OSError with nft's message."""
    outcome: dict = {}

    def work() -> None:
        try:
            if upstream is not None:
                _setns(upstream)
            denied = [*local_addresses(), *deny]
            allowed = list(policy.networks())
            if policy.mode == ALLOWLIST:
                servers = resolvers(dns)
                for name in policy.host_names():
                    allowed += [IPv4Network(a) for a in resolve(name, servers) if is_public(a)]
            rules = ruleset(policy, deny=denied, allow=allowed, whole=whole)
            _setns(target)
            done = subprocess.run(
                [nft, "-f", "-"], input=rules.encode(), capture_output=True, check=False
            )
            if done.returncode != 0:
                raise OSError(f"nft: {done.stderr.decode(errors='replace')[-500:]}")
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=work, name="netfilter")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
