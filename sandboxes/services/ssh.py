"""The SSH gateway's services: who may log in to which sandbox, and what a session does.

Two ways in (docs/ssh.md):

* ``ssh -p 2222 <sandbox id>@host`` with a public key the user registered
  (``add_key``): any sandbox of a team where the user may write.
* ``ssh -p 2222 <token>@host`` with a short-lived token from ``issue_token``
  (``POST /api/v1/sandboxes/{id}/ssh``): that one sandbox, as the user who asked for it.
  Only the token's SHA-256 digest is stored; it expires after
  ``SANDBOX_SSH_TOKEN_SECONDS``.

Viewers and read-only API tokens get no SSH (a shell is a write). A login's role is read
again at every login, so leaving a team ends its keys' and tokens' reach.

A session (``open_session``/``close_session``) is a pair of ``ssh_session`` audit events:
who, which sandbox, how (key or token), how long. What runs inside goes through the same
services as everything else: ``terminals.open_terminal`` for a shell (a PTY),
``open_process`` (streamed pipes, audited as ``ssh_exec``) or ``interactive.exec_command``
(buffered, where a provider has no streamed processes) for ``ssh host cmd``, and
``connect_forward`` for ``ssh -L``, which reaches only the sandbox's own exposed services
through the provider's service path (``transport.connect``): never the host, never
another sandbox.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta

import asyncssh
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from providers.base import ProcessSession
from providers.errors import ProviderError
from sandboxes.models import Outcome, Sandbox, SandboxEvent, SshKey, SshToken
from sandboxes.services import auth_failures, previews, team_secrets, transport
from sandboxes.services.actors import Actor
from sandboxes.services.backends import capabilities
from sandboxes.services.errors import InvalidInput, NotAllowed, ServiceError
from sandboxes.services.events import record_event
from sandboxes.services.interactive import (
    _failure,
    _instance,
    _require,
    touch_activity,
)
from sandboxes.states import ACTION_STATUSES, Status

TOKEN_PREFIX = "sbssh"  # noqa: S105 - the public marker, not a secret
_TOKEN_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"  # noqa: S105 - an alphabet
_TOKEN_LENGTH = 40  # about 206 bits
#: Host names ``ssh -L`` may forward to: the sandbox itself (its own loopback).
LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "ip6-localhost"})
#: Where the image's sftp-server may be (Debian, Fedora, Alpine).
SFTP_SERVER_COMMAND = (
    "for p in /usr/lib/openssh/sftp-server /usr/libexec/openssh/sftp-server "
    "/usr/lib/ssh/sftp-server /usr/libexec/sftp-server /usr/lib/sftp-server; do "
    '[ -x "$p" ] && exec "$p"; done; '
    'echo "this sandbox has no sftp-server (install openssh-sftp-server)" >&2; exit 127'
)


# --- keys


@dataclass(frozen=True)
class ParsedKey:
    public_key: str
    fingerprint: str
    comment: str


def parse_key(text: str) -> ParsedKey:
    """A public key in OpenSSH's one-line form; InvalidInput when it is not one."""
    text = (text or "").strip()
    if not text or len(text) > 16384 or "\n" in text or "PRIVATE" in text:
        raise InvalidInput(
            "public_key: one line as in ~/.ssh/id_ed25519.pub",
            fields={"public_key": ["one public key in OpenSSH format"]},
        )
    try:
        key = asyncssh.import_public_key(text)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise InvalidInput(
            f"public_key: not an OpenSSH public key ({exc})",
            fields={"public_key": ["not an OpenSSH public key"]},
        ) from None
    exported = key.export_public_key("openssh").decode().strip()
    parts = text.split(None, 2)
    comment = parts[2] if len(parts) > 2 else ""
    return ParsedKey(
        public_key=" ".join(exported.split()[:2]),
        fingerprint=key.get_fingerprint("sha256"),
        comment=comment[:100],
    )


