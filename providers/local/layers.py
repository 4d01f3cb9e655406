"""Root file systems as stacks of read-only layers.

A sandbox's root is an overlayfs per *part* (``/`` and ``/usr``): its own writable layer
on top of the read-only layers of the snapshot it started from, on top of the base.

The base (ref ``base``) is built here on first use, idempotently and under a lock:

* ``/`` is a small real root: the usual directories, symlinks (``/bin`` -> ``usr/bin``)
  and an ``/etc`` written for sandboxes: system accounts only, no password hashes, and
  copies of a fixed list of public host files (dynamic linker cache, alternatives, CA
  certificates...). Nothing else of the host's /etc (credentials, daemon configs) enters.
* ``/usr`` is the host's /usr seen through overlayfs (so tools installed on the host work
  in sandboxes, and a sandbox's changes stay in its own layer), except ``/usr/local``,
  which the base hides behind an empty opaque directory: hosts keep local configuration
  and credentials there.

A snapshot is a copy of a sandbox's writable layer, stored under ``snapshots/<ref>/layer``
with a manifest naming the layers below it (its *chain*). Starting from a snapshot stacks
the chain, so start time does not depend on snapshot size; when a chain grows past
``LOCAL_SANDBOX_MAX_LAYERS`` the next snapshot is flattened into one layer over the base.

Imported images (``import_image``) stack differently: their layers are unpacked once
each into ``<root>/layers/<sha256>/root`` (an image sharing a layer with another stores
it once), OCI whiteouts translated into overlayfs ones (``providers/images/unpack.py``),
and a snapshot holds a small top layer (mount points, /etc/hosts) and a chain ending in
the layers' digests instead of ``base``. Such a sandbox has one overlay, its whole root;
the image's configuration (Env, WorkingDir, User, ExposedPorts) is kept in the
snapshot's manifest and in every snapshot made from it. Layers nothing stacks any more
are removed when a snapshot is deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import time
from pathlib import Path

from providers.errors import Conflict, NotFound, OperationFailed
from providers.images import ImageError, ImageSource, unpack
from providers.local import syscalls
from providers.local.state import Store, atomic_write, locked, raise_disk_full

BASE_REF = "base"
BASE_FORMAT = 1
SNAPSHOT_RE = re.compile(r"snap-[0-9a-f]{16}")
#: An image layer in a chain: stored once by the digest of its tar (see import_image).
LAYER_RE = re.compile(r"sha256:([0-9a-f]{64})")
#: The one part of a sandbox made from an image: the image is its whole root.
IMAGE_PARTS = {"/": "root"}
#: Mount points and files of an image's root that the provider needs (the top layer an
#: import writes above the image's own layers).
IMAGE_DIRS = {"dev": 0o755, "proc": 0o555, "sys": 0o555, "run": 0o755, "tmp": 0o1777}
#: overlayfs marks opaque directories with a trusted.* xattr; mounted by an unprivileged
#: user (``userxattr``), with a user.* one.
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


def opaque_xattr(privileged: bool) -> str:
    return OPAQUE_XATTRS[0] if privileged else OPAQUE_XATTRS[1]


#: Overlay parts: mount point inside the sandbox -> the part's directory name in a layer.
PARTS = {"/": "root", "/usr": "usr"}

#: Host /etc entries that are public and that programs need; everything else is left out.
HOST_ETC_COPY = (
    "alternatives",
    "bash.bashrc",
    "ca-certificates.conf",
    "debian_version",
    "ethertypes",
    "gai.conf",
    "host.conf",
    "inputrc",
    "issue",
    "issue.net",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "login.defs",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "pam.d",
    "protocols",
    "python3",
    "python3.11",
    "security",
    "services",
    "shells",
    "skel",
    "ssl/certs",
    "ssl/openssl.cnf",
    "timezone",
)
ROOT_DIRS = {
    "dev": 0o755,
    "proc": 0o555,
    "sys": 0o555,
    "run": 0o755,
    "run/lock": 0o1777,
    "tmp": 0o1777,
    "var": 0o755,
    "var/tmp": 0o1777,
    "var/log": 0o755,
    "var/cache": 0o755,
    "var/lib": 0o755,
    "var/spool": 0o755,
    "root": 0o700,
    "home": 0o755,
    "workspace": 0o755,
    "etc": 0o755,
    "opt": 0o755,
    "srv": 0o755,
    "mnt": 0o755,
    "media": 0o755,
    "usr": 0o755,
}
USR_LOCAL_DIRS = ("bin", "etc", "games", "include", "lib", "sbin", "share", "src")


class Layers:
    def __init__(self, store: Store, host_usr: Path, max_layers: int) -> None:
        self.store = store
        self.host_usr = host_usr
        self.max_layers = max_layers

    # --- refs and chains

    def chain(self, ref: str) -> list[str]:
        """The layers a sandbox made from ``ref`` stacks, top first; NotFound if missing."""
        if ref == BASE_REF:
            self.ensure_base()
            return [BASE_REF]
        if not isinstance(ref, str) or not SNAPSHOT_RE.fullmatch(ref):
            raise NotFound(f"snapshot {str(ref)[:80]!r} does not exist", ref=str(ref)[:80])
        manifest = self._manifest(ref)
        if manifest is None:
            raise NotFound(f"snapshot {ref} does not exist", ref=ref)
        if BASE_REF in manifest["chain"]:
            self.ensure_base()
        return list(manifest["chain"])

    def _manifest(self, ref: str) -> dict | None:
        try:
            return json.loads((self.store.snapshots / ref / "manifest.json").read_text())
        except (FileNotFoundError, NotADirectoryError):
            return None

    def snapshot_refs(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.store.snapshots) if SNAPSHOT_RE.fullmatch(n))
        except FileNotFoundError:
            return []

    def lowers(self, chain: list[str], part: str) -> list[Path]:
        """Lower directories for one part, top first (overlayfs ``lowerdir`` order)."""
        found: list[Path] = []
        for ref in chain:
            if ref == BASE_REF:
                found.extend(self._base_lowers(part))
            elif (layer := LAYER_RE.fullmatch(ref)) is not None:
                path = self.store.root / "layers" / layer.group(1) / part
                if not path.is_dir():
                    raise OperationFailed(f"image layer {ref[:19]} is missing")
                found.append(path)
            else:
                path = self.store.snapshots / ref / "layer" / part
                if not path.is_dir():
                    raise OperationFailed(f"snapshot {ref} is damaged: its layer is missing")
                found.append(path)
        return found

    def _base_lowers(self, part: str) -> list[Path]:
        manifest = json.loads((self.store.base / "manifest.json").read_text())
        return [
            Path(p) if os.path.isabs(p) else self.store.base / p
            for p in manifest["parts"].get(part, [])
        ]

    # --- the base

    def ensure_base(self) -> None:
        if (self.store.base / "manifest.json").exists():
            return
        self.store.ensure_dirs()
        with locked(self.store.root / "base.lock"):
            if (self.store.base / "manifest.json").exists():
                return
            tmp = self.store.root / f".base-tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                build_base(tmp, self.host_usr)
                os.replace(tmp, self.store.base)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise_disk_full(exc, self.store.root)
                raise OperationFailed(f"could not build the base layer: {exc}") from exc

    # --- snapshots

    def copy_layer(self, upper: Path) -> tuple[str, Path]:
        """Copy a (frozen or stopped) writable layer aside: the slow part of a snapshot."""
        ref = f"snap-{secrets.token_hex(8)}"
        # "@pid": a copy can outlast the stale-leftover sweep; this one is in use while
        # its process lives (``in_use_leftover``).
        tmp = self.store.snapshots / f".tmp-{ref}@{os.getpid()}"
        try:
            tmp.mkdir()
            _copy_tree(upper, tmp / "layer")
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise_disk_full(exc, self.store.root)
            raise
        return ref, tmp

    def publish(self, ref: str, tmp: Path, chain: list[str], source: str) -> int:
        """Flatten if the chain is too deep, write the manifest, publish the snapshot."""
        try:
            image = self.image_config(chain)
            # Snapshots above the base (or the image's layers, which stay shared).
            below = [r for r in chain if SNAPSHOT_RE.fullmatch(r)]
            if len(below) + 1 > self.max_layers:
                flat = tmp / "flat"
                flat.mkdir()
                for lower in reversed(below):
                    _apply_layer(self.store.snapshots / lower / "layer", flat)
                _apply_layer(tmp / "layer", flat)
                shutil.rmtree(tmp / "layer")
                os.rename(flat, tmp / "layer")
                chain = [r for r in chain if not SNAPSHOT_RE.fullmatch(r)]
            size = disk_usage(tmp / "layer")
            manifest = {
                "ref": ref,
                "chain": [ref, *chain],
                "created_at": time.time(),
                "source_sandbox": source,
                "size_bytes": size,
            }
            if image is not None:
                manifest["image"] = image
            atomic_write(tmp / "manifest.json", json.dumps(manifest, indent=1))
            # A version the control plane records as ready must survive a power cut:
            # one syncfs writes the copied layer back (fsync per file would cost a
            # journal commit per file), then the rename is made durable too.
            syscalls.syncfs(str(tmp))
            os.rename(tmp, self.store.snapshots / ref)
            syscalls.fsync_dir(str(self.store.snapshots))
            return size
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise_disk_full(exc, self.store.root)
            raise

    def users(self, ref: str, sandbox_chains: dict[str, list[str]]) -> list[str]:
        """Sandboxes and snapshots that stack ``ref`` (so it cannot be deleted)."""
        found = [f"sandbox {sid}" for sid, chain in sandbox_chains.items() if ref in chain]
        for other in self.snapshot_refs():
            if other != ref:
                manifest = self._manifest(other)
                if manifest and ref in manifest["chain"]:
                    found.append(f"snapshot {other}")
        return found

    def delete(self, ref: str, sandbox_chains: dict[str, list[str]]) -> None:
        """Remove a snapshot (or the built base) nothing stacks; idempotent."""
        if ref == BASE_REF:
            target = self.store.base
        elif isinstance(ref, str) and SNAPSHOT_RE.fullmatch(ref):
            target = self.store.snapshots / ref
        else:
            return
        if not target.exists():
            return
        users = self.users(ref, sandbox_chains)
        if users:
            listed = ", ".join(users[:5]) + (" ..." if len(users) > 5 else "")
            raise Conflict(f"snapshot {ref} is in use by {listed}", ref=ref)
        trash = self.store.root / f".trash-{ref}-{secrets.token_hex(4)}"
        os.rename(target, trash)
        shutil.rmtree(trash, ignore_errors=True)
        self.prune_layers(sandbox_chains)

    # --- images

    def image_config(self, chain: list[str]) -> dict | None:
        """The image configuration of a chain made from an imported image (None: the base)."""
        for ref in chain:
            if SNAPSHOT_RE.fullmatch(ref):
                manifest = self._manifest(ref)
                if manifest and "image" in manifest:
                    return manifest["image"]
        return None

    def layer_dir(self, digest: str) -> Path:
        match = LAYER_RE.fullmatch(digest)
        if match is None:
            raise ValueError(f"{digest[:80]!r} is not a sha256 layer digest")
        return self.store.root / "layers" / match.group(1)

    def import_image(self, source: ImageSource) -> tuple[str, int, int]:
        """Store an image: each layer once by digest, and a snapshot stacking them.

        Returns the snapshot's ref, the bytes written for it (layers not stored before,
        and the small top layer) and how many of its layers were already stored.
        """
        if not source.layers:
            raise ImageError("the image has no layers")
        (self.store.root / "layers").mkdir(exist_ok=True, mode=0o700)
        privileged = os.geteuid() == 0
        written = 0
        reused = 0
        with locked(self.store.root / "layers.lock"):
            for layer in source.layers:
                final = self.layer_dir(layer.digest)
                if (final / "root").is_dir():
                    reused += 1
                    continue
                tmp = final.with_name(f".tmp-{final.name[:16]}@{os.getpid()}")
                shutil.rmtree(tmp, ignore_errors=True)
                try:
                    unpack.apply_layer(layer.path, tmp / "root", privileged=privileged)
                    os.chmod(tmp / "root", 0o755)  # noqa: S103 (a root directory)
                    written += disk_usage(tmp)
                    syscalls.syncfs(str(tmp))
                    os.rename(tmp, final)
                except BaseException as exc:
                    shutil.rmtree(tmp, ignore_errors=True)
                    if isinstance(exc, OSError):
                        raise_disk_full(exc, self.store.root)
                        raise OperationFailed(f"could not store layer: {exc}") from exc
                    raise
            layer_refs = [layer.digest for layer in reversed(source.layers)]
            user = resolve_user(source.config.user, self.lowers(layer_refs, "root"))
            ref = f"snap-{secrets.token_hex(8)}"
            tmp = self.store.snapshots / f".tmp-{ref}@{os.getpid()}"
            try:
                top = tmp / "layer" / "root"
                top.mkdir(parents=True)
                _write_image_top(top)
                image = source.config.as_dict()
                image["uid"], image["gid"], image["home"] = user
                image["description"] = source.description[:300]
                manifest = {
                    "ref": ref,
                    "chain": [ref, *layer_refs],
                    "created_at": time.time(),
                    "source_sandbox": "",
                    "size_bytes": written,
                    "image": image,
                }
                atomic_write(tmp / "manifest.json", json.dumps(manifest, indent=1))
                written += disk_usage(tmp)
                syscalls.syncfs(str(tmp))
                os.rename(tmp, self.store.snapshots / ref)
                syscalls.fsync_dir(str(self.store.snapshots))
            except BaseException as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                if isinstance(exc, OSError):
                    raise_disk_full(exc, self.store.root)
                raise
        return ref, written, reused

    def prune_layers(self, sandbox_chains: dict[str, list[str]]) -> None:
        """Remove image layers no snapshot and no sandbox stacks any more."""
        directory = self.store.root / "layers"
        if not directory.is_dir():
            return
        # Under the lock an import holds until its snapshot is published: a layer it just
        # stored is then named by that snapshot's manifest.
        with locked(self.store.root / "layers.lock"):
            used = {r for chain in sandbox_chains.values() for r in chain}
            for ref in self.snapshot_refs():
                manifest = self._manifest(ref)
                if manifest:
                    used.update(manifest["chain"])
            for name in os.listdir(directory):
                if re.fullmatch(r"[0-9a-f]{64}", name) and f"sha256:{name}" not in used:
                    trash = self.store.root / f".trash-layer-{name[:16]}-{secrets.token_hex(4)}"
                    os.rename(directory / name, trash)
                    shutil.rmtree(trash, ignore_errors=True)


def parts_for(chain: list[str]) -> dict[str, str]:
    """The overlay parts of a sandbox stacking ``chain``: the base's (a root and the
    host's /usr), or an image's one root."""
    return dict(PARTS) if BASE_REF in chain else dict(IMAGE_PARTS)


def _write_image_top(top: Path) -> None:
    """What the provider adds above an image: mount points, and a hosts file."""
    for name, mode in IMAGE_DIRS.items():
        (top / name).mkdir()
        os.chmod(top / name, mode)
    etc = top / "etc"
    etc.mkdir()
    os.chmod(etc, 0o755)  # noqa: S103 (/etc)
    hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    (etc / "hosts").write_text(hosts)


def resolve_user(spec: str, roots: list[Path]) -> tuple[int, int, str]:
    """An image's ``User`` (``name``, ``uid``, ``name:group``, ``uid:gid``) as ids and a
    home directory, read from the image's own /etc/passwd and /etc/group (top layer first)."""
    spec = (spec or "").strip()
    if not spec:
        return 0, 0, "/root"
    user, _, group = spec.partition(":")
    passwd = _image_file(roots, "etc/passwd")
    groups = _image_file(roots, "etc/group")
    uid = gid = None
    home = "/"
    for line in passwd.splitlines():
        fields = line.split(":")
        named = len(fields) >= 6 and user in (fields[0], fields[2])
        if named and fields[2].isdigit() and fields[3].isdigit():
            uid, gid, home = int(fields[2]), int(fields[3]), fields[5] or "/"
            break
    if uid is None:
        if not user.isdigit():
            raise ImageError(f"the image's user {user[:40]!r} is not in its /etc/passwd")
        uid, gid = int(user), 0
    if group:
        found = None
        for line in groups.splitlines():
            fields = line.split(":")
            if len(fields) >= 3 and (fields[0] == group or fields[2] == group):
                found = int(fields[2]) if fields[2].isdigit() else None
                break
        if found is None:
            if not group.isdigit():
                raise ImageError(f"the image's group {group[:40]!r} is not in its /etc/group")
            found = int(group)
        gid = found
    if uid > 65535 or gid > 65535:
        raise ImageError(f"the image's user {spec[:40]!r} is beyond the sandbox's 65536 ids")
    return uid, gid, home


