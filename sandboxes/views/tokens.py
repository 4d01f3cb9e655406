"""API tokens of the current team: create (the secret is shown once), list, revoke."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from sandboxes import selectors
from sandboxes.forms import TokenForm, add_service_error
from sandboxes.services import tokens
from sandboxes.services.errors import ServiceError
from sandboxes.views.common import (
    actor,
    confirm_page,
    confirmed,
    redirect_back,
    report,
    team_view,
)


def _context(request: HttpRequest, **extra) -> dict:
    context = request.team_ctx
    mine = list(selectors.api_tokens(team=context.team, user=request.user))
    others = (
        list(selectors.api_tokens(team=context.team).exclude(user=request.user))
        if context.can_manage
        else []
    )
    return {"mine": mine, "others": others, "form": TokenForm(), **extra}


@never_cache
@require_http_methods(["GET", "POST"])
@team_view
def token_list(request: HttpRequest) -> HttpResponse:
    """GET lists; POST creates and answers with the secret, once (never stored or logged)."""
    if request.method != "POST":
        return render(request, "tokens/list.html", _context(request))
    form = TokenForm(request.POST)
    secret, created = "", None
    if form.is_valid():
        try:
            created, secret = tokens.create_api_token(
                user=request.user,
                team=request.team,
                actor=actor(request),
                name=form.cleaned_data["name"],
                can_write=not form.cleaned_data["read_only"],
                expires_at=form.expires_at(),
            )
        except ServiceError as exc:
            add_service_error(form, exc)
    status = 200 if created else 400
    if created:
        form = TokenForm()
    # The secret goes into this one response only; it is not put in the session or a
    # message, so a reload or the back button cannot show it again.
    context = _context(request, form=form, secret=secret, created=created)
    return render(request, "tokens/list.html", context, status=status)


@require_POST
@team_view
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    # Other members' tokens only for owners and admins, as on the list.
    owner = None if request.team_ctx.can_manage else request.user
    token = selectors.get_api_token(team=request.team, token_id=token_id, user=owner)
    if not confirmed(request):
        return confirm_page(
            request,
            title=f"Revoke {token.prefix}…",
            question=f"Revoke token {token.prefix}…? Scripts using it stop working at once.",
            action=reverse("token-revoke", args=[token.pk]),
            button="Revoke",
        )
    try:
        tokens.revoke_api_token(token=token, actor=actor(request))
        messages.success(request, f"Revoked token {token.prefix}….")
    except ServiceError as exc:
        report(request, exc)
    return redirect_back(request, reverse("token-list"))
