"""Preview URLs: who may reach an exposed service at its own origin, and how a browser
gets in (the HTTP side is ``sandboxes/preview.py``).

Every exposed service is served at ``<port>-<sandbox id>.<SANDBOX_PREVIEW_DOMAIN>``. Its
*sharing level* is stored with the service (``Sandbox.services[i]["sharing"]``):

``private`` (the default)
    People of the sandbox's team who may write there (members, admins, owners; not
    viewers nor read-only tokens): an IDE or a dev server is a shell into the sandbox, so
    it is offered to whoever may exec in it.
``team``
    Everyone of the sandbox's team, viewers and read-only tokens included.
``public``
    Anyone with the URL, signed in or not. Nothing of the team is sent or shown.

A browser proves who it is with a short-lived signed *token* the dashboard makes
(``issue_token``; ``SANDBOX_PREVIEW_TOKEN_SECONDS``), which the preview host exchanges for
a *cookie* of that host only (``session_value``; ``SANDBOX_PREVIEW_SESSION_SECONDS``). The
control plane's own session cookie never reaches a preview host (it is host-only, and the
preview hosts are other hosts). Both values name the user, the sandbox and the port, and
carry the user's session hash, so a password change ends them as it ends the dashboard's
session; membership and role are checked again on every request. A script sends its API
token in ``Authorization: Bearer``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.db import transaction
from django.utils.crypto import constant_time_compare

from sandboxes import db_pool, selectors
from sandboxes.models import Outcome, Sandbox
from sandboxes.services import auth_failures, interactive, lifecycle, long_calls, tokens
from sandboxes.services.actors import Actor
from sandboxes.services.errors import (
    IllegalTransition,
    InvalidInput,
    NotAllowed,
    ServiceError,
    TooManyLongCalls,
)
from sandboxes.services.events import record_event
from sandboxes.states import PARKED, WAKING, Status

PRIVATE, TEAM, PUBLIC = "private", "team", "public"
SHARING_LEVELS = (PRIVATE, TEAM, PUBLIC)
DEFAULT_SHARING = PRIVATE
#: The cookie a preview host keeps its visitor's access in (host-only, HttpOnly).
COOKIE_NAME = "sandbox_preview"
#: The path on a preview host that exchanges a token for the cookie.
EXCHANGE_PATH = "/__sandboxes/auth"
_TOKEN_SALT = "sandboxes.preview.token"  # noqa: S105 - a salt, not a secret
_SESSION_SALT = "sandboxes.preview.session"
_HOST = re.compile(r"(?P<port>[1-9][0-9]{0,4})-(?P<sandbox>sbx-[a-z0-9]{1,60})")


def sharing_of(service: dict[str, Any]) -> str:
    sharing = service.get("sharing")
    return sharing if sharing in SHARING_LEVELS else DEFAULT_SHARING


# --- addresses


def preview_host(sandbox_id: str, port: int) -> str:
    """The host name (no port) of a service's preview origin."""
    return f"{port}-{sandbox_id.lower()}.{settings.SANDBOX_PREVIEW_DOMAIN}"


def preview_origin(sandbox_id: str, port: int, *, scheme: str = "http", web_port: int = 0) -> str:
    """``scheme://host[:port]`` of a service's preview; ``scheme`` and ``web_port`` are the
    dashboard request's, used where ``SANDBOX_PREVIEW_SCHEME``/``_PORT`` are unset."""
    scheme = settings.SANDBOX_PREVIEW_SCHEME or scheme
    port_part = settings.SANDBOX_PREVIEW_PORT or web_port
    default = 443 if scheme == "https" else 80
    suffix = f":{port_part}" if port_part and int(port_part) != default else ""
    return f"{scheme}://{preview_host(sandbox_id, port)}{suffix}"