def _image_file(roots: list[Path], relative: str) -> str:
    """A file of the image, read from the topmost layer holding it. No symlink is
    followed, not even a parent directory's (an image's ``etc -> /etc`` must not make
    the host's file the image's)."""
    for root in roots:  # top first
        current = root
        parts = relative.split("/")
        try:
            for part in parts[:-1]:
                current = current / part
                if not stat.S_ISDIR(os.lstat(current).st_mode):
                    raise NotADirectoryError(current)
            fd = os.open(current / parts[-1], os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as handle:
            if stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return handle.read(1 << 20).decode(errors="replace")
    return ""


def build_base(target: Path, host_usr: Path) -> None:
    """Write the base layer (``root`` and ``usr`` parts and a manifest) into ``target``."""
    root = target / "root"
    root.mkdir(parents=True)
    for name, mode in ROOT_DIRS.items():
        (root / name).mkdir(exist_ok=True)
        os.chmod(root / name, mode)
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        if (host_usr / name).is_dir():
            os.symlink(f"usr/{name}", root / name)
    os.symlink("../run", root / "var/run")
    os.symlink("../run/lock", root / "var/lock")
    _write_etc(root / "etc")
    usr = target / "usr"
    local = usr / "local"
    local.mkdir(parents=True)
    for name in USR_LOCAL_DIRS:
        (local / name).mkdir()
    os.symlink("share/man", local / "man")
    os.setxattr(local, opaque_xattr(os.geteuid() == 0), b"y")
    manifest = {"format": BASE_FORMAT, "parts": {"root": ["root"], "usr": ["usr", str(host_usr)]}}
    (target / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _write_etc(etc: Path) -> None:
    host = Path("/etc")
    for name in HOST_ETC_COPY:
        source = host / name
        if not os.path.lexists(source):
            continue
        dest = etc / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            if source.is_dir() and not source.is_symlink():
                shutil.copytree(source, dest, symlinks=True)
            else:
                shutil.copy2(source, dest, follow_symlinks=False)
    users = _system_entries(host / "passwd", id_field=2)
    groups = _system_entries(host / "group", id_field=2)
    if not any(line.startswith("root:") for line in users):
        users.insert(0, "root:x:0:0:root:/root:/bin/bash")
    if not any(line.startswith("root:") for line in groups):
        groups.insert(0, "root:x:0:")
    kept = {line.split(":")[0] for line in users}
    groups = [_only_members(line, kept) for line in groups]
    files = {
        "passwd": "\n".join(users),
        "group": "\n".join(groups),
        # No password hashes: accounts are locked; root inside a sandbox needs none.
        "shadow": "\n".join(f"{u.split(':')[0]}:*:19000:0:99999:7:::" for u in users),
        "gshadow": "\n".join(f"{g.split(':')[0]}:*::" for g in groups),
        "hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback",
        "resolv.conf": "# sandboxes have loopback networking only",
        "fstab": "# the sandbox's file systems are set up by its provider",
        "profile": (
            'PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"\n'
            "export PATH\n"
            'if [ -n "$BASH_VERSION" ] && [ -f /etc/bash.bashrc ]; then . /etc/bash.bashrc; fi'
        ),
    }
    for name, text in files.items():
        (etc / name).write_text(text + "\n")
    os.chmod(etc / "shadow", 0o640)
    os.chmod(etc / "gshadow", 0o640)
    with contextlib.suppress(FileExistsError):
        os.symlink("../proc/self/mounts", etc / "mtab")


def _system_entries(path: Path, *, id_field: int) -> list[str]:
    """Lines of passwd/group for system ids (below 1000, and nobody/nogroup)."""
    kept = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            fields = line.split(":")
            if len(fields) > id_field and fields[id_field].isdigit():
                number = int(fields[id_field])
                if number < 1000 or number == 65534:
                    kept.append(line)
    return kept


def _only_members(line: str, users: set[str]) -> str:
    fields = line.split(":")
    if len(fields) == 4:
        fields[3] = ",".join(m for m in fields[3].split(",") if m in users)
    return ":".join(fields)


def _copy_tree(source: Path, dest: Path) -> None:
    """``cp -a`` (keeps owners, modes, xattrs like overlay's opaque markers, whiteouts)."""
    done = subprocess.run(
        ["cp", "-a", "--sparse=always", str(source), str(dest)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        message = done.stderr.strip()[-500:]
        if "No space left" in message or "Disk quota" in message:
            raise OSError(28, message)
        raise OperationFailed(f"copying a layer failed: {message}")


def _is_opaque(path: str) -> bool:
    for name in OPAQUE_XATTRS:
        with contextlib.suppress(OSError):
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
    return False


def _apply_layer(layer: Path, target: Path) -> None:
    """Put ``layer`` on top of the flattened ``target`` with overlayfs semantics.

    Whiteouts and opaque directories replace what is below them (and are kept, since
    the base still lies under the flattened layer); any other entry replaces a
    non-directory below it, and directories merge.
    """
    for directory, dirnames, filenames in os.walk(layer):
        relative = os.path.relpath(directory, layer)
        for name in [*dirnames, *filenames]:
            source = os.path.join(directory, name)
            dest = os.path.join(target, relative, name)
            if not os.path.lexists(dest):
                continue
            info = os.lstat(source)
            dest_is_dir = os.path.isdir(dest) and not os.path.islink(dest)
            source_is_dir = stat.S_ISDIR(info.st_mode)
            if source_is_dir and dest_is_dir and not _is_opaque(source):
                continue  # merge
            if dest_is_dir:
                shutil.rmtree(dest)
            else:
                os.unlink(dest)
    done = subprocess.run(
        ["cp", "-a", "--sparse=always", f"{layer}/.", str(target)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        message = done.stderr.strip()[-500:]
        if "No space left" in message:
            raise OSError(28, message)
        raise OperationFailed(f"flattening layers failed: {message}")


def disk_usage(path: Path) -> int:
    """Bytes the files under ``path`` take on disk (allocated blocks, not their lengths)."""
    total = 0
    for directory, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
    return total


def in_use_leftover(name: str) -> bool:
    """Whether a temporary directory named ``...@<pid>`` belongs to a live process."""
    _, _, pid = name.rpartition("@")
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    return True
