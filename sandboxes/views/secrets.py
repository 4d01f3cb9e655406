"""Team secrets: set or replace (the value is never shown again), list names, delete."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from sandboxes import selectors
from sandboxes.forms import SecretForm, add_service_error
from sandboxes.services import team_secrets
from sandboxes.services.errors import ServiceError
from sandboxes.views.common import actor, confirm_page, confirmed, redirect_back, report, team_view


@never_cache
@require_http_methods(["GET", "POST"])
@team_view
def secret_list(request: HttpRequest) -> HttpResponse:
    form = SecretForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        name = form.cleaned_data["name"]
        try:
            _, created = team_secrets.set_secret(
                team=request.team,
                actor=actor(request),
                name=name,
                value=form.cleaned_data["value"],
            )
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"Secret {name} {'saved' if created else 'replaced'}.")
            return redirect("secret-list")  # a reload does not post the value again
    context = {"form": form, "secrets": list(selectors.team_secrets(team=request.team))}
    return render(request, "secrets/list.html", context, status=400 if form.errors else 200)


@require_POST
@team_view
def secret_delete(request: HttpRequest, name: str) -> HttpResponse:
    if not selectors.team_secrets(team=request.team).filter(name=name).exists():
        raise Http404("no such secret in your team")
    if not confirmed(request):
        return confirm_page(
            request,
            title=f"Delete secret {name}",
            question=f"Delete secret {name}? Sandboxes that use it can no longer exec until "
            "it is set again.",
            action=reverse("secret-delete", args=[name]),
            button="Delete",
        )
    try:
        team_secrets.delete_secret(team=request.team, actor=actor(request), name=name)
        messages.success(request, f"Deleted secret {name}.")
    except ServiceError as exc:
        report(request, exc)
    return redirect_back(request, reverse("secret-list"))