def parse_host(host: str) -> tuple[int, str] | None:
    """(service port, sandbox id) of a ``Host`` header naming a preview host, else None."""
    name = host.strip().lower()
    if name.startswith("["):
        return None
    name = name.rsplit(":", 1)[0] if ":" in name else name
    suffix = "." + settings.SANDBOX_PREVIEW_DOMAIN
    if not name.endswith(suffix):
        return None
    match = _HOST.fullmatch(name[: -len(suffix)])
    if match is None or int(match["port"]) > 65535:
        return None
    return int(match["port"]), match["sandbox"]


# --- sharing


def set_sharing(*, sandbox: Sandbox, actor: Actor, name: str, sharing: str) -> dict[str, Any]:
    """Set who may reach the exposed service ``name`` (see the module); return it."""
    actor.require_write(sandbox.team, "change services")
    if sharing not in SHARING_LEVELS:
        raise InvalidInput(
            f"sharing: one of {', '.join(SHARING_LEVELS)}",
            fields={"sharing": [f"one of {', '.join(SHARING_LEVELS)}"]},
        )
    if sandbox.status == Status.DELETED:
        raise IllegalTransition("change services of", sandbox.status)
    with transaction.atomic():
        row = Sandbox.objects.select_for_update().get(pk=sandbox.pk)
        current = next((s for s in row.services if s["name"] == name), None)
        if current is None:
            raise InvalidInput(
                f"no exposed service called {name[:40]!r}", fields={"name": ["not exposed"]}
            )
        service = {**current, "sharing": sharing}
        row.services = [service if s["name"] == name else s for s in row.services]
        row.save(update_fields=["services", "updated_at"])
        record_event(
            actor=actor,
            action="service_sharing",
            outcome=Outcome.SUCCEEDED,
            sandbox=row,
            data={"name": name, "sharing": sharing, "was": sharing_of(current)},
        )
    sandbox.services = row.services
    return service


# --- tokens and the cookie


def issue_token(*, sandbox: Sandbox, actor: Actor, port: int) -> str:
    """A token that lets the signed-in user of ``actor`` into the preview of ``port``
    (valid ``SANDBOX_PREVIEW_TOKEN_SECONDS``); NotAllowed when the user may not."""
    service = next((s for s in sandbox.services if s["port"] == port), None)
    if service is None:
        raise InvalidInput(f"no exposed service on port {port}", fields={"port": ["not exposed"]})
    if actor.user is None or actor.token is not None or not _may_use(actor, sandbox, service):
        raise NotAllowed("your role in this team cannot open this service")
    return signing.dumps(_claims(actor.user, sandbox.pk, port), salt=_TOKEN_SALT, compress=True)


def exchange_token(*, token: str, sandbox_id: str, port: int) -> str | None:
    """The cookie value for a valid token of this preview host, else None."""
    claims = _load(token, _TOKEN_SALT, settings.SANDBOX_PREVIEW_TOKEN_SECONDS)
    if claims is None or claims.get("s") != sandbox_id or claims.get("p") != port:
        return None
    return signing.dumps(claims, salt=_SESSION_SALT, compress=True)


def _claims(user: Any, sandbox_id: str, port: int) -> dict[str, Any]:
    return {"u": user.pk, "s": sandbox_id, "p": port, "h": user.get_session_auth_hash()}


def _load(value: str, salt: str, max_age: int) -> dict[str, Any] | None:
    if not value or len(value) > 1000:
        return None
    try:
        claims = signing.loads(value, salt=salt, max_age=max_age)
    except signing.BadSignature:
        return None
    return claims if isinstance(claims, dict) else None


def _user_of(claims: dict[str, Any]) -> Any | None:
    user = get_user_model().objects.filter(pk=claims.get("u"), is_active=True).first()
    if user is None or not constant_time_compare(
        str(claims.get("h", "")), user.get_session_auth_hash()
    ):
        return None
    return user


def _may_use(actor: Actor, sandbox: Sandbox, service: dict[str, Any]) -> bool:
    sharing = sharing_of(service)
    if sharing == PUBLIC:
        return True
    if sharing == TEAM:
        return actor.can_read(sandbox.team)
    return actor.can_write(sandbox.team)


# --- a request


