"""The snapshot versions browser: every version per preset and provider, with lineage,
who made it, size and label; which one is active; which sandboxes use it; start from,
activate (roll forward or back), delete, compare."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import groupby

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from sandboxes import selectors
from sandboxes.current_team import TeamContext
from sandboxes.filters import SnapshotFilter
from sandboxes.models import ImageBuildStatus, Snapshot, SnapshotStatus
from sandboxes.services import snapshots
from sandboxes.services.errors import ServiceError
from sandboxes.ui.actions import Offer
from sandboxes.ui.lineage import parent_chain
from sandboxes.views.common import (
    actor,
    confirm_page,
    confirmed,
    is_partial,
    redirect_back,
    render_fragment,
    report,
    team_view,
)


@dataclass
class VersionView:
    """One version as the browser shows it."""

    snapshot: Snapshot
    lineage: list[Snapshot]
    used_by: int
    active: bool  # the version this team starts from for its preset and provider
    shared_default: bool  # the shared pointer (what teams without their own pin get)
    activate: Offer
    delete: Offer


@dataclass
class Group:
    provider: str
    preset_id: str
    versions: list[VersionView] = field(default_factory=list)


class Catalogue:
    """Everything the team may see about its versions, read in a constant number of queries."""

    def __init__(self, context: TeamContext, *, include_deleted: bool = True) -> None:
        team = context.team
        self.context = context
        self.all = list(selectors.snapshots_for_team(team=team, include_deleted=True))
        self.by_pk = {s.pk: s for s in self.all}
        self.usage = selectors.snapshot_usage(team=team)
        pointers = selectors.active_pointers(team=team)
        self.shared = {
            (p.provider, p.preset_id): p.snapshot_id for p in pointers if p.team_id is None
        }
        own = {(p.provider, p.preset_id): p.snapshot_id for p in pointers if p.team_id is not None}
        self.effective = {**self.shared, **own}
        self.pointed = {p.snapshot_id for p in pointers}

    def view(self, snapshot: Snapshot) -> VersionView:
        key = (snapshot.provider, snapshot.preset_id)
        active = self.effective.get(key) == snapshot.pk
        return VersionView(
            snapshot=snapshot,
            lineage=parent_chain(snapshot, self.by_pk),
            used_by=self.usage.get(snapshot.pk, 0),
            active=active,
            shared_default=self.shared.get(key) == snapshot.pk,
            activate=self._activate_offer(snapshot, active),
            delete=self._delete_offer(snapshot),
        )

    def children(self, snapshot: Snapshot) -> list[Snapshot]:
        return [s for s in self.all if s.parent_id == snapshot.pk]

    def _not_manager(self, verb: str) -> str:
        role = self.context.role
        return f"only the team's owners and admins can {verb} snapshots (you are {role})"

    def _activate_offer(self, snapshot: Snapshot, active: bool) -> Offer:
        if active:
            reason = "it is the active version"
        elif snapshot.status != SnapshotStatus.READY:
            reason = f"it is {snapshot.status}; only a ready version can be active"
        elif not self.context.can_manage:
            reason = self._not_manager("activate")
        else:
            reason = ""
        return Offer("activate", "Activate", not reason, reason)

    def _delete_offer(self, snapshot: Snapshot) -> Offer:
        used = self.usage.get(snapshot.pk, 0)
        if snapshot.team_id is None:
            reason = "shared snapshots are managed by an operator in the admin"
        elif not self.context.can_manage:
            reason = self._not_manager("delete")
        elif snapshot.status not in (SnapshotStatus.READY, SnapshotStatus.FAILED):
            reason = f"it is {snapshot.status}"
        elif snapshot.pk in self.pointed:
            reason = "it is an active version; activate another first"
        elif used:
            reason = f"{used} sandbox(es) use it; delete them first"
        else:
            reason = ""
        confirm = f"Delete version {snapshot.snapshot_id}? It cannot be started again."
        return Offer("delete", "Delete", not reason, reason, confirm)


@require_GET
@team_view
def snapshot_browser(request: HttpRequest) -> HttpResponse:
    builds = selectors.image_builds_for_team(team=request.team)
    active = any(b.status in (ImageBuildStatus.QUEUED, ImageBuildStatus.RUNNING) for b in builds)
    if request.GET.get("builds") == "1" and is_partial(request):  # the builds' polling
        context = {"builds": builds, "builds_active": active}
        return render_fragment(request, "snapshots/_image_builds.html", context)
    show_deleted = request.GET.get("deleted") == "1"
    catalogue = Catalogue(request.team_ctx)
    queryset = selectors.snapshots_for_team(team=request.team, include_deleted=show_deleted)
    filterset = SnapshotFilter(request.GET or None, queryset=queryset)
    shown = list(filterset.qs)
    groups = []
    for (provider, preset_id), versions in groupby(shown, key=lambda s: (s.provider, s.preset_id)):
        groups.append(Group(provider, preset_id, [catalogue.view(s) for s in versions]))
    context = {
        "filter": filterset,
        "groups": groups,
        "show_deleted": show_deleted,
        "providers": sorted({s.provider for s in catalogue.all}),
        "presets": sorted({s.preset_id for s in catalogue.all}),
        "builds": builds,
        "builds_active": active,
    }
    if is_partial(request):
        return render_fragment(request, "snapshots/_groups.html", context)
    return render(request, "snapshots/browser.html", context)


@require_GET
@team_view
def snapshot_detail(request: HttpRequest, snapshot_id: str) -> HttpResponse:
    snapshot = selectors.get_snapshot(team=request.team, snapshot_id=snapshot_id)
    catalogue = Catalogue(request.team_ctx)
    context = {
        "version": catalogue.view(snapshot),
        "children": catalogue.children(snapshot),
        "sandboxes": list(selectors.sandboxes_using(team=request.team, snapshot=snapshot)[:100]),
        "events": list(selectors.team_events(team=request.team).filter(snapshot=snapshot)[:50]),
        "siblings": [
            s
            for s in catalogue.all
            if s.provider == snapshot.provider
            and s.preset_id == snapshot.preset_id
            and s != snapshot
        ],
    }
    return render(request, "snapshots/detail.html", context)


@require_POST
@team_view
def snapshot_activate(request: HttpRequest, snapshot_id: str) -> HttpResponse:
    """Make this version the one the team starts from (roll forward or back)."""
    snapshot = selectors.get_snapshot(team=request.team, snapshot_id=snapshot_id)
    try:
        snapshots.activate_snapshot(snapshot=snapshot, actor=actor(request), team=request.team)
        messages.success(
            request,
            f"{snapshot.snapshot_id} is now the active version of {snapshot.preset_id} "
            f"on {snapshot.provider} for {request.team.slug}.",
        )
    except ServiceError as exc:
        report(request, exc)
    return redirect_back(request, reverse("snapshot-browser"))


@require_POST
@team_view
def snapshot_delete(request: HttpRequest, snapshot_id: str) -> HttpResponse:
    snapshot = selectors.get_snapshot(team=request.team, snapshot_id=snapshot_id)
    if not confirmed(request):
        return confirm_page(
            request,
            title=f"Delete {snapshot.snapshot_id}",
            question=f"Delete version {snapshot.snapshot_id}? It cannot be started again.",
            action=reverse("snapshot-delete", args=[snapshot.snapshot_id]),
            button="Delete version",
        )
    try:
        snapshots.delete_snapshot(snapshot=snapshot, actor=actor(request))
        messages.success(request, f"Deleting {snapshot.snapshot_id}.")
    except ServiceError as exc:
        report(request, exc)
    return redirect_back(request, reverse("snapshot-browser"))


@require_GET
@team_view
def snapshot_compare_pick(request: HttpRequest) -> HttpResponse:
    """The browser's "compare" form: exactly two versions, then the comparison page."""
    chosen = request.GET.getlist("v")
    if len(chosen) != 2 or chosen[0] == chosen[1]:
        messages.error(request, "Choose exactly two different snapshots to compare.")
        return redirect("snapshot-browser")
    first = selectors.get_snapshot(team=request.team, snapshot_id=chosen[0])
    second = selectors.get_snapshot(team=request.team, snapshot_id=chosen[1])
    return redirect("snapshot-compare", snapshot_id=first.snapshot_id, other_id=second.snapshot_id)


