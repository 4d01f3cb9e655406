"""The sandbox detail page and what is done from it: settings, services, wake-on, the web
terminal (its websocket is sandboxes/websocket.py), the exec console, snapshots and the
CPU/memory charts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from sandboxes import selectors
from sandboxes.forms import (
    ExecForm,
    ServiceForm,
    SettingsForm,
    SnapshotForm,
    WakeOnForm,
    add_service_error,
)
from sandboxes.models import Sandbox, SnapshotStatus
from sandboxes.services import interactive, snapshots
from sandboxes.services.errors import ServiceError
from sandboxes.ui.actions import feature_offer, lifecycle_offers
from sandboxes.ui.charts import cpu_sparkline, memory_sparkline
from sandboxes.views.common import (
    actor,
    capabilities_for,
    is_partial,
    polled,
    redirect_back,
    render_fragment,
    report,
    team_view,
)

TIMELINE_LENGTH = 50


def live_context(request: HttpRequest, sandbox: Sandbox) -> dict[str, Any]:
    """What changes with the status: actions, features, timeline, versions taken."""
    caps = capabilities_for(request, sandbox.provider)
    reason = request.team_ctx.read_only_reason
    events = list(
        selectors.sandbox_events(sandbox=sandbox).order_by("-created_at", "-id")[:TIMELINE_LENGTH]
    )
    taken = list(sandbox.snapshots_taken.select_related("created_by").order_by("-version")[:20])
    return {
        "sandbox": sandbox,
        "caps": caps,
        "offers": lifecycle_offers(sandbox, caps, read_only_reason=reason),
        "features": {
            name: feature_offer(sandbox, caps, name, read_only_reason=reason)
            for name in ("exec", "terminal", "services", "wake_on", "snapshot")
        },
        "timeline": events[::-1],
        "taken": taken,
        "taking": any(v.status == SnapshotStatus.CREATING for v in taken),
    }


def detail_context(request: HttpRequest, sandbox: Sandbox, **extra: Any) -> dict[str, Any]:
    context = live_context(request, sandbox)
    context.update(
        settings_form=SettingsForm(
            initial={
                "name": sandbox.name,
                "ttl": sandbox.ttl_seconds,
                "ttl_action": sandbox.ttl_action,
                "idle_timeout": sandbox.idle_timeout_seconds,
                "metadata": sandbox.metadata,
            }
        ),
        service_form=ServiceForm(),
        exec_form=ExecForm(initial={"timeout": 60}),
        snapshot_form=SnapshotForm(),
        wake_on_form=WakeOnForm(initial={"http": sandbox.wake_on_http, "ssh": sandbox.wake_on_ssh}),
    )
    context.update(extra)
    return context


#: Sections swapped out of band when the status changes, so what the new status allows
#: (the console once running, say) appears without a reload.
LIVE_SECTIONS = (
    "_timeline.html",
    # Swapped when the status changes: the page's script detaches the old terminal and
    # attaches the new one to the same session (see static/js/terminal.js).
    "_terminal.html",
    "_console.html",
    "_services.html",
    "_taken.html",
    "_overview.html",
    "_metrics_placeholder.html",  # asks for fresh charts itself: no provider call here
)


def status_fragment(request: HttpRequest, sandbox: Sandbox, *, with_sections: bool) -> HttpResponse:
    """The status panel (badge, progress, actions); with the sections it governs, OOB."""
    context = live_context(request, sandbox) if with_sections else _status_only(request, sandbox)
    body = render_to_string("sandboxes/_status.html", context, request)
    if with_sections:
        context.update(
            oob=True,
            exec_form=ExecForm(initial={"timeout": 60}),
            service_form=ServiceForm(),
        )
        for template in LIVE_SECTIONS:
            body += render_to_string(f"sandboxes/{template}", context, request)
    body += render_to_string("sandboxes/_messages.html", {"oob": True}, request)
    return HttpResponse(body)


def _status_only(request: HttpRequest, sandbox: Sandbox) -> dict[str, Any]:
    caps = capabilities_for(request, sandbox.provider)
    reason = request.team_ctx.read_only_reason
    return {
        "sandbox": sandbox,
        "offers": lifecycle_offers(sandbox, caps, read_only_reason=reason),
        "features": {"snapshot": feature_offer(sandbox, caps, "snapshot", read_only_reason=reason)},
    }


def _section(request: HttpRequest, sandbox: Sandbox, template: str, status: int = 200, **extra):
    """After a change from the page: the section for HTMX, the whole page otherwise."""
    if is_partial(request):
        context = detail_context(request, sandbox, **extra)
        return render_fragment(request, f"sandboxes/{template}", context)
    return render(
        request, "sandboxes/detail.html", detail_context(request, sandbox, **extra), status=status
    )


def _back(request: HttpRequest, sandbox: Sandbox) -> HttpResponse:
    return redirect_back(request, reverse("sandbox-detail", args=[sandbox.pk]))


def _apply(
    request: HttpRequest,
    sandbox: Sandbox,
    change: Callable[[], object],
    *,
    success: str,
    section: str,
) -> HttpResponse:
    """A form-less change from the page: run it, say how it went, show the fresh section."""
    try:
        change()
        messages.success(request, success)
    except ServiceError as exc:
        report(request, exc)
    if not is_partial(request):
        return _back(request, sandbox)
    return _section(request, sandbox, section)


@require_POST
@team_view
def sandbox_settings(request: HttpRequest, sandbox_id: str) -> HttpResponse:
    sandbox = selectors.get_sandbox(team=request.team, sandbox_id=sandbox_id)
    form = SettingsForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            sandbox = interactive.update_sandbox_settings(
                sandbox=sandbox,
                actor=actor(request),
                name=data["name"],
                ttl_seconds=data["ttl"],
                ttl_action=data["ttl_action"],
                idle_timeout_seconds=data["idle_timeout"],
                metadata=data["metadata"],
            )
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, "Settings saved.")
            if not is_partial(request):
                return _back(request, sandbox)
            form = None
    extra = {"settings_form": form} if form is not None else {}
    return _section(request, sandbox, "_settings.html", status=400, **extra)


@require_POST
@team_view
def sandbox_service_add(request: HttpRequest, sandbox_id: str) -> HttpResponse:
    sandbox = selectors.get_sandbox(team=request.team, sandbox_id=sandbox_id)
    form = ServiceForm(request.POST)
    if form.is_valid():
        try:
            service = interactive.expose_service(
                sandbox=sandbox, actor=actor(request), **form.cleaned_data
            )
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"Exposed {service['name']} at {service['url']}.")
            if not is_partial(request):
                return _back(request, sandbox)
            form = ServiceForm()
    return _section(request, sandbox, "_services.html", status=400, service_form=form)


@require_POST
@team_view
def sandbox_service_hide(request: HttpRequest, sandbox_id: str, service: str) -> HttpResponse:
    sandbox = selectors.get_sandbox(team=request.team, sandbox_id=sandbox_id)
    return _apply(
        request,
        sandbox,
        lambda: interactive.hide_service(sandbox=sandbox, actor=actor(request), name=service),
        success=f"Removed service {service}.",
        section="_services.html",
    )


@require_POST
@team_view
def sandbox_wake_on(request: HttpRequest, sandbox_id: str) -> HttpResponse:
    sandbox = selectors.get_sandbox(team=request.team, sandbox_id=sandbox_id)
    form = WakeOnForm(request.POST)
    form.is_valid()  # two checkboxes: always valid
    return _apply(
        request,
        sandbox,
        lambda: interactive.set_wake_on(sandbox=sandbox, actor=actor(request), **form.cleaned_data),
        success="Wake-on saved.",
        section="_services.html",
    )


@require_POST
@team_view
def sandbox_exec(request: HttpRequest, sandbox_id: str) -> HttpResponse:
    """Run a command and show its exit code, stdout and stderr (escaped by the template)."""
    sandbox = selectors.get_sandbox(team=request.team, sandbox_id=sandbox_id)
    form = ExecForm(request.POST)
    result, error = None, ""
    if form.is_valid():
        try:
            result = interactive.exec_command(
                sandbox=sandbox,
                actor=actor(request),
                command=form.cleaned_data["command"],
                timeout_seconds=form.cleaned_data["timeout"] or 60,
            )
        except ServiceError as exc:
            error = exc.message
    context = {"exec_form": form, "exec_result": result, "exec_error": error}
    if is_partial(request):
        return render_fragment(
            request, "sandboxes/_exec_result.html", {"sandbox": sandbox, **context}
        )
    return render(request, "sandboxes/detail.html", detail_context(request, sandbox, **context))


@require_POST
@team_view
def sandbox_snapshot(request: HttpRequest, sandbox_id: str) -> HttpResponse:
    """Take a new snapshot version of the sandbox's preset from it."""
    sandbox = selectors.get_sandbox(team=request.team, sandbox_id=sandbox_id)
    form = SnapshotForm(request.POST)
    if form.is_valid():
        try:
            version = snapshots.take_snapshot(
                sandbox=sandbox, actor=actor(request), label=form.cleaned_data["label"]
            )
            messages.success(request, f"Taking snapshot {version.snapshot_id}.")
        except ServiceError as exc:
            report(request, exc)
    else:
        messages.error(request, "The label is at most 200 characters.")
    if not is_partial(request):
        return _back(request, sandbox)
    return render_fragment(request, "sandboxes/_taken.html", live_context(request, sandbox))


