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
from pathlib import Path

from providers.local.state import locked

SOURCE = Path(__file__).with_name("sbx-init.c")
COMPILER_HINT = "apt-get install -y gcc libc6-dev"


class InitUnavailable(Exception):
    """sbx-init cannot be built here; the message says why and how to fix it."""


def binary_path(root: Path) -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    return root / "bin" / f"sbx-init-{digest}"


def ensure_binary(root: Path) -> Path:
    """The compiled init for this source, building it on first use (idempotent)."""
    target = binary_path(root)
    if target.exists():
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise InitUnavailable(f"no C compiler to build the sandbox init ({COMPILER_HINT})")
    target.parent.mkdir(mode=0o755, exist_ok=True)
    with locked(target.parent / "build.lock"):
        if target.exists():
            return target
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
                return target
            errors = done.stderr.strip()[-500:]
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise InitUnavailable(f"building the sandbox init failed ({COMPILER_HINT}): {errors}")
