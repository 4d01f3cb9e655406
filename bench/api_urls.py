"""The project's URLs plus ``/bench/bare``: the same page of sandboxes from a plain view.

The bare view is the baseline the API's throughput is compared with: one Django view, no
DRF, no authentication, no throttling, no serializer; the same two queries (the count and
one page of 50 of the team's sandboxes, newest first, the same columns) answered as JSON
through the same middleware.
"""

import functools

from django.http import HttpRequest, JsonResponse
from django.urls import path

from config.urls import urlpatterns as project_urlpatterns
from sandboxes.models import Sandbox, Team
from sandboxes.selectors import SANDBOX_LIST_COLUMNS


@functools.cache
def bench_team_id() -> int:
    return Team.objects.get(slug="bench").pk


def bare(request: HttpRequest) -> JsonResponse:
    rows = Sandbox.objects.filter(team_id=bench_team_id()).exclude(status="deleted")
    page = list(rows.order_by("-created_at", "-pk").values(*SANDBOX_LIST_COLUMNS)[:50])
    return JsonResponse({"count": rows.count(), "results": page})


urlpatterns = [path("bench/bare", bare), *project_urlpatterns]
