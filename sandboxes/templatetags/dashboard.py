"""Template filters and tags of the dashboard."""

from __future__ import annotations

from django import template

from sandboxes.states import is_transitional
from sandboxes.ui.durations import format_duration

register = template.Library()

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


@register.filter
def duration(seconds: int | None) -> str:
    """7200 -> ``2h``; none -> an em dash."""
    return format_duration(seconds) or "—"


@register.filter
def badge_class(status: str) -> str:
    if status in BADGE_CLASSES:
        return BADGE_CLASSES[status]
    try:
        return "busy" if is_transitional(status) else "off"
    except ValueError:
        return "off"


@register.simple_tag(takes_context=True)
def nav_current(context, *prefixes: str) -> str:
    """``aria-current="page"`` on the nav link of the section being shown."""
    match = getattr(context.get("request"), "resolver_match", None)
    name = getattr(match, "url_name", "") or ""
    return 'aria-current="page"' if any(name.startswith(p) for p in prefixes) else ""
