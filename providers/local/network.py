"""Outbound networking of local sandboxes: pasta (Debian's ``passt``), with the policy
enforced where root inside the sandbox cannot lift it. See docs/network.md.

A sandbox with the ``internet`` or ``allowlist`` policy gets, right after its init is
ready and before anything else runs in it:

1. **An nftables ruleset in its own network namespace**, loaded by the launcher (host
   root). Root inside has no ``CAP_NET_ADMIN`` (Docker's default set) in the user
   namespace that owns that network namespace, cannot get it back (the bounding set is
   shrunk, no new user namespace: the seccomp filter), so it can neither flush the rules
   nor change routes or addresses. Its output chain accepts loopback, UDP to the DNS
   forwarder, and then only public IPv4 destinations (``internet``) or the allowlist's
   (``allowlist``); never the host's own addresses, ``LOCAL_SANDBOX_NET_DENY``, or
   private, link-local (cloud metadata), shared, documentation, multicast, reserved ones.
2. **No ``CAP_NET_RAW``**: a packet socket would write frames to the interface below
   the ruleset (nftables' output hook never sees them), straight to pasta.
3. **pasta**, run as the sandbox's host root id, joined to the sandbox's user and network
   namespaces, with every mapping to the host switched off: no port forwarding either
   way (``-t/-u/-T/-U none``: pasta's default ``-T auto`` would make the host's loopback
   services answer on the sandbox's 127.0.0.1), no gateway-to-host-loopback mapping
   (``--no-map-gw``), IPv4 only. Its sockets to the world open in
   ``LOCAL_SANDBOX_NET_NAMESPACE`` (default: the control plane's own network namespace).
   It joins the sandbox's cgroups: it counts against its limits, freezes with it, and
   dies with it.
4. **DNS** through pasta's forwarder: the sandbox's ``/etc/resolv.conf`` (read-only)
   names ``DNS_ADDRESS``, which pasta maps to the first resolver of its own
   ``/etc/resolv.conf``: the host's, or one naming ``LOCAL_SANDBOX_DNS`` bound over it
   in pasta's private mount namespace.

Host names of an allowlist are resolved by the launcher, with the same resolvers, from
the same network namespace, at every start.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from providers.errors import OperationFailed
from providers.local import syscalls
from providers.netfilter import DNS_ADDRESS, local_addresses, resolve, resolvers, ruleset
from providers.network import ALLOWLIST, NetworkPolicy, is_public

#: The sandbox's interface (pasta's tap device).
INTERFACE = "eth0"
RESOLV_CONF = f"nameserver {DNS_ADDRESS}\n"
#: A private directory (only the network thread's own mount namespace covers it with a
#: tmpfs): the tun device node pasta opens, and its pid file.
STAGE = Path("/run/sandboxes-local")
TUN_DEVICE = (10, 200)
PASTA_TIMEOUT = 10.0
DNS_TIMEOUT = 3.0

IPv4Network = ipaddress.IPv4Network


@dataclass(frozen=True)
class NetworkSettings:
    """The provider's network settings (``LOCAL_SANDBOX_PASTA``, ``_NFT``, ``_DNS``,
    ``_NET_NAMESPACE``, ``_NET_DENY``)."""

    pasta: str = "pasta"
    nft: str = "nft"
    #: Resolvers pasta forwards the sandbox's DNS to; empty: the host's resolv.conf.
    dns: tuple[str, ...] = ()
    #: A network namespace file (``/run/netns/NAME``) sandboxes' traffic leaves from;
    #: None: the control plane's own.
    namespace: Path | None = None
    #: More destinations no sandbox may reach (e.g. the control plane's public address).
    deny: tuple[IPv4Network, ...] = ()

    def problems(self) -> list[str]:
        found = []
        if shutil.which(self.pasta) is None:
            found.append(f"{self.pasta} not found (apt-get install -y passt)")
        if shutil.which(self.nft) is None:
            found.append(f"{self.nft} not found (apt-get install -y nftables)")
        if not Path("/dev/net/tun").exists():
            found.append("/dev/net/tun is missing (the tun module)")
        if self.namespace is not None and not self.namespace.exists():
            found.append(f"LOCAL_SANDBOX_NET_NAMESPACE {self.namespace} does not exist")
        return found


@dataclass(frozen=True)
class NetworkSetup:
    """What the launcher needs to connect one sandbox."""

    policy: NetworkPolicy
    settings: NetworkSettings
    #: pasta's output (the sandbox directory's network.log).
    log: Path


def pasta_argv(settings: NetworkSettings, pid: int, uid: int, gid: int) -> list[str]:
    argv = [
        settings.pasta,
        "--ipv4-only",
        "--config-net",
        "--ns-ifname", INTERFACE,
        # No port forwarding either way: with "-T auto" (the default) the sandbox's
        # 127.0.0.1:PORT would reach the host's loopback services.
        "--tcp-ports", "none", "--udp-ports", "none",
        "--tcp-ns", "none", "--udp-ns", "none",
        # The gateway address stays the gateway, never the host's loopback.
        "--no-map-gw",
        "--dns-forward", DNS_ADDRESS,
        "--runas", f"{uid}:{gid}",
        "--userns", f"/proc/{pid}/ns/user",
        "--netns", f"/proc/{pid}/ns/net",
        "--pid", str(STAGE / "run" / "pasta.pid"),
        "--quiet",
    ]  # fmt: skip
    # No --dns: pasta reads the resolvers from /etc/resolv.conf, which the launcher
    # covers (in pasta's private mount namespace) when LOCAL_SANDBOX_DNS names them
    # (passt 2023.03's --dns together with --dns-forward forwards to 0.0.0.0).
    return argv


def attach(setup: NetworkSetup, pid: int, uid: int, gid: int, cgroup_procs: Sequence[str]) -> int:
    """Enforce the policy in the network namespace of ``pid`` (the sandbox's init) and
    connect it with pasta; return pasta's pid. Raises OperationFailed."""
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["pid"] = _attach(setup, pid, uid, gid)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=work, name=f"network-{pid}")
    thread.start()
    thread.join()
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, OperationFailed):
            raise error
        raise OperationFailed(f"could not connect the sandbox's network: {error}") from error
    helper = outcome["pid"]
    try:
        for procs in cgroup_procs:
            with open(procs, "w") as handle:
                handle.write(str(helper))
    except BaseException:
        with contextlib.suppress(OSError):
            os.kill(helper, 9)
        raise
    return helper


