"""Building ``sbx-init`` (the sandbox's pid 1 and exec server) from its C source.

The binary is compiled once per source version with the host's C compiler (statically,
so it needs nothing from the sandbox's own /usr) and cached under
``<root>/bin/sbx-init-<source hash>``. Without a compiler the provider still works: it
runs bubblewrap's own init and enters sandboxes for exec (slower; see execute.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from providers.local.state import locked

SOURCE = Path(__file__).with_name("sbx-init.c")
COMPILER_HINT = "apt-get install -y gcc libc6-dev"


class InitUnavailable(Exception):
    """sbx-init cannot be built here; the message says why and how to fix it."""


def binary_path(root: Path) -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    return root / "bin" / f"sbx-init-{digest}"


def cached_build(
    target: Path, make: Callable[[str, Path], None], unavailable: Callable[[str], Exception]
) -> Path:
    """``target``, made on first use by ``make(compiler, target)`` under the build lock, so
    concurrent first starts build it once (sbx-init and the seccomp filter are made so).
    ``make`` publishes ``target`` atomically or raises; without a compiler,
    ``unavailable(why)`` is raised."""
    if target.exists():
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise unavailable("no C compiler")
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    with locked(target.parent / "build.lock"):
        if not target.exists():
            make(compiler, target)
    return target


def ensure_binary(root: Path) -> Path:
    """The compiled init for this source, building it on first use (idempotent)."""
    return cached_build(
        binary_path(root),
        _compile,
        lambda why: InitUnavailable(f"{why} to build the sandbox init ({COMPILER_HINT})"),
    )


def _compile(compiler: str, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    errors = ""
    for flags in (["-static"], []):  # static first: independent of the sandbox's libc
        done = subprocess.run(
            [compiler, "-O2", "-Wall", *flags, "-o", str(tmp), str(SOURCE)],
            capture_output=True,
            text=True,
        )
        if done.returncode == 0:
            os.chmod(tmp, 0o755)  # noqa: S103 - bind-mounted and run inside sandboxes
            os.replace(tmp, target)
            return
        errors = done.stderr.strip()[-500:]
    with contextlib.suppress(OSError):
        tmp.unlink()
    raise InitUnavailable(f"building the sandbox init failed ({COMPILER_HINT}): {errors}")
