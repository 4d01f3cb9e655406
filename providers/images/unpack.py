"""Apply one image layer (a tar) to a directory, safely, as an overlayfs lower layer.

OCI whiteouts become overlayfs ones: ``.wh.NAME`` a 0/0 character device ``NAME`` (a
deleted entry), ``.wh..wh..opq`` the opaque mark on its directory (nothing of the layers
below shows through). Every member is checked first, since a layer comes from anyone:

* names are relative, normalised, and never climb out (``..``) or start at ``/``;
* no member is written through a symlink (one the layer made earlier, ``a -> /etc`` then
  ``a/passwd``): every parent is checked to be a real directory inside the target;
* hard links point at a regular file the layer itself already holds, inside the target;
* device nodes are refused (skipped and reported): a sandbox's root has no use for
  them, and ``/dev`` is the sandbox's own tmpfs anyway.

Owners, modes and times are kept (when run as root: the sandbox's ids are mapped onto
the layer by an idmapped mount at start).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from providers.images import ImageError

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
#: overlayfs marks opaque directories with a trusted.* xattr; mounted by an unprivileged
#: user (``userxattr``), with a user.* one (the same choice as providers/local/layers.py).
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


class UnsafeLayer(ImageError):
    """A layer tried to write outside its directory (or through a link)."""


@dataclass
class Applied:
    files: int = 0
    whiteouts: int = 0
    opaque: int = 0
    #: Members refused and left out (device nodes), by name.
    skipped: list[str] = field(default_factory=list)


def clean_name(name: str) -> str:
    """The member's path relative to the layer's root; UnsafeLayer if it escapes."""
    parts = []
    for part in name.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise UnsafeLayer(f"layer member {name[:200]!r} climbs out of the layer")
        parts.append(part)
    return "/".join(parts)


def apply_layer(tar_path: Path, target: Path, *, privileged: bool | None = None) -> Applied:
    """Unpack the tar at ``tar_path`` (plain or gzip) into ``target`` (made if missing)."""
    if privileged is None:
        privileged = os.geteuid() == 0
    target.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(target)
    done = Applied()
    directories: list[tuple[str, tarfile.TarInfo]] = []
    try:
        archive = tarfile.open(tar_path, mode="r:*")  # noqa: SIM115 (closed below)
    except (tarfile.TarError, OSError) as exc:
        raise ImageError(f"{tar_path.name} is not a readable tar: {exc}") from exc
    with archive:
        try:
            _apply(archive, root, privileged, done, directories)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise ImageError(f"{tar_path.name} is damaged: {exc}") from exc
    # Deepest first, so setting a read-only mode never blocks what comes after. A later
    # member may have replaced a directory (or one of its parents) with a symlink: chmod
    # follows symlinks, so each one is checked to still be a directory of the layer.
    for path, member in sorted(directories, key=lambda item: -item[0].count("/")):
        if _inside_as_directories(root, path):
            _set_metadata(path, member, privileged, symlink=False)
    return done


def _apply(
    archive: tarfile.TarFile,
    root: str,
    privileged: bool,
    done: Applied,
    directories: list[tuple[str, tarfile.TarInfo]],
) -> None:
    for member in archive:
        name = clean_name(member.name)
        if not name:
            continue  # the root itself
        parent_rel, _, base = name.rpartition("/")
        parent = _safe_parent(root, parent_rel, name)
        path = os.path.join(parent, base)
        if base == OPAQUE:
            os.setxattr(parent, OPAQUE_XATTRS[0 if privileged else 1], b"y")
            done.opaque += 1
            continue
        if base.startswith(WHITEOUT):
            hidden = base[len(WHITEOUT) :]
            if not hidden or hidden in (".", ".."):
                raise UnsafeLayer(f"layer member {name[:200]!r} is a malformed whiteout")
            gone = os.path.join(parent, hidden)
            _remove(gone)
            try:
                os.mknod(gone, stat.S_IFCHR | 0o000, os.makedev(0, 0))
            except PermissionError:
                raise ImageError(
                    "this image deletes files in an upper layer (a whiteout), which only "
                    "root can store for overlayfs: import it as root"
                ) from None
            done.whiteouts += 1
            continue
        if member.ischr() or member.isblk():
            done.skipped.append(name)
            continue
        if member.isdir():
            if os.path.lexists(path) and not _is_real_dir(path):
                _remove(path)
            if not os.path.lexists(path):
                os.mkdir(path, 0o700)
            directories.append((path, member))
            continue
        _remove(path)
        if member.isreg():
            source = archive.extractfile(member)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out, source:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
        elif member.issym():
            os.symlink(member.linkname, path)
        elif member.islnk():
            link = clean_name(member.linkname)
            link_parent, _, link_base = link.rpartition("/")
            existing = os.path.join(_safe_parent(root, link_parent, link), link_base)
            if not link_base or not _is_regular(existing):
                raise UnsafeLayer(
                    f"hard link {name[:200]!r} points at {member.linkname[:200]!r}, "
                    "which is not a file of this layer"
                )
            os.link(existing, path, follow_symlinks=False)
            done.files += 1
            continue  # shares its inode's owner and mode
        elif member.isfifo():
            os.mkfifo(path, 0o600)
        else:
            done.skipped.append(name)
            continue
        _set_metadata(path, member, privileged, symlink=member.issym())
        done.files += 1


def _inside_as_directories(root: str, path: str) -> bool:
    """Whether every step from ``root`` to ``path`` is a real directory (no symlink)."""
    relative = os.path.relpath(path, root)
    current = root
    for part in relative.split("/"):
        current = os.path.join(current, part)
        if not _is_real_dir(current):
            return False
    return True


def _safe_parent(root: str, relative: str, name: str) -> str:
    """The directory ``relative`` under ``root``, every step a real directory (made if
    missing); never a symlink, so nothing is written outside ``root``."""
    current = root
    if not relative:
        return current
    for part in relative.split("/"):
        current = os.path.join(current, part)
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            os.mkdir(current, 0o755)
            continue
        if stat.S_ISLNK(info.st_mode):
            raise UnsafeLayer(f"layer member {name[:200]!r} would be written through a symlink")
        if not stat.S_ISDIR(info.st_mode):
            raise UnsafeLayer(f"layer member {name[:200]!r} has a non-directory as its parent")
    return current


def _is_real_dir(path: str) -> bool:
    with contextlib.suppress(OSError):
        return stat.S_ISDIR(os.lstat(path).st_mode)
    return False


def _is_regular(path: str) -> bool:
    with contextlib.suppress(OSError):
        return stat.S_ISREG(os.lstat(path).st_mode)
    return False


def _remove(path: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _set_metadata(path: str, member: tarfile.TarInfo, privileged: bool, *, symlink: bool) -> None:
    if privileged:
        with contextlib.suppress(OSError):
            os.lchown(path, member.uid, member.gid)
    if not symlink:
        os.chmod(path, member.mode & 0o7777)
    with contextlib.suppress(OSError):
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
