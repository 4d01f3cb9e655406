"""The local sandboxes' seccomp filter: built once with libseccomp, loaded by sbx-init.

``seccomp.c`` describes the policy (the refusals of the default profile container
runtimes ship, as a deny list; see its comments). It is compiled with the host's C
compiler against libseccomp, run once, and the BPF program it writes is cached as
``<root>/bin/seccomp-<hash>.bpf``; the generator itself is not kept. Each launch opens
that file afresh and passes the descriptor to the sandbox's init (launch.py), which
loads the program once its own set-up is done (sbx-init.c).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import subprocess
import tempfile
from pathlib import Path

from providers.local import initbin

SOURCE = Path(__file__).with_name("seccomp.c")
PACKAGE_HINT = "apt-get install -y gcc libc6-dev libseccomp-dev"
#: One classic-BPF instruction (struct sock_filter); bubblewrap refuses other sizes.
INSTRUCTION_BYTES = 8


class SeccompUnavailable(Exception):
    """The filter cannot be built here; the message says why and how to fix it."""


def filter_path(root: Path) -> Path:
    """Where the filter for this source (and machine architecture) is cached."""
    digest = hashlib.sha256(SOURCE.read_bytes() + platform.machine().encode()).hexdigest()
    return root / "bin" / f"seccomp-{digest[:16]}.bpf"


def ensure_filter(root: Path) -> Path:
    """The compiled filter for this source, building it on first use (idempotent)."""
    return initbin.cached_build(
        filter_path(root),
        _build,
        lambda why: SeccompUnavailable(f"{why} to build the seccomp filter ({PACKAGE_HINT})"),
    )


def _build(compiler: str, target: Path) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".seccomp-") as work:
        generator = Path(work) / "seccomp-gen"
        _compile(compiler, generator)
        _generate(generator, target)


def _compile(compiler: str, generator: Path) -> None:
    done = subprocess.run(
        [compiler, "-O2", "-Wall", "-o", str(generator), str(SOURCE), "-lseccomp"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        # A missing seccomp.h or -lseccomp is the usual cause: name the package first.
        raise SeccompUnavailable(
            "building the seccomp filter failed (needs the Debian package libseccomp-dev: "
            f"{PACKAGE_HINT}): {done.stderr.strip()[-500:]}"
        )


def _generate(generator: Path, target: Path) -> None:
    """Run the generator into a temporary name, check it, and publish it atomically."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        done = subprocess.run([str(generator), str(tmp)], capture_output=True, text=True)
        size = tmp.stat().st_size if tmp.exists() else 0
        if done.returncode != 0 or size == 0 or size % INSTRUCTION_BYTES:
            raise SeccompUnavailable(
                f"the seccomp filter generator failed (exit {done.returncode}, {size} bytes): "
                f"{done.stderr.strip()[-500:]}"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
