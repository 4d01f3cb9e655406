"""Team environments: list, create, edit, delete, and start a sandbox from one in one
click (``services/environments.py``)."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from sandboxes import selectors
from sandboxes.forms import EnvironmentForm, add_service_error
from sandboxes.services import backends, environments, lifecycle
from sandboxes.services.errors import ServiceError
from sandboxes.views.common import actor, confirm_page, confirmed, redirect_back, report, team_view


def _form(request: HttpRequest, data=None, *, initial=None) -> EnvironmentForm:
    return EnvironmentForm(
        data,
        initial=initial,
        presets=list(selectors.presets()),
        providers=backends.enabled_provider_names(),
        secret_names=list(selectors.team_secrets(team=request.team).values_list("name", flat=True)),
    )


def _page(request: HttpRequest, form: EnvironmentForm, environment=None) -> HttpResponse:
    idle, keep = lifecycle.team_lifecycle_defaults(request.team)
    context = {
        "form": form,
        "environment": environment,
        "environments": list(selectors.environments(team=request.team)),
        "team_defaults": {"idle": idle, "keep": keep},
    }
    template = "environments/edit.html" if environment else "environments/list.html"
    return render(request, template, context, status=400 if form.errors else 200)


@require_http_methods(["GET", "POST"])
@team_view
def environment_list(request: HttpRequest) -> HttpResponse:
    form = _form(request, request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            environment = environments.create_environment(
                team=request.team, actor=actor(request), data=form.as_data()
            )
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"Environment {environment.name} saved.")
            return redirect("environment-list")
    return _page(request, form)


@require_http_methods(["GET", "POST"])
@team_view
def environment_edit(request: HttpRequest, environment_id: int) -> HttpResponse:
    environment = selectors.environments(team=request.team).get(pk=environment_id)
    if request.method == "POST":
        form = _form(request, request.POST)
        if form.is_valid():
            try:
                environments.update_environment(
                    environment=environment, actor=actor(request), changes=form.as_data()
                )
            except ServiceError as exc:
                add_service_error(form, exc)
                environment.refresh_from_db()
            else:
                messages.success(request, f"Environment {environment.name} saved.")
                return redirect("environment-list")
    else:
        form = _form(request, initial=EnvironmentForm.initial_of(environment))
    return _page(request, form, environment)


@require_POST
@team_view
def environment_start(request: HttpRequest, environment_id: int) -> HttpResponse:
    environment = selectors.environments(team=request.team).get(pk=environment_id)
    try:
        sandbox = environments.start_environment(environment=environment, actor=actor(request))
    except ServiceError as exc:
        report(request, exc)
        return redirect_back(request, reverse("environment-list"))
    messages.success(request, f"Starting {sandbox.name or sandbox.pk} from {environment.name}.")
    return HttpResponseRedirect(reverse("sandbox-detail", args=[sandbox.pk]))


@require_POST
@team_view
def environment_delete(request: HttpRequest, environment_id: int) -> HttpResponse:
    environment = selectors.environments(team=request.team).get(pk=environment_id)
    if not confirmed(request):
        return confirm_page(
            request,
            title=f"Delete environment {environment.name}",
            question=f"Delete environment {environment.name}? Sandboxes started from it keep "
            "running as they are.",
            action=reverse("environment-delete", args=[environment.pk]),
            button="Delete",
        )
    try:
        environments.delete_environment(environment=environment, actor=actor(request))
        messages.success(request, f"Deleted environment {environment.name}.")
    except ServiceError as exc:
        report(request, exc)
    return redirect_back(request, reverse("environment-list"))