@dataclass(frozen=True)
class Access:
    """What ``authorize`` decided. ``outcome``: ``ok`` (``sandbox``, ``service`` and
    ``actor`` set; ``actor`` None for an anonymous visitor of a public service), ``login``
    (a browser without access: send it through the dashboard), ``unauthorized`` (a
    refused API token), ``throttled`` (too many refused tokens: ``retry_after``) or
    ``forbidden`` (signed in, but this service is not for them)."""

    outcome: str
    sandbox: Sandbox | None = None
    service: dict[str, Any] | None = None
    actor: Actor | None = None
    retry_after: int = 0


def authorize(
    *, sandbox_id: str, port: int, cookie: str, bearer: str | None, client_ip: str
) -> Access:
    """Who the request is and whether it may reach the service. Nothing tells a visitor
    without access whether the sandbox or the service exists (``login`` for all)."""
    sandbox = selectors.preview_target(sandbox_id=sandbox_id)
    service = None
    if sandbox is not None:
        service = next((s for s in sandbox.services if s.get("port") == port), None)
    if sandbox is not None and service is not None and sharing_of(service) == PUBLIC:
        return Access("ok", sandbox, service, None)
    actor = None
    if bearer is not None:
        wait = auth_failures.blocked_for(client_ip)
        if wait is not None:
            return Access("throttled", retry_after=wait)
        token = tokens.authenticate_token(bearer)
        if token is None:
            auth_failures.record_failure(client_ip)
            return Access("unauthorized")
        actor = Actor.for_token(token)
    elif cookie:
        claims = _load(cookie, _SESSION_SALT, settings.SANDBOX_PREVIEW_SESSION_SECONDS)
        if claims is not None and claims.get("s") == sandbox_id and claims.get("p") == port:
            user = _user_of(claims)
            actor = Actor.for_user(user) if user is not None else None
    if actor is None:
        return Access("login")
    if sandbox is None or service is None or not actor.can_read(sandbox.team):
        return Access("forbidden" if bearer is None else "unauthorized")
    if not _may_use(actor, sandbox, service):
        return Access("forbidden")
    return Access("ok", sandbox, service, actor)


class NotReady(Exception):
    """The sandbox cannot take traffic now: ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, code: str, message: str, retry_after: int = 0) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


def ready_for_traffic(*, sandbox: Sandbox, actor: Actor | None, via: str = "http") -> Sandbox:
    """The sandbox, running, for a request about to reach it: a parked one with
    wake-on-HTTP on (``via="ssh"``: wake-on-SSH, for the SSH gateway) is resumed first
    (holding one of its team's long-call slots while the request waits); its activity is
    touched. NotReady otherwise."""
    if sandbox.status in PARKED | WAKING:
        if not (sandbox.wake_on_ssh if via == "ssh" else sandbox.wake_on_http):
            raise NotReady(
                409, "sandbox_not_running", f"the sandbox is {sandbox.status}; resume it first"
            )
        try:
            slot = long_calls.acquire(
                team=sandbox.team, kind="wake", seconds=settings.SANDBOX_WAKE_TIMEOUT_SECONDS
            )
        except TooManyLongCalls as exc:
            raise NotReady(429, exc.code, exc.message, exc.retry_after) from exc
        try:
            sandbox = lifecycle.wake(sandbox=sandbox, actor=actor or Actor.system())
        finally:
            slot.release()
    if sandbox.status != Status.RUNNING:
        raise NotReady(409, "sandbox_not_running", f"the sandbox is {sandbox.status}")
    if not interactive.activity_is_recent(sandbox):
        interactive.touch_activity(sandbox)
    db_pool.give_back()
    return sandbox


def moved_service(*, sandbox: Sandbox, service: dict[str, Any]) -> dict[str, Any] | None:
    """The service at its current URL when the provider moved it (None: it did not)."""
    try:
        return interactive.refresh_service_url(sandbox, service["name"])
    except ServiceError:
        return None  # the provider cannot tell (the instance is gone): nowhere else to go
