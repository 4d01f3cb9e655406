"""Template filters and tags of the dashboard."""

from __future__ import annotations

from django import template

from sandboxes.ui.durations import format_duration
from sandboxes.ui.format import badge_class

register = template.Library()


@register.filter
def duration(seconds: int | None) -> str:
    """7200 -> ``2h``; none -> an em dash."""
    return format_duration(seconds) or "—"


register.filter("badge_class", badge_class)


@register.simple_tag(takes_context=True)
def nav_current(context, *prefixes: str) -> str:
    """``aria-current="page"`` on the nav link of the section being shown."""
    match = getattr(context.get("request"), "resolver_match", None)
    name = getattr(match, "url_name", "") or ""
    return 'aria-current="page"' if any(name.startswith(p) for p in prefixes) else ""


@register.simple_tag
def ssh_command(sandbox_id: str) -> str:
    """The command that logs in to ``sandbox_id`` through the SSH gateway with a key."""
    from sandboxes.services import ssh

    return ssh.command_for(sandbox_id)
