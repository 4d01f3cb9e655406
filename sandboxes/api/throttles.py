"""Per-team rate limits: one rate for creating sandboxes, one for every other call.

A fixed-window counter per (team, scope): in Redis when ``REDIS_URL`` is set, else in the
database (``sandboxes.services.throttling``); either way shared by every web worker. A
refused request answers 429 with ``Retry-After`` (seconds until the window ends).

Rates come from settings ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]``: ``team`` and
``team_create`` (environment ``SANDBOX_API_RATE`` and ``SANDBOX_API_CREATE_RATE``), written
like ``600/min``; an empty rate switches that limit off.
"""

from __future__ import annotations

import math
import time

from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

from sandboxes.api.auth import Principal
from sandboxes.services.throttling import PERIODS, count_request, parse_rate

__all__ = ["PERIODS", "TeamCreateThrottle", "TeamRateThrottle", "parse_rate"]


class TeamRateThrottle(BaseThrottle):
    """Counts a team's requests of one scope; views pick the scope with ``throttle_kind``."""

    scope = "team"

    def applies_to(self, request: Request, view) -> bool:
        return getattr(view, "throttle_kind", "team") == "team" or request.method != "POST"

    def allow_request(self, request: Request, view) -> bool:
        principal = request.auth
        if not isinstance(principal, Principal) or not self.applies_to(request, view):
            return True
        limit = parse_rate(api_settings.DEFAULT_THROTTLE_RATES.get(self.scope))
        if limit is None:
            return True
        count, period = limit
        now = time.time()
        window = int(now // period)
        key = f"{self.scope}:{principal.team.pk}:{period}"
        used = count_request(key, window=window, period=period)
        self._wait = (window + 1) * period - now
        return used <= count

    def wait(self) -> float:
        return max(1, math.ceil(self._wait))


class TeamCreateThrottle(TeamRateThrottle):
    """Only for views with ``throttle_kind = "create"``, and only their POST."""

    scope = "team_create"

    def applies_to(self, request: Request, view) -> bool:
        return getattr(view, "throttle_kind", "team") == "create" and request.method == "POST"