def add_key(*, actor: Actor, name: str, public_key: str) -> SshKey:
    """Register ``public_key`` for the signed-in user of ``actor`` (API tokens may too, for
    their user). A key registered already (by anyone) is refused: one key, one owner."""
    if actor.user is None:
        raise NotAllowed("only a user can register SSH keys")
    if actor.token is not None and not actor.token.can_write:
        raise NotAllowed("a read-only token cannot register SSH keys")
    parsed = parse_key(public_key)
    name = (name or "").strip() or parsed.comment or parsed.fingerprint[:20]
    if len(name) > 100:
        raise InvalidInput("name: 100 characters at most", fields={"name": ["too long"]})
    with transaction.atomic():
        if SshKey.objects.filter(fingerprint=parsed.fingerprint).exists():
            raise InvalidInput(
                "public_key: this key is registered already",
                fields={"public_key": ["registered already"]},
            )
        key = SshKey.objects.create(
            user=actor.user,
            name=name,
            public_key=parsed.public_key,
            fingerprint=parsed.fingerprint,
        )
        record_event(
            actor=actor,
            action="ssh_key_add",
            outcome=Outcome.SUCCEEDED,
            data={"name": name, "fingerprint": key.fingerprint},
        )
    return key


def delete_key(*, actor: Actor, key_id: int) -> None:
    """Remove one of the user's keys (NotAllowed for anyone else's, as for a missing one)."""
    if actor.user is None or (actor.token is not None and not actor.token.can_write):
        raise NotAllowed("you cannot remove SSH keys")
    with transaction.atomic():
        key = SshKey.objects.filter(pk=key_id, user=actor.user).first()
        if key is None:
            raise NotAllowed("no such SSH key of yours")
        key.delete()
        record_event(
            actor=actor,
            action="ssh_key_delete",
            outcome=Outcome.SUCCEEDED,
            data={"name": key.name, "fingerprint": key.fingerprint},
        )


# --- tokens and the command to run


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_token(login: str) -> bool:
    return login.startswith(TOKEN_PREFIX) and len(login) == len(TOKEN_PREFIX) + _TOKEN_LENGTH


def public_address() -> tuple[str, int]:
    """The host and port people reach the gateway at (``SANDBOX_SSH_PUBLIC_HOST``/``_PORT``,
    else where it listens)."""
    host = settings.SANDBOX_SSH_PUBLIC_HOST or settings.SANDBOX_SSH_HOST
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - listening everywhere: name this host
        host = "localhost"
    port = settings.SANDBOX_SSH_PUBLIC_PORT or settings.SANDBOX_SSH_PORT
    return host, port


def command_for(login: str) -> str:
    """The ``ssh`` command line that logs in as ``login``."""
    host, port = public_address()
    host = f"[{host}]" if ":" in host else host
    port_part = "" if port == 22 else f"-p {port} "
    return f"ssh {port_part}{login}@{host}"


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_at: object
    command: str
    row: SshToken


def issue_token(*, sandbox: Sandbox, actor: Actor) -> IssuedToken:
    """A short-lived login for ``sandbox`` (shown once). Writers of its team only."""
    if actor.user is None or not actor.can_write(sandbox.team):
        record_event(
            actor=actor,
            action="ssh_token",
            outcome=Outcome.REFUSED,
            sandbox=sandbox,
            message="your role in this team cannot use SSH",
        )
        raise NotAllowed("your role in this team cannot use SSH")
    if sandbox.status == Status.DELETED:
        raise NotAllowed("the sandbox is deleted")
    token = TOKEN_PREFIX + "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(_TOKEN_LENGTH))
    expires = timezone.now() + timedelta(seconds=settings.SANDBOX_SSH_TOKEN_SECONDS)
    with transaction.atomic():
        # Expired tokens of anyone are of no use: they go as new ones are made.
        SshToken.objects.filter(expires_at__lt=timezone.now() - timedelta(hours=1)).delete()
        row = SshToken.objects.create(
            user=actor.user,
            team=sandbox.team,
            sandbox=sandbox,
            digest=_digest(token),
            prefix=token[: len(TOKEN_PREFIX) + 4],
            expires_at=expires,
        )
        record_event(
            actor=actor,
            action="ssh_token",
            outcome=Outcome.SUCCEEDED,
            sandbox=sandbox,
            data={"prefix": row.prefix, "expires_at": expires.isoformat()},
        )
    return IssuedToken(token=token, expires_at=expires, command=command_for(token), row=row)


# --- logging in


