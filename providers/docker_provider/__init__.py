"""Docker Engine: a container per sandbox, an image per snapshot (docs/providers/docker.md)."""

from providers.docker_provider.instance import DockerInstance
from providers.docker_provider.provider import DockerProvider

__all__ = ["DockerInstance", "DockerProvider"]
