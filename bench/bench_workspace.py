"""A 50 MB repository cloned inside a `local` sandbox versus on the host (issue 14).

The repository (incompressible files, 50 MB packed) is served by ``git http-backend``
(tests/git_server.py) on a public-range test host inside network namespaces this module
makes (tests/netns_world.py): nothing leaves them. The sandbox clones through its own
network (pasta, policy ``internet``) out of the namespace the provider uses as "the host"
(``LOCAL_SANDBOX_NET_NAMESPACE``); the host's clone runs in that same namespace, so the
two differ only by the sandbox (its network and its filesystem). Needs root, bubblewrap,
passt, nftables and git.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench import Result
from providers.base import InstanceSpec
from providers.local import LocalProvider
from providers.network import make_policy
from tests import netns_world as w
from tests.git_server import GitServer, git, listening

NOTES = """
The two clones fetch the same single pack (the server reuses its objects as a forge does)
from the same server over the same veth; the sandbox's also goes through pasta and
writes into its writable layer, an ext4 file of its own on the same disk as the host's
target folder. Each number is a median of five alternating runs after a warm-up clone;
the machine is shared (two cores), so single runs vary by tens of percent: the ratio,
not the absolute time, is the point. A sandbox can come out faster than the host when
its ext4 file system defers the writes that the host's folder makes at once.
"""

SIZE_MB = 50
FILES = 200
PORT = 8080
REPEAT = 5
TARGET = 1.3


def _make_repo(server: GitServer, root: Path) -> None:
    work = root / "work" / "public" / "big"
    work.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=work)
    chunk = SIZE_MB * 1024 * 1024 // FILES
    for index in range(FILES):
        folder = work / f"d{index % 10}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{index}.bin").write_bytes(os.urandom(chunk))
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "big", cwd=work)
    bare = server.repos / "public" / "big.git"
    bare.parent.mkdir(parents=True, exist_ok=True)
    git("clone", "-q", "--bare", str(work), str(bare), cwd=root)
    # One pack, served by reusing its objects as they are (as a forge serves): the time
    # measured is the transfer and the client's work, not the server compressing.
    git("repack", "-adq", cwd=bare)
    shutil.rmtree(work)


def _host_clone(world: w.World, url: str, target: Path) -> float:
    begin = time.perf_counter()
    subprocess.run(
        ["ip", "netns", "exec", world.upstream_name, "git", "clone", "-q", url, str(target)],
        check=True,
        capture_output=True,
    )
    elapsed = time.perf_counter() - begin
    shutil.rmtree(target)
    return elapsed


def run() -> list[Result]:
    for tool in ("bwrap", "pasta", "nft", "git", "ip"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is missing (make system-packages; apt-get install git)")
    if os.geteuid() != 0:
        raise RuntimeError("needs root (network namespaces, the local provider)")
    with tempfile.TemporaryDirectory(prefix="bench-workspace-") as tmp, w.World() as world:
        root = Path(tmp)
        server = GitServer(root / "git", password="unused")  # noqa: S106 - public repos only
        _make_repo(server, root / "git")
        packed = sum(f.stat().st_size for f in (server.repos / "public").rglob("*") if f.is_file())
        server.serve(w.in_netns(world.world, lambda: listening(w.PUBLIC, PORT)))
        url = f"http://{w.PUBLIC}:{PORT}/public/big.git"
        provider = LocalProvider.from_config(
            {
                "LOCAL_SANDBOX_ROOT": str(root / "local"),
                "LOCAL_SANDBOX_CGROUP_PARENT": f"sbx-bench-ws-{os.getpid()}",
                "LOCAL_SANDBOX_MIN_FREE_MB": "64",
                "LOCAL_SANDBOX_NET_NAMESPACE": world.upstream,
                "LOCAL_SANDBOX_DNS": w.GATEWAY,
            }
        )
        try:
            spec = InstanceSpec(
                "sbx-benchws001", "2vcpu_2gb_8gb", 2, 2048, 8, network=make_policy("internet")
            )
            box = provider.create(spec, "base", {"sandbox_id": spec.sandbox_id, "team": "bench"})
            box.start()
            host, inside = [], []
            _host_clone(world, url, root / "warm")  # the server's pack cache, both ways
            for attempt in range(REPEAT):
                host.append(_host_clone(world, url, root / f"host{attempt}"))
                begin = time.perf_counter()
                result = box.exec(["git", "clone", "-q", url, f"/root/c{attempt}"], timeout=600)
                inside.append(time.perf_counter() - begin)
                if result.exit_code != 0:
                    raise RuntimeError(f"clone in the sandbox failed: {result}")
                box.exec(["rm", "-rf", f"/root/c{attempt}"], timeout=120)
        finally:
            server.close()
            provider.purge()
    host_s, inside_s = statistics.median(host), statistics.median(inside)
    ratio = inside_s / host_s
    detail = f"{packed / 1024 / 1024:.0f} MiB packed, median of {REPEAT}, git http-backend"
    return [
        Result("clone on the host", round(host_s * 1000), "ms (median)", detail=detail),
        Result("clone inside a local sandbox", round(inside_s * 1000), "ms (median)"),
        Result(
            "sandbox / host",
            round(ratio, 2),
            "x",
            target=f"<= {TARGET}x",
            met=ratio <= TARGET,
            detail="pasta, policy internet",
        ),
    ]
