"""A sandbox's disk limit: its writable layer lives on a file system of its preset's size.

Each sandbox gets ``<sandbox dir>/disk.img``, a sparse ext4 image of ``disk_gb``, attached
to a loop device and mounted at ``<sandbox dir>/disk`` in the host's mount namespace; its
writable layer is ``disk/upper/<part>`` with overlayfs work dirs ``disk/work/<part>``.
Writing past the size gets ENOSPC inside the sandbox, and the host's file system (the
database, state files, other sandboxes) only ever gives the image what it has used.

Cheap on purpose (create + start is a hot path): the image is a sparse copy of a template
made once per size by mkfs.ext4 (~200 KB of data for 8 GB), attached with LOOP_CONFIGURE
and mounted with mount(2), no helper processes. The mount is made once at create and kept
while the sandbox exists (stopped too); after a host reboot ``ensure_mounted`` mounts it
again. The loop device is attached with autoclear, so unmounting detaches it.

Sandboxes made before disks were limited, and every sandbox where loop mounts are
impossible (not root, no /dev/loop-control), keep their layer directly in the sandbox
directory, without a limit: ``layer_dir`` tells which.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import subprocess
from pathlib import Path

from providers.local import syscalls
from providers.local.state import locked

IMAGE = "disk.img"
MOUNT = "disk"
#: Bumped when the template's mkfs options change (old templates are simply not used).
TEMPLATE_VERSION = 1
#: mkfs.ext4 options for a template, and why:
#: - ``^resize_inode``: no reserved GDT blocks (4 MB of written metadata at 8 GB; the
#:   provider never grows a disk in place);
#: - ``lazy_itable_init``/``lazy_journal_init``/``nodiscard``: mkfs writes (and the copy
#:   carries) only the few metadata blocks; the unwritten journal reads as zeros anyway;
#: - the journal stays: after a host crash the image mounts with a replay instead of
#:   needing fsck, and the sandbox's files stay consistent;
#: - ``-m 0``: no blocks reserved for root (root inside may use the whole size);
#: - ``root_owner=0:0``: the layer directories belong to root like the sandbox's own.
MKFS_OPTIONS = (
    "-q", "-F", "-t", "ext4", "-m", "0", "-O", "^resize_inode",
    "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=0:0",
)  # fmt: skip
GiB = 1024**3

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4
MS_NOSUID = 0x2
MS_NODEV = 0x4


class _LoopInfo64(ctypes.Structure):
    _fields_ = [
        ("lo_device", ctypes.c_uint64),
        ("lo_inode", ctypes.c_uint64),
        ("lo_rdevice", ctypes.c_uint64),
        ("lo_offset", ctypes.c_uint64),
        ("lo_sizelimit", ctypes.c_uint64),
        ("lo_number", ctypes.c_uint32),
        ("lo_encrypt_type", ctypes.c_uint32),
        ("lo_encrypt_key_size", ctypes.c_uint32),
        ("lo_flags", ctypes.c_uint32),
        ("lo_file_name", ctypes.c_char * 64),
        ("lo_crypt_name", ctypes.c_char * 64),
        ("lo_encrypt_key", ctypes.c_char * 32),
        ("lo_init", ctypes.c_uint64 * 2),
    ]


class _LoopConfig(ctypes.Structure):
    _fields_ = [
        ("fd", ctypes.c_uint32),
        ("block_size", ctypes.c_uint32),
        ("info", _LoopInfo64),
        ("reserved", ctypes.c_uint64 * 8),
    ]


def problem() -> str | None:
    """Why disk sizes cannot be enforced on this host, or None."""
    if os.geteuid() != 0:
        return "disk sizes are not enforced without root (loop mounts need it)"
    if not os.path.exists("/dev/loop-control"):
        return "disk sizes are not enforced: no /dev/loop-control (modprobe loop)"
    return None


def layer_dir(sandbox_dir: Path) -> Path:
    """The directory holding ``upper/`` and ``work/`` (no mounting; see ensure_mounted)."""
    disk = sandbox_dir / MOUNT
    return disk if (sandbox_dir / IMAGE).exists() else sandbox_dir


def provision(sandbox_dir: Path, size_gb: int, parts: list[str], templates: Path) -> Path:
    """Make the sandbox's size-limited disk with empty ``upper/`` and ``work/`` per part.

    Returns the directory holding them: the mounted disk, or ``sandbox_dir`` itself
    (no limit) where this host cannot mount one (``problem()``).
    """
    target = sandbox_dir if problem() else _new_disk(sandbox_dir, size_gb, templates)
    for part in parts:
        (target / "upper" / part).mkdir(parents=True)
        (target / "work" / part).mkdir(parents=True)
    return target


def ensure_mounted(sandbox_dir: Path) -> Path:
    """``layer_dir``, mounting the disk first if it is not (after a host reboot)."""
    target = layer_dir(sandbox_dir)
    if target != sandbox_dir and not os.path.ismount(target):
        _mount(sandbox_dir / IMAGE, target)
    return target


def flush(sandbox_dir: Path) -> None:
    """Write the disk's dirty data into its image, so the host's free space is honest
    (a snapshot checks it before copying the layer out)."""
    target = sandbox_dir / MOUNT
    if os.path.ismount(target):
        syscalls.syncfs(str(target))


def release(sandbox_dir: Path) -> None:
    """Unmount the sandbox's disk (its loop device detaches itself); idempotent.

    The image file is left for the caller's removal of the sandbox directory.
    """
    target = sandbox_dir / MOUNT
    while os.path.ismount(target):
        try:
            syscalls.umount(str(target))
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            # Something still has it open (an exec racing a delete): detach it now; the
            # kernel frees it, and the loop device, when the last user lets go.
            syscalls.umount(str(target), syscalls.MNT_DETACH)


# --- spares: disks made ahead of time, so a create only renames a directory


SPARE = ".spare-"
#: Ready disks kept per size asked for recently (each holds a loop device and a mount).
SPARES = 2


def take_spare(sandboxes: Path, size_gb: int, dest: Path) -> bool:
    """Move a ready, mounted disk of ``size_gb`` (with empty layers) to ``dest``, the new
    sandbox's directory-to-be; False when there is none. A rename claims it: two creates
    never get the same one, and a directory holding a mount point may be renamed."""
    prefix = f"{SPARE}{size_gb}g-"
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(sandboxes):
            if entry.name.startswith(prefix):
                try:
                    os.rename(entry.path, dest)
                except FileNotFoundError:
                    continue  # another create took it first
                return True
    return False


def make_spares(sandboxes: Path, size_gb: int, parts: list[str], templates: Path) -> None:
    """Top the spares of ``size_gb`` up to ``SPARES`` (built under a temporary name)."""
    if problem():
        return
    prefix = f"{SPARE}{size_gb}g-"
    have = sum(1 for name in os.listdir(sandboxes) if name.startswith(prefix))
    for _ in range(SPARES - have):
        tmp = sandboxes / f".tmp-spare-{size_gb}g-{os.urandom(4).hex()}"
        tmp.mkdir()
        try:
            provision(tmp, size_gb, parts, templates)
            os.rename(tmp, sandboxes / f"{prefix}{os.urandom(4).hex()}")
        except BaseException:
            with contextlib.suppress(OSError):
                release(tmp)
            raise


def _new_disk(sandbox_dir: Path, size_gb: int, templates: Path) -> Path:
    image = sandbox_dir / IMAGE
    _sparse_copy(_template(templates, size_gb), image)
    target = sandbox_dir / MOUNT
    target.mkdir()
    _mount(image, target)
    return target


def _template(templates: Path, size_gb: int) -> Path:
    """The empty ext4 image of ``size_gb``, made once (under a lock) and kept."""
    path = templates / f"ext4-{size_gb}g-v{TEMPLATE_VERSION}.img"
    if path.exists():
        return path
    templates.mkdir(mode=0o700, exist_ok=True)
    with locked(templates / "lock"):
        if path.exists():
            return path
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as handle:
                handle.truncate(size_gb * GiB)
            done = subprocess.run(
                ["mkfs.ext4", *MKFS_OPTIONS, str(tmp)], capture_output=True, text=True
            )
            if done.returncode != 0:
                raise OSError(errno.EIO, f"mkfs.ext4 failed: {done.stderr.strip()[-300:]}")
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return path


def _sparse_copy(source: Path, dest: Path) -> None:
    """Copy only the data extents of ``source`` (a few hundred KB of an 8 GB template)."""
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(src).st_size
            os.ftruncate(out, size)
            offset = 0
            while offset < size:
                try:
                    start = os.lseek(src, offset, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:  # only a hole is left
                        break
                    raise
                end = os.lseek(src, start, os.SEEK_HOLE)
                _copy_range(src, out, start, end)
                offset = end
        finally:
            os.close(out)
    finally:
        os.close(src)


def _copy_range(src: int, out: int, start: int, end: int) -> None:
    position = start
    while position < end:
        copied = os.copy_file_range(src, out, end - position, position, position)
        if copied == 0:
            raise OSError(errno.EIO, "short copy of the disk template")
        position += copied


def _mount(image: Path, target: Path) -> None:
    """Attach ``image`` to a free loop device and mount it at ``target``."""
    loop = _attach(image)
    try:
        # nodev/nosuid: the disk only ever holds a sandbox's layer; devices and setuid
        # binaries in it must not mean anything on the host side.
        syscalls.mount(loop[1], str(target), "ext4", MS_NODEV | MS_NOSUID, "noinit_itable")
    finally:
        # Autoclear: once this is closed, the mount holds the device; unmounting frees it.
        os.close(loop[0])


def _attach(image: Path) -> tuple[int, str]:
    """An open loop device configured on ``image`` (autoclear) and its path."""
    fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        config = _LoopConfig()
        config.fd = fd
        config.block_size = 4096
        # Buffered, not LO_FLAGS_DIRECT_IO: direct I/O first writes back the just-copied
        # image and makes every mount ~1 ms slower; the loop worker charges its page
        # cache to the writer's memory cgroup (Linux 5.14+) either way.
        config.info.lo_flags = LO_FLAGS_AUTOCLEAR
        config.info.lo_file_name = str(image).encode()[:63]
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(64):
                number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                device = f"/dev/loop{number}"
                loop = os.open(device, os.O_RDWR | os.O_CLOEXEC)
                try:
                    fcntl.ioctl(loop, LOOP_CONFIGURE, config)
                    return loop, device
                except OSError as exc:
                    os.close(loop)
                    if exc.errno != errno.EBUSY:  # EBUSY: another process took it first
                        raise
        finally:
            os.close(control)
        raise OSError(errno.EBUSY, "no free loop device")
    finally:
        os.close(fd)