def _attach(setup: NetworkSetup, pid: int, uid: int, gid: int) -> int:
    """In a thread of its own (its mount and network namespaces are changed)."""
    settings = setup.settings
    syscalls.unshare(syscalls.CLONE_FS | syscalls.CLONE_NEWNS)
    syscalls.mount("none", "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE, None)
    # pasta opens /dev/net/tun as the sandbox's id: a node of its own, in this namespace
    # only, so the host's device keeps its mode (0600 on some hosts).
    STAGE.mkdir(mode=0o755, parents=True, exist_ok=True)
    syscalls.mount("sandbox-net", str(STAGE), "tmpfs", syscalls.MS_NOSUID, "mode=0755,size=16k")
    tun = STAGE / "tun"
    os.mknod(tun, stat.S_IFCHR | 0o600, os.makedev(*TUN_DEVICE))
    os.chown(tun, uid, gid)
    (STAGE / "run").mkdir(mode=0o700)
    os.chown(STAGE / "run", uid, gid)
    syscalls.mount(str(tun), "/dev/net/tun", None, syscalls.MS_BIND, None)
    if settings.dns:
        resolv = STAGE / "resolv.conf"
        resolv.write_text("".join(f"nameserver {server}\n" for server in settings.dns))
        syscalls.mount(str(resolv), "/etc/resolv.conf", None, syscalls.MS_BIND, None)

    if settings.namespace is not None:
        upstream = os.open(settings.namespace, os.O_RDONLY | os.O_CLOEXEC)
        try:
            syscalls.setns(upstream, syscalls.CLONE_NEWNET)
        finally:
            os.close(upstream)
    upstream = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        deny = [*local_addresses(), *settings.deny]
        allow = list(setup.policy.networks())
        if setup.policy.mode == ALLOWLIST:
            servers = resolvers(settings.dns)
            for name in setup.policy.host_names():
                allow += [IPv4Network(a) for a in resolve(name, servers) if is_public(a)]
        rules = ruleset(setup.policy, deny=deny, allow=allow)
        sandbox_ns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            syscalls.setns(sandbox_ns, syscalls.CLONE_NEWNET)
        finally:
            os.close(sandbox_ns)
        done = subprocess.run(
            [settings.nft, "-f", "-"], input=rules.encode(), capture_output=True, check=False
        )
        if done.returncode != 0:
            raise OperationFailed(
                f"could not load the sandbox's network rules: {done.stderr.decode()[-500:]}"
            )
        syscalls.setns(upstream, syscalls.CLONE_NEWNET)
    finally:
        os.close(upstream)
    with open(setup.log, "wb") as log:
        try:
            done = subprocess.run(
                pasta_argv(settings, pid, uid, gid),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                timeout=PASTA_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise OperationFailed("pasta did not set up the sandbox's network in time") from exc
    pid_file = STAGE / "run" / "pasta.pid"
    if done.returncode != 0 or not pid_file.exists():
        detail = _tail(setup.log)
        raise OperationFailed(f"pasta could not connect the sandbox: {detail or done.returncode}")
    return int(pid_file.read_text().strip())


def _tail(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [
            line for line in path.read_text(errors="replace").splitlines() if "syslog" not in line
        ]
        return " ".join(lines)[-500:]
    return ""
