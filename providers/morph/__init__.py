"""Morph Cloud: sandboxes are Morph instances booted from snapshots (docs/providers/morph.md)."""

from providers.morph.provider import MorphInstance, MorphProvider

__all__ = ["MorphInstance", "MorphProvider"]
