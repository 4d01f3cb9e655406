"""Warm pools: the team's (and the shared ones it uses) with size, ready members, hit
rate and refill lag; owners and admins create, switch on or off, and delete them."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from sandboxes import selectors
from sandboxes.forms import PoolForm, add_service_error
from sandboxes.models import SnapshotStatus, WarmPool
from sandboxes.services import pools
from sandboxes.services.errors import ServiceError
from sandboxes.views.common import actor, confirm_page, confirmed, redirect_back, report, team_view


def _rows(team) -> list[dict]:
    now = timezone.now()
    rows = []
    for pool in selectors.pools_for_team(team=team):
        total = pool.hits + pool.misses
        rows.append(
            {
                "pool": pool,
                "hit_rate": f"{100 * pool.hits / total:.0f}%" if total else "none yet",
                "lag": int((now - pool.short_since).total_seconds()) if pool.short_since else 0,
            }
        )
    return rows


@never_cache
@require_http_methods(["GET", "POST"])
@team_view
def pool_list(request: HttpRequest) -> HttpResponse:
    team = request.team
    snapshot_ids = [
        s.snapshot_id
        for s in selectors.snapshots_for_team(team=team).filter(status=SnapshotStatus.READY)
    ]
    form = PoolForm(request.POST or None, snapshot_ids=snapshot_ids)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            snapshot = selectors.get_snapshot(team=team, snapshot_id=data["snapshot"])
            pools.create_pool(
                actor=actor(request),
                team=team,
                snapshot=snapshot,
                target_size=data["target_size"],
                maximum=data["maximum"],
                max_age_seconds=data["max_age_seconds"],
            )
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"Pool of {snapshot.snapshot_id} created; it fills now.")
            return redirect("pool-list")
    context = {"form": form, "rows": _rows(team)}
    return render(request, "pools/list.html", context, status=400 if form.errors else 200)


def _pool(request: HttpRequest, pool_id: int) -> WarmPool:
    try:
        return selectors.get_pool(team=request.team, pool_id=pool_id)
    except WarmPool.DoesNotExist:
        raise Http404("no such pool for your team") from None


@require_POST
@team_view
def pool_toggle(request: HttpRequest, pool_id: int) -> HttpResponse:
    pool = _pool(request, pool_id)
    try:
        pools.update_pool(actor=actor(request), pool=pool, enabled=not pool.enabled)
        messages.success(request, f"Pool {'disabled' if pool.enabled else 'enabled'}.")
    except ServiceError as exc:
        report(request, exc)
    return redirect_back(request, reverse("pool-list"))


@require_POST
@team_view
def pool_delete(request: HttpRequest, pool_id: int) -> HttpResponse:
    pool = _pool(request, pool_id)
    if not confirmed(request):
        return confirm_page(
            request,
            title="Delete pool",
            question=f"Delete the pool of {pool.snapshot.snapshot_id}? Its ready members "
            "are removed; running sandboxes are not touched.",
            action=reverse("pool-delete", args=[pool.pk]),
            button="Delete",
        )
    try:
        pools.delete_pool(actor=actor(request), pool=pool)
        messages.success(request, "Pool deleted.")
    except ServiceError as exc:
        report(request, exc)
    return redirect_back(request, reverse("pool-list"))
