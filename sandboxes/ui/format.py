"""Small formatting helpers, cheap enough to call once per row of a long list."""

from __future__ import annotations

from django.urls import reverse

from sandboxes.states import is_transitional

BADGE_CLASSES = {
    "running": "ok",
    "paused": "calm",
    "hibernated": "calm",
    "stopped": "off",
    "deleted": "off",
    "failed": "bad",
    "ready": "ok",
    "creating": "busy",
    "deleting": "busy",
}


def badge_class(status: str) -> str:
    """The badge colour of a sandbox or version status (transitional ones spin)."""
    if status in BADGE_CLASSES:
        return BADGE_CLASSES[status]
    try:
        return "busy" if is_transitional(status) else "off"
    except ValueError:
        return "off"


class IdUrls:
    """URLs of one object id: ``reverse`` once per URL name, then the id filled in.

    A page of rows would otherwise spend most of its time in ``reverse``. Ids are made of
    URL-safe characters (sandbox ids, snapshot ids), so plain substitution is exact.
    """

    PLACEHOLDER = "placeholder-0"

    def __init__(self) -> None:
        self._patterns: dict[tuple[str, tuple[str, ...]], str] = {}

    def __call__(self, name: str, object_id: str, *more: str) -> str:
        key = (name, more)
        if key not in self._patterns:
            self._patterns[key] = reverse(name, args=[self.PLACEHOLDER, *more])
        return self._patterns[key].replace(self.PLACEHOLDER, object_id, 1)
