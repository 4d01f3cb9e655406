"""Copy an OCI or Docker image with skopeo into an OCI layout, and read it.

Sources, in skopeo's transport syntax: ``oci-archive:PATH``, ``docker-archive:PATH``,
``docker-daemon:NAME[:TAG]`` and ``docker://REGISTRY/NAME:TAG``. skopeo does the transport
(registries, authentication files, archive formats, digest checks); this module reads
the layout it writes: the manifest for the platform, the config's ``Env``,
``WorkingDir``, ``User`` and ``ExposedPorts``, and the layers with their ``diff_ids`` (the
digest of the uncompressed tar: what identifies a layer however it was compressed).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from providers.images import ImageConfig, ImageError, ImageSource, Layer

TRANSPORTS = ("oci-archive:", "docker-archive:", "docker-daemon:", "docker://")
_REF = re.compile(r"[A-Za-z0-9._/:@+-]+")
LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
)


def is_image_ref(ref: str) -> bool:
    """Whether ``ref`` names an image source (rather than a provider's own reference)."""
    return isinstance(ref, str) and ref.startswith(TRANSPORTS)


def check_ref(ref: str) -> str:
    """``ref`` if it is a source skopeo may read; ValueError with the accepted forms."""
    if not is_image_ref(ref):
        raise ValueError(
            "an image reference is oci-archive:PATH, docker-archive:PATH, "
            "docker-daemon:NAME[:TAG] or docker://REGISTRY/NAME:TAG"
        )
    transport, _, rest = ref.partition(":")
    rest = rest.removeprefix("//")
    if not rest or not _REF.fullmatch(rest) or rest.startswith("-") or ".." in rest.split("/"):
        raise ValueError(f"image reference {ref[:120]!r} has characters that are not allowed")
    if transport in ("oci-archive", "docker-archive") and not Path(rest.split(":")[0]).is_file():
        raise ValueError(f"{rest.split(':')[0][:200]} does not exist")
    return ref


def problem() -> str:
    if shutil.which("skopeo") is None:
        return "skopeo is not installed (apt-get install skopeo)"
    return ""


def copy_to_layout(
    ref: str, layout: Path, *, docker_host: str = "", timeout: float = 1800
) -> ImageSource:
    """Copy ``ref`` into the OCI layout ``layout`` (a new directory) and read it."""
    check_ref(ref)
    missing = problem()
    if missing:
        raise ImageError(missing)
    argv = ["skopeo", "--insecure-policy", "copy", "--quiet"]
    if ref.startswith("docker-daemon:") and docker_host:
        argv += ["--src-daemon-host", docker_host]
    argv += [ref, f"oci:{layout}:image"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ImageError(f"copying {ref} took longer than {timeout:.0f} s") from None
    if done.returncode != 0:
        raise ImageError(f"skopeo could not copy {ref}: {done.stderr.strip()[-600:]}")
    return read_layout(layout, description=ref)


def _blob(layout: Path, digest: str) -> Path:
    algorithm, _, hexdigest = str(digest).partition(":")
    if algorithm != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
        raise ImageError(f"unsupported digest {str(digest)[:80]!r}")
    return layout / "blobs" / "sha256" / hexdigest


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ImageError(f"the image's {path.name} cannot be read: {exc}") from exc


def read_layout(layout: Path, *, description: str = "") -> ImageSource:
    """The image in an OCI layout (its first manifest; an index picks linux/amd64)."""
    index = _json(layout / "index.json")
    manifests = index.get("manifests") or []
    if not manifests:
        raise ImageError("the image layout holds no manifest")
    manifest = _json(_blob(layout, manifests[0]["digest"]))
    if "manifests" in manifest:  # an index: choose the platform
        chosen = [
            m
            for m in manifest["manifests"]
            if (m.get("platform") or {}).get("architecture") == "amd64"
            and (m.get("platform") or {}).get("os") == "linux"
        ] or manifest["manifests"]
        manifest = _json(_blob(layout, chosen[0]["digest"]))
    config = _json(_blob(layout, manifest["config"]["digest"]))
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    layers = manifest.get("layers") or []
    if len(diff_ids) != len(layers):
        raise ImageError("the image's config and manifest disagree on its layers")
    found = []
    for entry, diff_id in zip(layers, diff_ids, strict=True):
        media = entry.get("mediaType", "")
        if media not in LAYER_TYPES:
            raise ImageError(f"layer type {media[:80]!r} is not supported (tar or tar+gzip)")
        path = _blob(layout, entry["digest"])
        _blob(layout, diff_id)  # validates the diff id's form
        found.append(Layer(digest=diff_id, path=path, size=int(entry.get("size") or 0)))
    return ImageSource(
        layers=tuple(found),
        config=ImageConfig.from_oci(config.get("config")),
        description=description,
    )
