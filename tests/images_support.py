"""Images for the tests: a Debian root filesystem (built once per machine and cached) and
OCI archives made in the test from a static busybox.

The Debian build needs mmdebstrap and Debian's mirror (a package registry, allowed for
installs); the tarball is cached in ``SANDBOXES_TEST_IMAGE_CACHE`` (default
``~/.cache/sandboxes-test-images``) so CI runs on the same machine reuse it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import urllib.request
from pathlib import Path

from providers.images import debian
from tests.system import require

TEST_PACKAGES = ("git", "python3", "ca-certificates")


def image_cache() -> Path:
    default = Path.home() / ".cache" / "sandboxes-test-images"
    return Path(os.environ.get("SANDBOXES_TEST_IMAGE_CACHE") or default)


def mirror_reachable(mirror: str = debian.DEFAULT_MIRROR) -> bool:
    try:
        url = f"{mirror}/dists/bookworm/Release"
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 (http(s) mirror)
            return answer.status == 200
    except OSError:
        return False


def debian_spec() -> debian.DebianSpec:
    return debian.DebianSpec(suite="bookworm", packages=TEST_PACKAGES)


def debian_rootfs() -> tuple[debian.DebianSpec, Path]:
    """The test Debian root filesystem's tar (from the cache, or built now)."""
    spec = debian_spec()
    cached = image_cache() / f"rootfs-{spec.key()}.tar"
    if not cached.is_file():
        require("mmdebstrap", shutil.which("mmdebstrap") is not None, "apt-get install mmdebstrap")
        require("Debian's mirror", mirror_reachable(), "network access to deb.debian.org")
    return spec, debian.build_rootfs(spec, image_cache())


# --- OCI archives made here


def _add(tar: tarfile.TarFile, name: str, *, data: bytes | None = None, **fields) -> None:
    info = tarfile.TarInfo(name)
    for key, value in fields.items():
        setattr(info, key, value)
    if data is not None:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def layer_tar(build) -> bytes:
    """An uncompressed layer: ``build(tar, add)`` adds its members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        build(tar, lambda name, **fields: _add(tar, name, **fields))
    return buffer.getvalue()


def busybox_base_layer() -> bytes:
    """A small root: a static busybox with its applets, a user ``app`` (1000), /etc."""
    from providers.docker_provider import base_image

    busybox = base_image.find_static_busybox()
    binary = busybox.read_bytes()
    applets = base_image._applets(busybox)

    def build(tar, add):
        for name, mode in (("bin", 0o755), ("etc", 0o755), ("home", 0o755), ("srv", 0o755)):
            add(name, type=tarfile.DIRTYPE, mode=mode)
        add("home/app", type=tarfile.DIRTYPE, mode=0o755, uid=1000, gid=1000)
        add("bin/busybox", data=binary, mode=0o755)
        for applet in applets:
            if applet != "busybox":
                add(f"bin/{applet}", type=tarfile.SYMTYPE, linkname="busybox", mode=0o777)
        passwd = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
        add("etc/passwd", data=passwd, mode=0o644)
        add("etc/group", data=b"root:x:0:\napp:x:1000:\nstaff:x:50:\n", mode=0o644)
        add("etc/base-only", data=b"from the base\n", mode=0o644)
        add("srv/data", type=tarfile.DIRTYPE, mode=0o755)
        add("srv/data/old", data=b"old\n", mode=0o644)
        add("srv/big", data=os.urandom(4 << 20), mode=0o644)

    return layer_tar(build)


def oci_archive(path: Path, layers: list[bytes], config: dict, *, gzip_top: bool = False) -> Path:
    """Write an oci-archive at ``path``: ``layers`` bottom first, ``config`` the image's
    ``config`` object (Env, WorkingDir, User, ExposedPorts)."""
    root = path.with_suffix(".layout")
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}"

    entries = []
    for index, data in enumerate(layers):
        compress = gzip_top and index == len(layers) - 1
        stored = gzip.compress(data, mtime=0) if compress else data
        media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if compress else "")
        entries.append({"mediaType": media, "digest": blob(stored), "size": len(stored)})
    diff_ids = [f"sha256:{hashlib.sha256(data).hexdigest()}" for data in layers]
    image_config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": blob(image_config),
                "size": len(image_config),
            },
            "layers": entries,
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": blob(manifest),
                "size": len(manifest),
            }
        ],
    }
    (root / "index.json").write_text(json.dumps(index))
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    with tarfile.open(path, "w") as tar:
        for item in sorted(root.iterdir()):
            tar.add(item, arcname=item.name)
    shutil.rmtree(root)
    return path
