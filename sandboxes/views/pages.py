"""Read-only pages: presets, provider health, the audit log; and the team switcher."""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import Resolver404, resolve, reverse
from django.views.decorators.http import require_GET, require_POST

from sandboxes import selectors
from sandboxes.current_team import switch_team
from sandboxes.filters import EventFilter
from sandboxes.models import Team
from sandboxes.services import backends, workers
from sandboxes.views.common import is_partial, render_fragment, safe_next, team_view

EVENTS_PER_PAGE = 50
COMMON_ACTIONS = [
    "create",
    "start",
    "stop",
    "pause",
    "hibernate",
    "resume",
    "delete",
    "exec",
    "snapshot",
    "expose_service",
    "hide_service",
    "set_wake_on",
    "update_settings",
    "activate_version",
    "delete_version",
    "create_token",
    "revoke_token",
]


@require_GET
@team_view
def preset_list(request: HttpRequest) -> HttpResponse:
    """Machine sizes, the providers each is offered on, and the active version there."""
    team = request.team
    enabled = backends.enabled_provider_names()
    pointers = selectors.active_pointers(team=team)
    shared = {(p.provider, p.preset_id): p for p in pointers if p.team_id is None}
    own = {(p.provider, p.preset_id): p for p in pointers if p.team_id is not None}
    snapshots = {s.pk: s for s in selectors.snapshots_for_team(team=team)}
    rows = []
    for preset in selectors.presets():
        offered = []
        # A restricted preset lists its providers (a switched-off one greyed out); any
        # other preset, every enabled provider that can make its size.
        names = preset.providers or backends.offered_providers(preset, enabled)
        for provider in names:
            if provider in enabled and backends.preset_refusal(preset, provider):
                continue
            pointer = own.get((provider, preset.pk)) or shared.get((provider, preset.pk))
            offered.append(
                {
                    "provider": provider,
                    "enabled": provider in enabled,
                    "active": snapshots.get(pointer.snapshot_id) if pointer else None,
                }
            )
        rows.append({"preset": preset, "offered": offered})
    return render(request, "pages/presets.html", {"rows": rows})


@require_GET
@team_view
def provider_health(request: HttpRequest) -> HttpResponse:
    """Each enabled provider: reachable or not, latency, and what it can do."""
    default = backends.default_provider()
    rows = []
    for state in backends.provider_states():
        caps = backends.provider_capabilities(state.name)
        rows.append(
            {
                "name": state.name,
                "health": state.health,
                "capacity": state.capacity,
                "default": state.name == default,
                "sizes": _sizes(caps),
                "sizes_source": caps.limits_source,
                "capabilities": [
                    (
                        cap.removeprefix("supports_").replace("_", " "),
                        caps.supports(cap),
                        caps.reason(cap),
                    )
                    for cap in caps.names()
                ],
            }
        )
    context = {"rows": rows, "background": workers.liveness()}
    if is_partial(request):
        return render_fragment(request, "pages/_health.html", context)
    return render(request, "pages/health.html", context)


def _sizes(caps) -> str:
    """The largest sandbox a provider makes, as people read it ('' when it says none)."""
    parts = []
    if caps.max_vcpus is not None:
        parts.append(f"{caps.max_vcpus} vCPU{'s' if caps.max_vcpus != 1 else ''}")
    if caps.max_memory_mb is not None:
        parts.append(f"{caps.max_memory_mb} MB memory")
    if caps.max_disk_gb is not None:
        parts.append(f"{caps.max_disk_gb} GB disk")
    return ", ".join(parts)


@require_GET
@team_view
def audit_log(request: HttpRequest) -> HttpResponse:
    """Who did what, when, to which sandbox, filtered and paginated."""
    filterset = EventFilter(
        request.GET or None,
        queryset=selectors.team_events(team=request.team).select_related("sandbox", "snapshot"),
    )
    page = Paginator(filterset.qs, EVENTS_PER_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "filter": filterset,
        "page": page,
        "query": query.urlencode(),
        "actions": COMMON_ACTIONS,
    }
    if is_partial(request):
        return render_fragment(request, "pages/_audit.html", context)
    return render(request, "pages/audit.html", context)


@require_POST
@team_view
def team_switch(request: HttpRequest) -> HttpResponse:
    """Make another of the user's teams current; back to the same section of the site."""
    try:
        team = switch_team(request, request.POST.get("team", ""))
    except Team.DoesNotExist:
        raise Http404("not one of your teams") from None
    messages.success(request, f"Now working in {team.name}.")
    return HttpResponseRedirect(_section_root(safe_next(request, reverse("sandbox-list"))))


def _section_root(path: str) -> str:
    """An object page of the old team would be a 404 in the new one: go to its list."""
    try:
        match = resolve(path.split("?", 1)[0])
    except Resolver404:
        return reverse("sandbox-list")
    if not match.kwargs:
        return path
    if match.url_name and match.url_name.startswith("snapshot"):
        return reverse("snapshot-browser")
    if match.url_name and match.url_name.startswith("token"):
        return reverse("token-list")
    return reverse("sandbox-list")
