"""Opening a service's preview URL from the dashboard: a short-lived signed token, made
for the signed-in user, handed to the preview host, which exchanges it for a cookie of
its own host only (``sandboxes/services/previews.py``, ``sandboxes/preview.py``)."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from sandboxes import selectors
from sandboxes.services import previews
from sandboxes.services.errors import InvalidInput, NotAllowed, ServiceError
from sandboxes.views.common import (
    actor,
    is_partial,
    redirect_back,
    render_fragment,
    report,
    team_view,
)
from sandboxes.views.detail import detail_context


@team_view
def open_preview(request: HttpRequest, sandbox_id: str, port: int) -> HttpResponse:
    """Redirect to the preview of ``port`` (``?next=`` the path there), signed in."""
    sandbox = selectors.get_sandbox(team=request.team, sandbox_id=sandbox_id)
    try:
        token = previews.issue_token(sandbox=sandbox, actor=actor(request), port=port)
    except InvalidInput:
        raise Http404("no such service") from None
    except NotAllowed as exc:
        return HttpResponse(str(exc), status=403, content_type="text/plain; charset=utf-8")
    following = request.GET.get("next", "/")
    if not following.startswith("/") or following.startswith("//"):
        following = "/"
    origin = previews.preview_origin(
        sandbox.pk, port, scheme=request.scheme, web_port=int(request.get_port())
    )
    query = urlencode({"token": token, "next": following})
    response = HttpResponseRedirect(f"{origin}{previews.EXCHANGE_PATH}?{query}")
    response["Cache-Control"] = "no-store"
    response["Referrer-Policy"] = "no-referrer"
    return response


@require_POST
@team_view
def service_sharing(request: HttpRequest, sandbox_id: str, service: str) -> HttpResponse:
    """The sandbox page's sharing choice for one service (``previews.set_sharing``)."""
    sandbox = selectors.get_sandbox(team=request.team, sandbox_id=sandbox_id)
    try:
        previews.set_sharing(
            sandbox=sandbox,
            actor=actor(request),
            name=service,
            sharing=request.POST.get("sharing", ""),
        )
        messages.success(request, f"{service} is now {request.POST['sharing']}.")
    except ServiceError as exc:
        report(request, exc)
    if not is_partial(request):
        return redirect_back(request, reverse("sandbox-detail", args=[sandbox.pk]))
    context = detail_context(request, sandbox)
    return render_fragment(request, "sandboxes/_services.html", context)
