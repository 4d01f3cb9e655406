"""Build a Debian root filesystem from Debian's packages with mmdebstrap.

``build_rootfs`` returns a tar of the root filesystem (the ``apt`` variant: essential
packages, apt, and the packages asked for). Two caches make rebuilds fast:

* the downloaded ``.deb`` files (``<cache>/debs``), synced into the build and back out,
  so a rebuild with a changed package list downloads only what is new;
* the finished tarball (``<cache>/rootfs-<key>.tar``), keyed by suite, mirror, variant
  and package list: the same build again is a cache hit and takes no time at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from providers.images import ImageConfig, ImageError, ImageSource, Layer

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SUITE = "bookworm"
#: What every image gets besides the packages asked for: certificates for HTTPS (git
#: clone, pip), and the tools a sandbox's services and terminals expect.
BASE_PACKAGES = ("ca-certificates", "bash", "procps", "less")
#: A good first image for development (the one ``make run`` builds).
DEFAULT_PACKAGES = ("git", "curl", "python3", "python3-venv", "python3-pip", "build-essential")
SUITES = re.compile(r"[a-z][a-z0-9-]{1,30}")
PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]{0,99}")
#: Bump when what a build produces changes, so cached tarballs are not reused.
FORMAT = 1
IMAGE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}


@dataclass(frozen=True)
class DebianSpec:
    suite: str = DEFAULT_SUITE
    packages: tuple[str, ...] = DEFAULT_PACKAGES
    mirror: str = DEFAULT_MIRROR
    variant: str = "apt"

    def __post_init__(self) -> None:
        if not SUITES.fullmatch(self.suite):
            raise ValueError(f"suite {self.suite[:40]!r} is not a Debian suite name")
        bad = [p for p in self.packages if not PACKAGE.fullmatch(p)]
        if bad:
            raise ValueError(f"not Debian package names: {', '.join(b[:40] for b in bad[:5])}")
        if not re.fullmatch(r"(https?|file)://[^\s'\"]+", self.mirror):
            raise ValueError(f"mirror {self.mirror[:80]!r} is not an http(s) or file URL")
        if self.variant not in ("apt", "minbase", "important", "standard"):
            raise ValueError(f"variant {self.variant!r}: one of apt, minbase, important, standard")

    @property
    def all_packages(self) -> tuple[str, ...]:
        return tuple(sorted(set(BASE_PACKAGES) | set(self.packages)))

    def key(self) -> str:
        data = [FORMAT, self.suite, self.mirror, self.variant, list(self.all_packages)]
        return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:32]

    def describe(self) -> str:
        return f"debian {self.suite}: {','.join(self.packages)}"


def parse_packages(text: str) -> tuple[str, ...]:
    """``git, curl python3`` -> ("git", "curl", "python3"); ValueError if a name is bad."""
    names = tuple(dict.fromkeys(p for p in re.split(r"[\s,]+", text or "") if p))
    DebianSpec(packages=names)  # validates
    return names


def problem() -> str:
    """Why images cannot be built here ('' when they can)."""
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap is not installed (apt-get install mmdebstrap)"
    return ""


def build_rootfs(
    spec: DebianSpec,
    cache_dir: Path,
    *,
    log: Callable[[str], None] = lambda line: None,
    timeout: float = 3600,
) -> Path:
    """The root filesystem of ``spec`` as a tar in ``cache_dir`` (built, or from cache)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = cache_dir / f"rootfs-{spec.key()}.tar"
    if out.is_file():
        log(f"using the cached root filesystem {out.name}")
        os.utime(out)  # recently used: kept by a pruning of old ones
        return out
    missing = problem()
    if missing:
        raise ImageError(missing)
    debs = cache_dir / "debs"
    debs.mkdir(exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".rootfs-", suffix=".tar", dir=cache_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    argv = [
        "mmdebstrap",
        f"--variant={spec.variant}",
        "--include=" + ",".join(spec.all_packages),
        "--skip=output/dev",
        "--skip=essential/unlink",
        "--format=tar",
        "--aptopt=Acquire::Retries 3",
        '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
        f"--setup-hook=sync-in {debs} /var/cache/apt/archives/",
        f"--customize-hook=sync-out /var/cache/apt/archives {debs}",
        # A sandbox's hostname and resolver are its provider's; none of the build host's.
        '--customize-hook=rm -f "$1"/etc/hostname; : > "$1"/etc/resolv.conf',
        '--customize-hook=mkdir -p "$1"/workspace',
        spec.suite,
        str(tmp),
        spec.mirror,
    ]
    log(f"mmdebstrap {spec.suite} from {spec.mirror}: {', '.join(spec.all_packages)}")
    started = time.monotonic()
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    env.setdefault("SOURCE_DATE_EPOCH", "0")
    try:
        process = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=env,
        )
        tail: list[str] = []
        assert process.stderr is not None
        for line in process.stderr:
            line = line.rstrip()
            if line:
                log(line)
                tail = [*tail[-19:], line]
            if time.monotonic() - started > timeout:
                process.kill()
        code = process.wait()
        if code != 0:
            raise ImageError(f"mmdebstrap failed (exit {code}): " + " | ".join(tail[-5:]))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    log(
        f"built {out.name} ({out.stat().st_size // (1024 * 1024)} MiB) in "
        f"{time.monotonic() - started:.0f} s"
    )
    return out


def image_source(spec: DebianSpec, rootfs: Path) -> ImageSource:
    """One layer (the whole root filesystem), digest computed once and cached beside it."""
    return ImageSource(
        layers=(Layer(digest=file_digest(rootfs), path=rootfs, size=rootfs.stat().st_size),),
        config=ImageConfig(env=dict(IMAGE_ENV), working_dir="/workspace"),
        description=spec.describe(),
    )


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file, remembered in ``<file>.sha256`` while it is unchanged."""
    memo = path.with_name(path.name + ".sha256")
    info = path.stat()
    stamp = f"{info.st_size}:{info.st_mtime_ns}"
    try:
        saved_stamp, saved = memo.read_text().split()
        if saved_stamp == stamp:
            return saved
    except (OSError, ValueError):
        pass
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            hasher.update(chunk)
    digest = f"sha256:{hasher.hexdigest()}"
    with contextlib.suppress(OSError):
        memo.write_text(f"{stamp} {digest}\n")
    return digest
