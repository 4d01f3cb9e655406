"""Sign-in throttling with django-axes: the client's address, two limits, the lockout page.

Failed sign-ins (the dashboard's /login/ and the admin's /admin/login/, both Django's
``authenticate``) are recorded by axes in the database (``axes.models.AccessAttempt``:
one row per username, address and user agent). A client is locked out when, within the
cool-off:

- one username from one address failed ``LOGIN_FAILURE_LIMIT`` times (someone guessing one
  account's password; others at the same address can still sign in), or
- one address failed ``LOGIN_IP_FAILURE_LIMIT`` times whatever the usernames (someone
  trying many accounts).

A locked-out client's sign-ins are refused before the password is checked, the right one
too, until the cool-off has passed since its last counted failure, or an admin deletes its
access attempts (the admin's "Access attempts" page, or ``manage.py axes_reset``).
"""

from __future__ import annotations

import math
from datetime import timedelta

from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_client_username, get_cool_off
from axes.models import AccessAttempt
from django.conf import settings
from django.db.models import Max, Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from sandboxes.services.auth_failures import client_ip

__all__ = ["LockoutHandler", "client_ip", "lockout_response"]


def _recent_attempts(request: HttpRequest):
    attempts = AccessAttempt.objects.all()
    cool_off = get_cool_off(request)
    if cool_off is not None:
        since = (getattr(request, "axes_attempt_time", None) or timezone.now()) - cool_off
        attempts = attempts.filter(attempt_time__gte=since)
    return attempts


class LockoutHandler(AxesDatabaseHandler):
    """axes' database handler with a limit per (username, address) and one per address.

    axes compares one number with one limit (``AXES_FAILURE_LIMIT``, the per-username
    limit); this answers the per-username count, or at least that limit when the address
    as a whole is past ``LOGIN_IP_FAILURE_LIMIT``.
    """

    def get_failures(self, request, credentials: dict | None = None) -> int:
        address = request.axes_ip_address
        username = get_client_username(request, credentials)
        recent = _recent_attempts(request).filter(ip_address=address)
        total = "failures_since_start"
        per_user = recent.filter(username=username).aggregate(n=Sum(total))["n"] or 0
        per_address = recent.aggregate(n=Sum(total))["n"] or 0
        if per_address >= settings.LOGIN_IP_FAILURE_LIMIT:
            return max(per_user, per_address, settings.LOGIN_FAILURE_LIMIT)
        return per_user


def retry_after(request: HttpRequest) -> timedelta | None:
    """How long until the address's lockout ends (an upper bound), None without a cool-off."""
    cool_off = get_cool_off(request)
    if cool_off is None:
        return None
    address = getattr(request, "axes_ip_address", None) or client_ip(request)
    last = AccessAttempt.objects.filter(ip_address=address).aggregate(t=Max("attempt_time"))["t"]
    remaining = (last + cool_off - timezone.now()) if last else cool_off
    return max(remaining, timedelta(seconds=1))


def lockout_response(
    request: HttpRequest, original_response=None, credentials: dict | None = None
) -> HttpResponse:
    """axes' AXES_LOCKOUT_CALLABLE: 429, ``Retry-After`` and a page that says when."""
    wait = retry_after(request)
    context = {
        "minutes": math.ceil(wait.total_seconds() / 60) if wait else None,
        "admin_site": request.path.startswith("/admin/"),
    }
    response = render(
        request, "registration/locked_out.html", context, status=settings.AXES_HTTP_RESPONSE_CODE
    )
    if wait:
        response["Retry-After"] = str(math.ceil(wait.total_seconds()))
    return response
