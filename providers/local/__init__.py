"""The ``local`` provider: real isolated sandboxes on this machine (see provider.py)."""

from providers.local.provider import LocalInstance, LocalProvider

__all__ = ["LocalInstance", "LocalProvider"]
