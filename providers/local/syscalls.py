"""The few Linux system calls Python's ``os`` module lacks (3.11): mount, unshare, setns, caps,
the new mount API (idmapped mounts) and per-thread file-system ids.

Everything here is a thin ctypes wrapper that raises ``OSError`` with the errno, so callers
handle failures like any other file-system error.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)

CLONE_FS = 0x00000200
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 0x2

MS_NOSUID = 0x2
MS_NODEV = 0x4

# The new mount API (Linux 5.12+ for idmapped mounts); the numbers are the same on every
# architecture that has these calls.
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
_OPEN_TREE_CLONE = 1
_OPEN_TREE_CLOEXEC = 0o2000000
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_IDMAP = 0x100000

PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

#: The capabilities a sandbox's root keeps: Docker's default set without MKNOD. Missing on
#: purpose: SYS_ADMIN (mounts), DAC_READ_SEARCH (open_by_handle_at escapes), SYS_PTRACE,
#: SYS_MODULE, SYS_RAWIO, NET_ADMIN, MKNOD and the rest.
SANDBOX_CAPS = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_RAW": 13,
    "CAP_SYS_CHROOT": 18,
    "CAP_AUDIT_WRITE": 29,
    "CAP_SETFCAP": 31,
}


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    _check(
        _libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _syscall(number: int, *args, what: str) -> int:
    result = _libc.syscall(ctypes.c_long(number), *args)
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


def idmap_in_place(path: str, userns_fd: int) -> None:
    """Cover ``path`` with an idmapped bind mount of itself (this mount namespace only).

    Files stored with ids 0..N on disk then appear through ``path`` with the ids the
    user namespace maps them to (root of a sandbox = its host id range), and files
    written through it are stored with the ids as the sandbox sees them.
    """
    tree = _syscall(
        _SYS_OPEN_TREE,
        ctypes.c_int(_AT_FDCWD),
        path.encode(),
        ctypes.c_uint(_OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC),
        what=f"open_tree {path}",
    )
    try:
        attr = _MountAttr(_MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
        _syscall(
            _SYS_MOUNT_SETATTR,
            ctypes.c_int(tree),
            b"",
            ctypes.c_uint(_AT_EMPTY_PATH),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
            what=f"idmapped mount of {path}",
        )
        _syscall(
            _SYS_MOVE_MOUNT,
            ctypes.c_int(tree),
            b"",
            ctypes.c_int(_AT_FDCWD),
            path.encode(),
            ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH),
            what=f"move_mount {path}",
        )
    finally:
        os.close(tree)


def set_thread_fs_ids(uid: int, gid: int) -> None:
    """Set this thread's file-system uid and gid (Linux keeps them per thread).

    Changing the fsuid away from 0 clears the file-system capabilities from the effective
    set; they are raised again from the permitted set, so the thread stays privileged.
    """
    _libc.setfsgid(ctypes.c_uint(gid))
    _libc.setfsuid(ctypes.c_uint(uid))
    header = _CapHeader(_CAP_V3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    for index in range(2):
        data[index].effective = data[index].permitted
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), flags), f"umount {target}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def syncfs(path: str) -> None:
    """Write back everything dirty on the file system holding ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.syncfs(fd), f"syncfs {path}")
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return 40


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_CAP_V3 = 0x20080522


def restrict_capabilities(keep: set[int], last: int) -> None:
    """Shrink the bounding, inheritable and ambient sets to ``keep``.

    After the next execve, uid 0 gets exactly the bounding set, so a process entering a
    sandbox cannot carry the host's capabilities (mount, mknod...) into it.
    """
    for cap in range(last + 1):
        if cap not in keep:
            _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "drop capability")
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _CapHeader(_CAP_V3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    mask = sum(1 << cap for cap in keep)
    for index in range(2):
        part = (mask >> (32 * index)) & 0xFFFFFFFF
        data[index].inheritable &= part
    _check(_libc.capset(ctypes.byref(header), data), "capset")
