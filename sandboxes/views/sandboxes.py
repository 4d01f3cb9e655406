"""Sandboxes: the list (filters, live rows, bulk actions), new, detail, status polls and
lifecycle actions."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib import messages
from django.contrib.humanize.templatetags.humanize import naturaltime
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from sandboxes import selectors
from sandboxes.filters import SandboxFilter
from sandboxes.forms import NewSandboxForm, add_service_error
from sandboxes.models import Sandbox, SnapshotStatus
from sandboxes.services import backends, lifecycle
from sandboxes.services.errors import IdempotencyKeyReused, ServiceError
from sandboxes.states import Status
from sandboxes.ui.actions import DESTRUCTIVE, LABELS, LIFECYCLE_ORDER, Offer, lifecycle_offers
from sandboxes.ui.format import IdUrls, badge_class
from sandboxes.views.common import (
    actor,
    capabilities_for,
    confirm_page,
    confirmed,
    is_partial,
    polled,
    redirect_back,
    render_fragment,
    report,
    team_view,
)
from sandboxes.views.detail import detail_context, status_fragment

PER_PAGE = 50
BULK_ACTIONS = {"stop": lifecycle.stop_sandbox, "delete": lifecycle.delete_sandbox}
REQUESTS = {name: getattr(lifecycle, f"{name}_sandbox") for name in LIFECYCLE_ORDER}


@dataclass(frozen=True)
class Row:
    """One line of the list, with everything the template shows worked out here: a page
    of 50 rows then costs no URL reversing and few template lookups per row."""

    sandbox: Sandbox
    detail_url: str
    status_url: str
    version_url: str
    badge: str
    created: str
    actions: list[RowAction]  # the row's action forms (sandboxes/_row_actions.html)


@dataclass(frozen=True)
class RowAction:
    offer: Offer
    url: str
    confirm: str  # the question asked before a destructive action, else ""


class RowActions:
    """The action forms of each row, for sandboxes/_row_actions.html to render.

    Rows in the same status on the same provider offer the same actions, so the offers
    are worked out once per (status, provider) on a page; only each row's URLs and
    confirmations are its own. (Rendering the forms in the template costs the list page
    about 3 ms at 50 rows, bench/bench_dashboard.py; building them with format_html cost
    the same.)
    """

    def __init__(self, request: HttpRequest, urls: IdUrls) -> None:
        self.request = request
        self.urls = urls
        self.reason = request.team_ctx.read_only_reason
        self.offers: dict[tuple[str, str], list[Offer]] = {}

    def __call__(self, sandbox: Sandbox) -> list[RowAction]:
        key = (sandbox.status, sandbox.provider)
        if key not in self.offers:
            caps = capabilities_for(self.request, sandbox.provider)
            offers = lifecycle_offers(sandbox, caps, read_only_reason=self.reason)
            self.offers[key] = [o for o in offers if o.allowed]
        name = str(sandbox)
        return [
            RowAction(
                offer=o,
                url=self.urls("sandbox-action", sandbox.pk, o.name),
                confirm=DESTRUCTIVE.get(o.name, "").format(name=name),
            )
            for o in self.offers[key]
        ]


def rows_for(request: HttpRequest, sandboxes) -> list[Row]:
    urls = IdUrls()
    actions = RowActions(request, urls)
    return [
        Row(
            sandbox=sandbox,
            detail_url=urls("sandbox-detail", sandbox.pk),
            status_url=urls("sandbox-status", sandbox.pk),
            version_url=(
                urls("snapshot-detail", sandbox.snapshot.snapshot_id) if sandbox.snapshot_id else ""
            ),
            badge=badge_class(sandbox.status),
            created=naturaltime(sandbox.created_at),
            actions=actions(sandbox),
        )
        for sandbox in sandboxes
    ]


def row_for(request: HttpRequest, sandbox: Sandbox) -> Row:
    return rows_for(request, [sandbox])[0]


def _list_context(request: HttpRequest, params: QueryDict) -> dict:
    """The list region: filters applied, one page of rows, status counts. Constant queries."""
    team = request.team
    statuses = params.getlist("status")
    queryset = selectors.sandboxes_for_team(team=team, include_deleted=Status.DELETED in statuses)
    filterset = SandboxFilter(params or None, queryset=queryset)
    page = Paginator(filterset.qs, PER_PAGE).get_page(params.get("page"))
    counts = selectors.sandbox_status_counts(team=team)
    query = params.copy()
    query.pop("page", None)
    chips = [("", "All", sum(n for s, n in counts.items() if s != Status.DELETED))]
    chips += [(s.value, s.label, counts[s.value]) for s in Status if counts.get(s.value)]
    return {
        "filter": filterset,
        "page": page,
        "rows": rows_for(request, page.object_list),
        "chips": chips,
        "chosen_statuses": statuses,
        "query": query.urlencode(),
        "query_without_status": _without(query, "status"),
        "providers": backends.enabled_provider_names(),
        "presets": selectors.presets(),
    }


def _without(query, key: str) -> str:
    copy = query.copy()
    copy.pop(key, None)
    return copy.urlencode()


@require_GET
@team_view
def sandbox_list(request: HttpRequest) -> HttpResponse:
    context = _list_context(request, request.GET)
    if is_partial(request):
        return render_fragment(request, "sandboxes/_list.html", {**context, "fragment": True})
    return render(request, "sandboxes/list.html", context)


@require_POST
@team_view
def sandbox_bulk(request: HttpRequest) -> HttpResponse:
    """Stop or delete the selected sandboxes of the current team."""
    action = request.POST.get("action", "")
    if action not in BULK_ACTIONS:
        raise Http404("no such bulk action")
    ids = request.POST.getlist("ids")
    # The list's filters, carried by the form, so the answer shows the same list.
    params = QueryDict(request.POST.get("query", "")[:2000])
    list_url = reverse("sandbox-list") + (f"?{params.urlencode()}" if params else "")
    if not ids:
        messages.warning(request, "Select one or more sandboxes first.")
    elif action == "delete" and not confirmed(request):
        return confirm_page(
            request,
            title="Delete sandboxes",
            question=f"Delete {len(ids)} sandbox(es)? Their files are gone for good.",
            action=reverse("sandbox-bulk"),
            button="Delete them",
        )
    else:
        _apply_bulk(request, action, ids)
    if is_partial(request):
        context = {**_list_context(request, params), "fragment": True}
        return render_fragment(request, "sandboxes/_list.html", context)
    return HttpResponseRedirect(list_url)


def _apply_bulk(request: HttpRequest, action: str, ids: list[str]) -> None:
    wanted = [pk for pk in ids[:500] if selectors.storable(pk)]
    chosen = list(selectors.sandboxes_for_team(team=request.team).filter(pk__in=wanted))
    done = 0
    for sandbox in chosen:
        try:
            BULK_ACTIONS[action](sandbox=sandbox, actor=actor(request))
            done += 1
        except ServiceError as exc:
            messages.error(request, f"{sandbox}: {exc.message}")
    missing = len(set(ids)) - len(chosen)
    if missing:
        messages.warning(request, f"{missing} selected sandbox(es) were not found in your team.")
    if done:
        verb = {"stop": "Stopping", "delete": "Deleting"}[action]
        messages.success(request, f"{verb} {done} sandbox(es).")


@require_GET
@team_view
def sandbox_detail(request: HttpRequest, sandbox_id: str) -> HttpResponse:
    sandbox = selectors.get_sandbox(team=request.team, sandbox_id=sandbox_id)
    return render(request, "sandboxes/detail.html", detail_context(request, sandbox))


@require_GET
@team_view
def sandbox_status(request: HttpRequest, sandbox_id: str) -> HttpResponse:
    """The live status of one sandbox, as a list row or the detail page's status panel.

    Polled every second while the sandbox is transitional; once it settles, the answer
    is HTTP 286, which tells HTMX to stop polling.
    """
    sandbox = selectors.get_sandbox(team=request.team, sandbox_id=sandbox_id)
    if not request.htmx:
        return redirect("sandbox-detail", sandbox_id=sandbox.pk)
    if request.GET.get("part") == "row":
        response = render_fragment(
            request, "sandboxes/_row.html", {"row": row_for(request, sandbox)}
        )
    else:
        changed = request.GET.get("shown") != sandbox.status
        response = status_fragment(request, sandbox, with_sections=changed)
    return polled(response, done=not sandbox.is_transitional)


@require_POST
@team_view
def sandbox_action(request: HttpRequest, sandbox_id: str, action: str) -> HttpResponse:
    """start, stop, pause, hibernate, resume or delete one sandbox."""
    if action not in REQUESTS:
        raise Http404("no such action")
    sandbox = selectors.get_sandbox(team=request.team, sandbox_id=sandbox_id)
    if action == "delete" and not confirmed(request):
        return confirm_page(
            request,
            title=f"Delete {sandbox}",
            question=f"Delete {sandbox}? Its files are gone for good.",
            action=reverse("sandbox-action", args=[sandbox.pk, action]),
            button="Delete",
        )
    try:
        REQUESTS[action](sandbox=sandbox, actor=actor(request))
        messages.info(request, f"{LABELS[action]}: requested for {sandbox}.")
    except ServiceError as exc:
        report(request, exc)
    sandbox = selectors.get_sandbox(team=request.team, sandbox_id=sandbox.pk)
    if is_partial(request):
        if request.POST.get("part") == "row":
            return render_fragment(
                request, "sandboxes/_row.html", {"row": row_for(request, sandbox)}
            )
        return status_fragment(request, sandbox, with_sections=True)
    part = request.POST.get("part")
    back = (
        reverse("sandbox-list") if part == "row" else reverse("sandbox-detail", args=[sandbox.pk])
    )
    return redirect_back(request, back)


def _new_form(request: HttpRequest, data=None) -> NewSandboxForm:
    """The create form; its version choices follow the chosen preset and provider."""
    source = data if data is not None else request.GET
    providers = backends.enabled_provider_names()
    presets = list(selectors.presets())
    # The team's lifecycle defaults, shown (and changeable; blank is never) on the form.
    idle, keep = lifecycle.team_lifecycle_defaults(request.team)
    initial: dict = {
        "provider": backends.default_provider(),
        "idle_timeout": idle,
        "delete_parked": keep,
    }
    snapshot_id = source.get("snapshot", "")
    if snapshot_id and selectors.storable(snapshot_id):
        chosen = (
            selectors.snapshots_for_team(team=request.team).filter(snapshot_id=snapshot_id).first()
        )
        if chosen is not None:
            initial.update(provider=chosen.provider, preset=chosen.preset_id, snapshot=snapshot_id)
    for key in ("preset", "provider", "name", "ttl", "ttl_action", "idle_timeout", "delete_parked"):
        if source.get(key) and selectors.storable(source[key]):
            initial[key] = source[key]
    # Only the presets the chosen provider offers (a size it cannot make is not shown).
    offered = [p for p in presets if not backends.preset_refusal(p, initial["provider"] or "")]
    presets = offered or presets
    if "preset" not in initial and presets:
        initial["preset"] = presets[0].pk
    versions = selectors.snapshots_for_team(team=request.team).filter(
        status=SnapshotStatus.READY, provider=initial["provider"], preset_id=initial.get("preset")
    )
    active = selectors.active_snapshot(
        team=request.team, provider=initial["provider"], preset_id=initial.get("preset")
    )
    return NewSandboxForm(
        data,
        initial=initial,
        presets=presets,
        providers=providers,
        versions=list(versions),
        active=active,
    )


REUSED_FORM = (
    "This form already created a sandbox with other values; open a new form to create another one."
)


@require_http_methods(["GET", "POST"])
@team_view
def sandbox_new(request: HttpRequest) -> HttpResponse:
    """Pick a preset, a provider and a version (the active one by default) and start."""
    if request.method == "POST":
        form = _new_form(request, request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                sandbox = lifecycle.create_sandbox(
                    team=request.team,
                    actor=actor(request),
                    preset_id=data["preset"],
                    provider=data["provider"],
                    snapshot_id=data["snapshot"] or None,
                    name=data["name"],
                    ttl_seconds=data["ttl"],
                    ttl_action=data["ttl_action"],
                    idle_timeout_seconds=data["idle_timeout"],
                    delete_parked_after_seconds=data["delete_parked"],
                    idempotency_key=f"dashboard-{data['idempotency_key']}",
                    repo=(
                        {"url": data["repo_url"], "branch": data["repo_branch"]}
                        if data["repo_url"]
                        else None
                    ),
                    setup=data["setup"],
                )
            except IdempotencyKeyReused:
                # The same form sent again with other values (a double submit, edited).
                form.add_error(None, REUSED_FORM)
            except ServiceError as exc:
                add_service_error(form, exc)
            else:
                url = reverse("sandbox-detail", args=[sandbox.pk])
                if request.htmx:
                    return HttpResponseClientRedirect(url)
                return HttpResponseRedirect(url)
        # HTMX swaps only 2xx answers: the form with its errors comes back as 200 there.
        status = 200 if request.htmx else 400
    else:
        form = _new_form(request)
        status = 200
    idle, keep = lifecycle.team_lifecycle_defaults(request.team)
    context = {
        "form": form,
        "read_only_reason": request.team_ctx.read_only_reason,
        "team_defaults": {"idle": idle, "keep": keep},
    }
    if is_partial(request):
        return render_fragment(request, "sandboxes/_new_form.html", context, status=status)
    return render(request, "sandboxes/new.html", context, status=status)