@dataclass
class Login:
    """Who logged in, to which sandbox, and how (``key`` or ``token``)."""

    actor: Actor
    sandbox: Sandbox
    method: str
    credential: str  # the key's fingerprint or the token's prefix


def _refuse(actor: Actor | None, sandbox: Sandbox | None, message: str, data: dict) -> None:
    if sandbox is not None:
        record_event(
            actor=actor or Actor.system(),
            action="ssh_login",
            outcome=Outcome.REFUSED,
            sandbox=sandbox,
            message=message,
            data=data,
        )


def login_with_token(*, login: str, client: str) -> Login | None:
    """The login a token user name grants, or None (unknown, expired, or the user may no
    longer write in the sandbox's team)."""
    if not is_token(login):
        return None
    # Guessing tokens is throttled per address as guessing API tokens is
    # (SANDBOX_API_AUTH_FAILURE_RATE): a blocked address gets no token accepted.
    if auth_failures.blocked_for(client) is not None:
        return None
    row = (
        SshToken.objects.select_related("sandbox__team", "user")
        .filter(digest=_digest(login))
        .first()
    )
    if row is None:
        auth_failures.record_failure(client)
        return None
    data = {"method": "token", "credential": row.prefix, "client": client}
    if row.expires_at <= timezone.now():
        _refuse(Actor.for_user(row.user), row.sandbox, "the SSH token expired", data)
        return None
    actor = Actor.for_user(row.user)
    sandbox = row.sandbox
    if (
        not row.user.is_active
        or sandbox.team_id != row.team_id
        or not actor.can_write(sandbox.team)
        or sandbox.status == Status.DELETED
    ):
        _refuse(actor, sandbox, "this token's user may no longer use SSH here", data)
        return None
    return Login(actor=actor, sandbox=sandbox, method="token", credential=row.prefix)


def login_with_key(*, login: str, fingerprint: str, client: str) -> Login | None:
    """The login a registered key grants for the sandbox named ``login``, or None."""
    key = SshKey.objects.select_related("user").filter(fingerprint=fingerprint).first()
    if key is None or not key.user.is_active:
        return None
    sandbox = (
        Sandbox.objects.select_related("team")
        .filter(pk=login.lower())
        .exclude(status=Status.DELETED)
        .first()
    )
    if sandbox is None:
        return None
    actor = Actor.for_user(key.user)
    if not actor.can_write(sandbox.team):
        if actor.can_read(sandbox.team):  # a viewer: worth a row; strangers learn nothing
            _refuse(
                actor,
                sandbox,
                "your role in this team cannot use SSH",
                {"method": "key", "credential": fingerprint, "client": client},
            )
        return None
    SshKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())
    return Login(actor=actor, sandbox=sandbox, method="key", credential=fingerprint)


# --- sessions


@dataclass
class Session:
    login: Login
    opened: SandboxEvent
    started: float


def open_session(*, login: Login, client: str, kind: str, command: str = "") -> Session:
    """Make the sandbox ready (waking it when parked with wake-on-SSH; NotAllowed
    otherwise) and record the session's start. ``kind``: shell, exec, sftp, forward."""
    sandbox = Sandbox.objects.select_related("team").get(pk=login.sandbox.pk)
    try:
        sandbox = previews.ready_for_traffic(sandbox=sandbox, actor=login.actor, via="ssh")
    except previews.NotReady as exc:
        record_event(
            actor=login.actor,
            action="ssh_session",
            outcome=Outcome.REFUSED,
            sandbox=sandbox,
            message=exc.message,
            data={"kind": kind, "method": login.method, "client": client},
        )
        raise NotAllowed(exc.message) from None
    login.sandbox = sandbox
    opened = record_event(
        actor=login.actor,
        action="ssh_session",
        outcome=Outcome.SUCCEEDED,
        sandbox=sandbox,
        data={
            "phase": "open",
            "kind": kind,
            "method": login.method,
            "credential": login.credential,
            "client": client,
            "command": command[:200],
        },
    )
    return Session(login=login, opened=opened, started=time.monotonic())