@require_GET
@team_view
def snapshot_compare(request: HttpRequest, snapshot_id: str, other_id: str) -> HttpResponse:
    """Two versions side by side: size, label, lineage, creator, dates, sandboxes."""
    catalogue = Catalogue(request.team_ctx)
    pair = [
        selectors.get_snapshot(team=request.team, snapshot_id=i) for i in (snapshot_id, other_id)
    ]
    columns = [
        {
            "version": catalogue.view(s),
            "sandboxes": list(selectors.sandboxes_using(team=request.team, snapshot=s)[:20]),
        }
        for s in pair
    ]
    a, b = pair
    related = ""
    if a.pk in {s.pk for s in parent_chain(b, catalogue.by_pk)}:
        related = f"{b.snapshot_id} descends from {a.snapshot_id}."
    elif b.pk in {s.pk for s in parent_chain(a, catalogue.by_pk)}:
        related = f"{a.snapshot_id} descends from {b.snapshot_id}."
    size_change = ""
    if a.size_bytes is not None and b.size_bytes is not None:
        delta = b.size_bytes - a.size_bytes
        size_change = ("+" if delta >= 0 else "-") + filesizeformat(abs(delta))
    context = {"columns": columns, "related": related, "size_change": size_change}
    return render(request, "snapshots/compare.html", context)
