"""Opening a service's preview URL from the dashboard: a short-lived signed token, made
for the signed-in user, handed to the preview host, which exchanges it for a cookie of
its own host only (``sandboxes/services/previews.py``, ``sandboxes/preview.py``)."""

from __future__ import annotations

from urllib.parse import urlencode

from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect

from sandboxes import selectors
from sandboxes.services import previews
from sandboxes.services.errors import InvalidInput, NotAllowed
from sandboxes.views.common import actor, team_view


@team_view
def open_preview(request: HttpRequest, sandbox_id: str, port: int) -> HttpResponse:
    """Redirect to the preview of ``port`` (``?next=`` the path there), signed in."""
    sandbox = selectors.get_sandbox(request.team, sandbox_id)
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
