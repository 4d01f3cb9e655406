"""Snapshot ids: ``{provider}_{presetId}_v{version}``, the provider written without dashes.

    morph_4vcpu_16gb_48gb_v1     pvelxc_4vcpu_6gb_32gb_v3     local_2vcpu_2gb_8gb_v2

An id without ``_vN`` (``pvelxc_4vcpu_6gb_32gb``) names "the active version" of that
(provider, preset) pair; ``resolve_snapshot_id`` turns it into a concrete version.

Parsing is strict and total: ``parse_snapshot_id`` returns the parts or raises
``InvalidSnapshotId``; it never guesses (no case folding, no trimming, no leading zeros).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from providers.errors import InvalidPresetId, InvalidSnapshotId
from providers.presets import PRESET_ID_PATTERN, parse_preset_id
from providers.registry import known_provider_names, provider_token

_SNAPSHOT_RE = re.compile(
    rf"(?P<token>[a-z][a-z0-9]*)_(?P<preset>{PRESET_ID_PATTERN})(?:_v(?P<version>[1-9][0-9]{{0,8}}))?"
)
MAX_VERSION = 999_999_999


class NoActiveVersion(LookupError):
    """An unversioned snapshot id was given but that pair has no active version."""


@dataclass(frozen=True)
class SnapshotId:
    """The parts of a snapshot id. ``version`` is None for "the active version"."""

    provider: str
    preset_id: str
    version: int | None = None

    def __str__(self) -> str:
        return format_snapshot_id(self.provider, self.preset_id, self.version)

    @property
    def unversioned(self) -> str:
        return format_snapshot_id(self.provider, self.preset_id)


def format_snapshot_id(provider: str, preset_id: str, version: int | None = None) -> str:
    """Write the id of a version (or, with ``version=None``, of the active version)."""
    if provider not in known_provider_names():
        raise InvalidSnapshotId(f"unknown provider {provider!r}")
    try:
        parse_preset_id(preset_id)
    except InvalidPresetId as exc:
        raise InvalidSnapshotId(str(exc)) from None
    base = f"{provider_token(provider)}_{preset_id}"
    if version is None:
        return base
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= MAX_VERSION:
        raise InvalidSnapshotId(f"a version is a whole number from 1, not {version!r}")
    return f"{base}_v{version}"


def parse_snapshot_id(text: str) -> SnapshotId:
    """Split a snapshot id into its parts; raise InvalidSnapshotId saying what is wrong."""
    if not isinstance(text, str):
        raise InvalidSnapshotId(f"a snapshot id is a string, not {type(text).__name__}")
    match = _SNAPSHOT_RE.fullmatch(text)
    if match is None:
        raise InvalidSnapshotId(
            f"{text[:80]!r} is not a snapshot id; expected {{provider}}_{{preset}}_v{{n}}, "
            "e.g. pvelxc_4vcpu_6gb_32gb_v3"
        )
    by_token = {provider_token(name): name for name in known_provider_names()}
    provider = by_token.get(match["token"])
    if provider is None:
        raise InvalidSnapshotId(
            f"{text[:80]!r}: unknown provider {match['token']!r} "
            f"(known: {', '.join(sorted(by_token))})"
        )
    try:
        parse_preset_id(match["preset"])
    except InvalidPresetId as exc:
        raise InvalidSnapshotId(f"{text[:80]!r}: {exc}") from None
    version = int(match["version"]) if match["version"] else None
    return SnapshotId(provider=provider, preset_id=match["preset"], version=version)


def resolve_snapshot_id(
    text: str, *, active_version: Callable[[str, str], int | None]
) -> SnapshotId:
    """Parse ``text`` and fill in the active version when it names none.

    ``active_version(provider, preset_id)`` returns the active version number or None.
    Raises InvalidSnapshotId for a malformed id and NoActiveVersion when there is
    nothing to resolve to.
    """
    parsed = parse_snapshot_id(text)
    if parsed.version is not None:
        return parsed
    version = active_version(parsed.provider, parsed.preset_id)
    if version is None:
        raise NoActiveVersion(f"{text} has no active version")
    return SnapshotId(parsed.provider, parsed.preset_id, version)
