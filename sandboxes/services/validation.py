"""Input checks shared by every service that takes user input. Bad input changes nothing."""

from __future__ import annotations

import re
from typing import Any

from sandboxes.services.errors import InvalidInput

METADATA_MAX_KEYS = 50
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512
MAX_SECONDS = 365 * 24 * 3600
SERVICE_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")
_KEY_RE = re.compile(r"[A-Za-z0-9_.:/-]+")


def _invalid(field: str, problem: str) -> InvalidInput:
    return InvalidInput(f"{field}: {problem}", fields={field: [problem]})


def validate_name(name: Any) -> str:
    if name is None:
        return ""
    if not isinstance(name, str) or len(name) > 100:
        raise _invalid("name", "must be text of at most 100 characters")
    if any(ord(c) < 32 for c in name):
        raise _invalid("name", "must not contain control characters")
    return name.strip()


def validate_metadata(metadata: Any) -> dict[str, str]:
    """String-to-string, at most 50 keys of 64 and values of 512 characters."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise _invalid("metadata", "must be an object of string keys to string values")
    if len(metadata) > METADATA_MAX_KEYS:
        raise _invalid("metadata", f"at most {METADATA_MAX_KEYS} keys")
    for key, value in metadata.items():
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key) or len(key) > METADATA_MAX_KEY:
            raise _invalid(
                "metadata",
                f"key {str(key)[:70]!r} must be 1-{METADATA_MAX_KEY} of A-Z a-z 0-9 _ . : / -",
            )
        if not isinstance(value, str) or len(value) > METADATA_MAX_VALUE:
            raise _invalid(
                "metadata", f"value of {key!r} must be text of at most {METADATA_MAX_VALUE}"
            )
        if "\x00" in value:  # PostgreSQL cannot store it in JSON
            raise _invalid("metadata", f"value of {key!r} must not contain NUL characters")
    return dict(metadata)


def validate_seconds(field: str, value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SECONDS:
        raise _invalid(field, f"must be a whole number of seconds from 1 to {MAX_SECONDS}")
    return value


def validate_service(name: Any, port: Any) -> tuple[str, int]:
    if not isinstance(name, str) or not SERVICE_NAME_RE.fullmatch(name):
        raise _invalid("name", "1-32 lowercase letters, digits and dashes, not at either end")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise _invalid("port", "must be a port number from 1 to 65535")
    return name, port
