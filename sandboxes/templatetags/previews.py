"""``{% preview_url sandbox service %}``: a service's preview URL as the browser reaches it
(``sandboxes/services/previews.py``), and ``{{ service|sharing }}``, its sharing level."""

from __future__ import annotations

from typing import Any

from django import template

from sandboxes.services import previews

register = template.Library()


@register.simple_tag(takes_context=True)
def preview_url(context: Any, sandbox: Any, service: dict[str, Any]) -> str:
    request = context.get("request")
    scheme = request.scheme if request is not None else "http"
    port = int(request.get_port()) if request is not None else 0
    return previews.preview_origin(sandbox.pk, int(service["port"]), scheme=scheme, web_port=port)


@register.filter
def sharing(service: dict[str, Any]) -> str:
    return previews.sharing_of(service)


@register.simple_tag
def sharing_levels() -> tuple[str, ...]:
    return previews.SHARING_LEVELS
