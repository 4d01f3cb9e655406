"""Helpers for tests of the local provider: a provider on a private root and cgroup parent.

Each test session (and each parallel run on the same machine) gets its own
LOCAL_SANDBOX_ROOT and its own cgroup parent name, and everything is torn down afterwards:
sandboxes (processes, cgroups), the port forwarder and the cgroup parent directories.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from providers.errors import ProviderError
from providers.local import LocalProvider
from tests.system import require


def require_local_runtime() -> None:
    require("bubblewrap", shutil.which("bwrap") is not None, "apt-get install -y bubblewrap")
    require("root", os.geteuid() == 0, "the local provider's tests run as root")


def make_provider(root: Path, **settings: str) -> LocalProvider:
    config = {
        "LOCAL_SANDBOX_ROOT": str(root),
        "LOCAL_SANDBOX_CGROUP_PARENT": f"sbx-test-{os.getpid()}-{secrets.token_hex(3)}",
        "LOCAL_SANDBOX_MIN_FREE_MB": "8",
    }
    config.update(settings)
    return LocalProvider.from_config(config)


def teardown(provider: LocalProvider) -> None:
    """Delete every sandbox of the provider and everything it made on the host."""
    with contextlib.suppress(ProviderError, OSError):
        provider.purge()


@contextlib.contextmanager
def local_provider(root: Path, **settings: str) -> Iterator[LocalProvider]:
    require_local_runtime()
    provider = make_provider(root, **settings)
    try:
        yield provider
    finally:
        teardown(provider)
