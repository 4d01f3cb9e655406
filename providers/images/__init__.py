"""Images: real root filesystems for sandboxes (plain Python, no Django).

* ``debian`` builds a Debian root filesystem from Debian's packages with mmdebstrap.
* ``oci`` copies an OCI or Docker image with skopeo into an OCI layout and reads it.
* ``unpack`` applies a layer (a tar) to a directory safely, translating OCI whiteouts
  into overlayfs ones.
* ``ImageSource`` (here) is what a provider's ``import_image`` takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image's configuration a sandbox honours."""

    env: dict[str, str] = field(default_factory=dict)
    working_dir: str = ""
    user: str = ""
    exposed_ports: tuple[int, ...] = ()

    def as_dict(self) -> dict:
        return {
            "env": dict(self.env),
            "working_dir": self.working_dir,
            "user": self.user,
            "exposed_ports": list(self.exposed_ports),
        }

    @classmethod
    def from_dict(cls, data: dict | None) -> ImageConfig:
        data = data or {}
        return cls(
            env={str(k): str(v) for k, v in (data.get("env") or {}).items()},
            working_dir=str(data.get("working_dir") or ""),
            user=str(data.get("user") or ""),
            exposed_ports=tuple(int(p) for p in data.get("exposed_ports") or ()),
        )

    @classmethod
    def from_oci(cls, config: dict | None) -> ImageConfig:
        """From an OCI image config's ``config`` object (``Env``, ``WorkingDir``, ...)."""
        config = config or {}
        env = {}
        for item in config.get("Env") or ():
            key, sep, value = str(item).partition("=")
            if sep and key:
                env[key] = value
        ports = []
        for spec in config.get("ExposedPorts") or {}:
            number, _, proto = str(spec).partition("/")
            if number.isdigit() and proto in ("", "tcp") and 0 < int(number) < 65536:
                ports.append(int(number))
        return cls(
            env=env,
            working_dir=str(config.get("WorkingDir") or ""),
            user=str(config.get("User") or ""),
            exposed_ports=tuple(sorted(set(ports))),
        )


@dataclass(frozen=True)
class Layer:
    """One layer: an uncompressed tar and its digest (``sha256:<hex>`` of the tar)."""

    digest: str
    path: Path
    size: int


@dataclass(frozen=True)
class ImageSource:
    """An image ready to import: its layers bottom first, and its configuration."""

    layers: tuple[Layer, ...]
    config: ImageConfig = field(default_factory=ImageConfig)
    #: What it came from, for people (``debian bookworm: git,curl``, ``docker://...``).
    description: str = ""


class ImageError(RuntimeError):
    """An image could not be built, copied or read; the message says why."""