@require_GET
@team_view
def sandbox_snapshots_taken(request: HttpRequest, sandbox_id: str) -> HttpResponse:
    """Snapshots taken from this sandbox; polled while one is being made (286 when done)."""
    sandbox = selectors.get_sandbox(team=request.team, sandbox_id=sandbox_id)
    context = live_context(request, sandbox)
    if not is_partial(request):
        return render(request, "sandboxes/detail.html", detail_context(request, sandbox))
    response = render_fragment(request, "sandboxes/_taken.html", context)
    return polled(response, done=not context["taking"])


@require_GET
@team_view
def sandbox_metrics(request: HttpRequest, sandbox_id: str) -> HttpResponse:
    """CPU and memory over time where the provider reports them (a provider call)."""
    sandbox = selectors.get_sandbox(team=request.team, sandbox_id=sandbox_id)
    metrics = interactive.sandbox_metrics(sandbox=sandbox)
    context = {
        "sandbox": sandbox,
        "metrics": metrics,
        "charts": [
            cpu_sparkline(metrics.samples, vcpus=sandbox.vcpus),
            memory_sparkline(metrics.samples, memory_mb=sandbox.memory_mb),
        ],
    }
    if is_partial(request):
        return render_fragment(request, "sandboxes/_metrics.html", context)
    return render(request, "sandboxes/metrics.html", context)
