"""A real ``dockerd`` for the tests, started once per test process.

It runs in its own temporary data and exec roots with its own socket, and touches nothing
on the host: no iptables rules, no IP forwarding, no default ``docker0`` bridge. The
sandboxes it runs have no network anyway; the networks the provider makes for exposed
services are bridges between network namespaces on this machine.

Tests that need it call ``daemon()``; it skips them (fails under CI=true) when dockerd or
a static busybox is missing. ``.ci/run`` installs both (Debian's docker.io and
busybox-static).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker

from tests.system import require

_HINT = "apt-get install -y docker.io busybox-static (tests start dockerd themselves)"


@dataclass
class Daemon:
    root: Path
    host: str
    process: subprocess.Popen

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=60)

    def stop(self) -> None:
        if self.process.poll() is None:
            # Docker leaves a network's bridge on the host when the daemon stops: remove
            # every container and network first so nothing outlives the test run.
            with contextlib.suppress(Exception):
                client = self.client()
                for container in client.containers.list(all=True):
                    container.remove(force=True, v=True)
                client.networks.prune()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for mounted in ("exec", "data"):
            subprocess.run(
                ["umount", "-R", str(self.root / mounted)], capture_output=True, check=False
            )
        shutil.rmtree(self.root, ignore_errors=True)


_daemon: Daemon | None = None


def available() -> bool:
    return shutil.which("dockerd") is not None and os.geteuid() == 0


#: The host's firewall and routing stay untouched.
ISOLATED = ("--iptables=false", "--ip-forward=false", "--ip-masq=false", "--bridge=none")


def _start(netns: str | None = None, flags: tuple[str, ...] = ISOLATED) -> Daemon:
    """A dockerd; in the network namespace ``netns`` (an ``ip netns`` name) if given,
    where ``flags`` may turn iptables and forwarding on: for that namespace only."""
    # Short path: the socket path must fit in a sockaddr_un (108 bytes).
    root = Path(tempfile.mkdtemp(prefix="sbx-dockerd-"))
    socket = root / "docker.sock"
    log = (root / "dockerd.log").open("wb")
    # nsenter, not `ip netns exec`: that one remounts /sys, hiding the cgroup mounts.
    prefix = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
    process = subprocess.Popen(
        [
            *prefix,
            "dockerd",
            "--data-root", str(root / "data"),
            "--exec-root", str(root / "exec"),
            "--pidfile", str(root / "dockerd.pid"),
            "-H", f"unix://{socket}",
            *flags,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    daemon = Daemon(root, f"unix://{socket}", process)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if socket.exists():
            with contextlib.suppress(Exception):
                daemon.client().ping()
                return daemon
        time.sleep(0.1)
    daemon.stop()
    tail = (root / "dockerd.log").read_text(errors="replace")[-2000:] if root.exists() else ""
    raise RuntimeError(f"dockerd did not start:\n{tail}")


def daemon_in(netns: str) -> Daemon:
    """A daemon of the caller's own inside the test network namespace ``netns``, with
    iptables, NAT and forwarding on there (the namespace is its whole world)."""
    require("dockerd", available(), _HINT)
    from providers.docker_provider import base_image

    try:
        base_image.find_static_busybox()
    except base_image.BaseImageError as exc:
        require("busybox-static", False, str(exc))
    flags = ("--iptables=true", "--ip-forward=true", "--ip-masq=true", "--bridge=none")
    return _start(netns, flags)


def daemon() -> Daemon:
    """The shared test daemon (started on first use, stopped when the process exits)."""
    global _daemon
    require("dockerd", available(), _HINT)
    from providers.docker_provider import base_image

    try:
        base_image.find_static_busybox()
    except base_image.BaseImageError as exc:
        require("busybox-static", False, str(exc))
    if _daemon is None or _daemon.process.poll() is not None:
        _daemon = _start()
        atexit.register(_daemon.stop)
    return _daemon


@contextlib.contextmanager
def docker_provider_under_test() -> Iterator[tuple]:
    """A DockerProvider on the shared daemon and its base image reference."""
    from providers.docker_provider import DockerProvider

    provider = DockerProvider(daemon().host)
    yield provider, provider.ensure_base_image()