def close_session(*, session: Session, exit_code: int | None, reason: str = "") -> SandboxEvent:
    """Record the end of ``session``: how long it lasted and how it ended."""
    return record_event(
        actor=session.login.actor,
        action="ssh_session",
        outcome=Outcome.SUCCEEDED,
        sandbox=session.login.sandbox,
        message=reason[:200],
        data={
            "phase": "close",
            "opened_event": session.opened.pk,
            "kind": session.opened.data.get("kind"),
            "duration_seconds": round(time.monotonic() - session.started, 3),
            "exit_code": exit_code,
        },
    )


def streams_processes(sandbox: Sandbox) -> bool:
    """Whether the sandbox's provider runs commands with streamed pipes (stdin included;
    scp and sftp need it)."""
    return capabilities(sandbox.provider).supports("supports_process")


def process_refusal(sandbox: Sandbox) -> str:
    caps = capabilities(sandbox.provider)
    return caps.reason("supports_process")


def open_process(*, sandbox: Sandbox, actor: Actor, command: str | list[str]) -> ProcessSession:
    """Run ``command`` in the running sandbox with its stdin, stdout and stderr streamed
    (an ``ssh_exec`` event; the session's own events say how long). The caller closes it."""
    _require(sandbox, actor, "supports_process", statuses=ACTION_STATUSES["exec"], action="exec")
    shown = command if isinstance(command, str) else " ".join(command)
    env = team_secrets.environment_for(sandbox)
    try:
        process = _instance(sandbox).open_process(command, env=env)
    except ProviderError as exc:
        record_event(
            actor=actor,
            action="ssh_exec",
            outcome=Outcome.FAILED,
            sandbox=sandbox,
            message=exc.message,
            data={"command": shown[:200]},
        )
        raise _failure(exc) from exc
    try:
        record_event(
            actor=actor,
            action="ssh_exec",
            outcome=Outcome.SUCCEEDED,
            sandbox=sandbox,
            data={"command": shown[:200]},
        )
        touch_activity(sandbox)
    except BaseException:
        process.close()
        raise
    return process


# --- port forwarding


def forward_refusal(*, sandbox: Sandbox, host: str, port: int, check_port: bool = True) -> str:
    """Why ``ssh -L`` to ``host``:``port`` is refused ('' when it may go ahead): only the
    sandbox itself (its loopback names or its id) and only its exposed services
    (``check_port``: the services as ``sandbox`` has them now)."""
    name = host.strip().lower().rstrip(".")
    if name not in LOCAL_NAMES and name != sandbox.pk.lower():
        return f"forwarding goes only to the sandbox itself (localhost:<port>), not to {host[:100]}"
    if not 0 < port < 65536:
        return f"port {port} is not a TCP port"
    if check_port and not any(s.get("port") == port for s in sandbox.services):
        return f"port {port} is not an exposed service of {sandbox.pk}: expose it first"
    return ""


def refuse_forward(*, login: Login, host: str, port: int, message: str) -> None:
    """Record a refused ``ssh -L`` (the gateway refused it before asking anything else)."""
    record_event(
        actor=login.actor,
        action="ssh_forward",
        outcome=Outcome.REFUSED,
        sandbox=login.sandbox,
        message=message,
        data={"host": host[:100], "port": port},
    )


def connect_forward(*, session: Session, host: str, port: int, timeout: float = 30.0):
    """A connected socket to the sandbox's exposed service on ``port`` (``ssh -L``),
    through the provider's service path; NotAllowed (and a ``refused`` event) for
    anywhere else."""
    sandbox = Sandbox.objects.select_related("team").get(pk=session.login.sandbox.pk)
    refusal = forward_refusal(sandbox=sandbox, host=host, port=port)
    if not refusal and not session.login.actor.can_write(sandbox.team):
        refusal = "your role in this team cannot use SSH"
    if refusal:
        refuse_forward(login=session.login, host=host, port=port, message=refusal)
        raise NotAllowed(refusal)
    service = next(s for s in sandbox.services if s.get("port") == port)
    try:
        upstream = transport.connect(sandbox=sandbox, url=service["url"], timeout=timeout)
    except OSError as exc:
        why = transport.refusal(exc) or f"the service does not answer: {exc}"
        raise ServiceError(why) from None
    upstream.sock.settimeout(None)
    touch_activity(sandbox)
    return upstream.sock
