"""A fake Morph Cloud API on loopback, for driving the real ``morphcloud`` SDK in tests."""

from tests.morph_fake.server import FakeMorph

__all__ = ["FakeMorph"]
