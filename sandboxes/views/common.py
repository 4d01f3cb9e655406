"""What every dashboard view shares: the current team, partial rendering, going back.

Every view is wrapped in ``team_view``: it requires a signed-in member, puts the current
team context on the request (``request.team``, ``request.team_ctx``), and turns an
object of another team (``DoesNotExist`` from a selector) into a plain 404.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render, resolve_url
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.utils.http import url_has_allowed_host_and_scheme
from django_htmx.http import HttpResponseClientRedirect, HttpResponseStopPolling

from sandboxes.current_team import team_context
from sandboxes.models import ApiToken, Environment, Sandbox, Snapshot
from sandboxes.services import backends
from sandboxes.services.actors import Actor
from sandboxes.services.errors import ServiceError

if TYPE_CHECKING:
    from sandboxes.services.backends import Capabilities

View = Callable[..., HttpResponse]
NOT_FOUND = (
    Sandbox.DoesNotExist,
    Snapshot.DoesNotExist,
    ApiToken.DoesNotExist,
    Environment.DoesNotExist,
)


def team_view(view: View) -> View:
    """Require a signed-in team member; 404 for anything outside the current team."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            if request.htmx:  # a fragment swap cannot show a login page: go there instead
                return HttpResponseClientRedirect(resolve_url(settings.LOGIN_URL))
            return redirect_to_login(request.get_full_path())
        context = team_context(request)
        if context is None:
            return render(request, "sandboxes/no_team.html", status=403)
        request.team = context.team
        request.team_ctx = context
        try:
            response = view(request, *args, **kwargs)
        except NOT_FOUND:
            raise Http404("not found in your team") from None
        patch_vary_headers(response, ["HX-Request"])
        return response

    return wrapper


def actor(request: HttpRequest) -> Actor:
    return Actor.for_user(request.user)


def is_partial(request: HttpRequest) -> bool:
    """An HTMX request for a fragment (not a history restore, which needs the page)."""
    return bool(request.htmx) and not request.htmx.history_restore_request


def render_fragment(
    request: HttpRequest, template: str, context: dict[str, Any], *, status: int = 200
) -> HttpResponse:
    """A fragment for HTMX, with pending messages swapped into the page out of band."""
    body = render_to_string(template, context, request)
    body += render_to_string("sandboxes/_messages.html", {"oob": True}, request)
    return HttpResponse(body, status=status)


def polled(response: HttpResponse, *, done: bool) -> HttpResponse:
    """A polled fragment; once ``done``, the same body as HTTP 286, which tells HTMX to
    stop polling (the element's ``hx-trigger="every ..."`` ends there)."""
    if not done:
        return response
    stop = HttpResponseStopPolling(response.content)
    stop["Content-Type"] = response["Content-Type"]
    return stop


def safe_next(request: HttpRequest, default: str) -> str:
    """The ``next`` the form carried when it points back into this site, else ``default``."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return default


def redirect_back(request: HttpRequest, default: str) -> HttpResponse:
    """After a change: back where the person was (a full navigation under HTMX too, so the
    page and its messages are current)."""
    url = safe_next(request, default)
    if request.htmx:
        return HttpResponseClientRedirect(url)
    return HttpResponseRedirect(url)


def report(request: HttpRequest, error: ServiceError) -> None:
    """A refusal or failure from a service, as a message the person can act on."""
    messages.error(request, error.message)


def confirmed(request: HttpRequest) -> bool:
    """Destructive actions carry ``confirmed=1``: HTMX adds it after ``hx-confirm``, and
    without JavaScript the confirmation page's form does."""
    return request.POST.get("confirmed") == "1"


def confirm_page(
    request: HttpRequest, *, title: str, question: str, action: str, button: str
) -> HttpResponse:
    """Ask before a destructive POST (the no-JavaScript path); resubmits the same fields."""
    fields = [
        (key, value)
        for key in request.POST
        if key not in ("csrfmiddlewaretoken", "confirmed")
        for value in request.POST.getlist(key)
    ]
    context = {
        "title": title,
        "question": question,
        "action": action,
        "button": button,
        "fields": fields,
        "cancel": safe_next(request, reverse("sandbox-list")),
    }
    return render(request, "sandboxes/confirm.html", context, status=200)


def capabilities_for(request: HttpRequest, provider: str) -> Capabilities:
    """A provider's capabilities, once per request; a provider switched off since the
    sandbox was made offers nothing, and says so."""
    cache: dict[str, Capabilities] = request.__dict__.setdefault("_capabilities", {})
    if provider not in cache:
        cache[provider] = backends.provider_capabilities(provider)
    return cache[provider]
