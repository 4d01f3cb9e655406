"""The built-in base image: a busybox root filesystem made on this machine, no registry.

``docker import`` of a tarball holding a static busybox with a link per applet, a
minimal ``/etc`` and the usual empty directories. It has what the provider needs in
every image (``/bin/sh``, ``timeout``, ``sleep``, and ``nc`` for service forwarders) and
nothing else; operators who want a full distribution import or pull their own image and
register it as a snapshot version.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import tarfile
import time
from pathlib import Path

DEFAULT_BASE_IMAGE = "sandboxes-base:busybox"
WORKDIR = "/workspace"

_ETC = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hostname": "sandbox\n",
}
_DIRS = {"bin": 0o755, "etc": 0o755, "root": 0o700, "tmp": 0o1777, "workspace": 0o755}
_CHANGES = [
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    f"WORKDIR {WORKDIR}",
    'CMD ["/bin/sh"]',
]


class BaseImageError(RuntimeError):
    """The base image cannot be built here; the message says what is missing."""


def find_static_busybox(explicit: str = "") -> Path:
    """A statically linked busybox on this machine (Debian: ``busybox-static``)."""
    candidate = explicit or shutil.which("busybox") or "/bin/busybox"
    path = Path(candidate)
    if not path.is_file():
        raise BaseImageError("no busybox found; install it with: apt-get install busybox-static")
    if _is_dynamic(path.read_bytes()[:65536]):
        raise BaseImageError(
            f"{path} is dynamically linked; install the static one: apt-get install busybox-static"
        )
    return path


def _is_dynamic(head: bytes) -> bool:
    """True when the ELF file has a program interpreter (PT_INTERP), i.e. needs ld.so."""
    if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit ELF only
        return True
    endian = "<" if head[5] == 1 else ">"
    phoff = struct.unpack_from(endian + "Q", head, 0x20)[0]
    phentsize, phnum = struct.unpack_from(endian + "HH", head, 0x36)
    for index in range(phnum):
        offset = phoff + index * phentsize
        if offset + 4 > len(head):
            return True
        if struct.unpack_from(endian + "I", head, offset)[0] == 3:  # PT_INTERP
            return True
    return False


def _applets(busybox: Path) -> list[str]:
    listed = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True, timeout=30
    )
    return sorted({name for name in listed.stdout.split() if name and "/" not in name})


def rootfs_tar(busybox: Path) -> bytes:
    """The root filesystem as an uncompressed tar, in memory (about 2 MB)."""
    buffer = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, mode in _DIRS.items():
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, now
            tar.addfile(info)
        binary = busybox.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode, info.mtime = len(binary), 0o755, now
        tar.addfile(info, io.BytesIO(binary))
        for applet in _applets(busybox):
            if applet == "busybox":
                continue
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname, link.mode, link.mtime = tarfile.SYMTYPE, "busybox", 0o777, now
            tar.addfile(link)
        for name, text in _ETC.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, now
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def import_base_image(api, reference: str, busybox: Path) -> None:
    """``docker import`` the busybox root filesystem as ``reference`` (repository:tag)."""
    repository, _, tag = reference.rpartition(":")
    if not repository or "/" in tag:
        repository, tag = reference, "latest"
    api.import_image_from_data(
        rootfs_tar(busybox), repository=repository, tag=tag, changes=_CHANGES
    )
