"""Team secrets: encrypted at rest, write-only, handed to sandboxes as variables.

Values are encrypted with ``cryptography``'s MultiFernet over ``SANDBOX_SECRET_KEYS``: the
first key encrypts, every key decrypts, so keys rotate without downtime (put the new key
first, run ``manage.py rotate_secret_keys``, then drop the old one). Nothing reads a
value back out to a person: the API and the dashboard list names and dates, audit events
carry names only, and the only reader is ``environment_for``, which hands a sandbox's
variables to the provider for its exec and terminal processes.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from providers.base import checked_env
from sandboxes.models import Outcome, Sandbox, Team, TeamSecret
from sandboxes.services.actors import Actor
from sandboxes.services.errors import Conflict, InvalidInput
from sandboxes.services.events import record_event

MAX_VALUE_BYTES = 64 * 1024
MAX_SECRETS_PER_SANDBOX = 64
MAX_ENV_VARIABLES = 128
MAX_ENV_BYTES = 64 * 1024
#: Variables the sandbox's own processes depend on; a secret or variable cannot replace them.
RESERVED = frozenset({"PATH", "HOME", "USER", "SHELL", "TERM", "PWD", "HOSTNAME"})


class SecretsNotConfigured(Conflict):
    code = "secrets_not_configured"


def _cipher() -> MultiFernet:
    keys = settings.SANDBOX_SECRET_KEYS
    if not keys:
        raise SecretsNotConfigured(
            "team secrets are off on this site: an operator sets SANDBOX_SECRET_KEYS "
            "(see docs/configuration.md)"
        )
    return MultiFernet([Fernet(key) for key in keys])


def check_name(name: object, *, field: str = "name") -> str:
    """A variable name: a shell identifier of at most 64 characters, not a reserved one."""
    if not isinstance(name, str) or not name or len(name) > 64:
        raise InvalidInput("a name has 1 to 64 characters", fields={field: ["bad name"]})
    try:
        checked_env({name: ""})
    except ValueError:
        raise InvalidInput(
            f"{name!r} is not a variable name (letters, digits, _; not starting with a digit)",
            fields={field: ["not a variable name"]},
        ) from None
    if name in RESERVED:
        raise InvalidInput(f"{name} is reserved", fields={field: [f"{name} is reserved"]})
    return name


def set_secret(*, team: Team, actor: Actor, name: str, value: str) -> tuple[TeamSecret, bool]:
    """Store ``value`` under ``name`` (replacing it); returns (secret, created)."""
    actor.require_write(team, "change its secrets")
    check_name(name)
    if not isinstance(value, str) or "\0" in value:
        raise InvalidInput("a secret is text without NUL bytes", fields={"value": ["bad value"]})
    if len(value.encode()) > MAX_VALUE_BYTES:
        raise InvalidInput(
            f"a secret holds at most {MAX_VALUE_BYTES} bytes", fields={"value": ["too long"]}
        )
    ciphertext = _cipher().encrypt(value.encode()).decode()
    now = timezone.now()
    with transaction.atomic():
        secret, created = TeamSecret.objects.select_for_update().get_or_create(
            team=team,
            name=name,
            defaults={"ciphertext": ciphertext, "updated_by": actor.label, "created_at": now},
        )
        if not created:
            secret.ciphertext = ciphertext
            secret.updated_at = now
            secret.updated_by = actor.label
            secret.save(update_fields=["ciphertext", "updated_at", "updated_by"])
        record_event(
            actor=actor,
            action="secret_set",
            outcome=Outcome.SUCCEEDED,
            team=team,
            message=f"secret {name} {'created' if created else 'replaced'}",
            data={"name": name, "created": created},
        )
    return secret, created


def delete_secret(*, team: Team, actor: Actor, name: str) -> None:
    actor.require_write(team, "change its secrets")
    with transaction.atomic():
        deleted, _ = TeamSecret.objects.filter(team=team, name=name).delete()
        if not deleted:
            raise InvalidInput(f"your team has no secret {name}", fields={"name": ["not found"]})
        record_event(
            actor=actor,
            action="secret_delete",
            outcome=Outcome.SUCCEEDED,
            team=team,
            message=f"secret {name} deleted",
            data={"name": name},
        )


def check_sandbox_environment(
    *, team: Team, env: dict[str, str] | None, secrets: list[str] | None
) -> tuple[dict[str, str], list[str]]:
    """What a create asks for, checked: plain variables and names of the team's secrets."""
    env = dict(env or {})
    names = list(dict.fromkeys(secrets or []))
    if len(env) > MAX_ENV_VARIABLES or len(names) > MAX_SECRETS_PER_SANDBOX:
        raise InvalidInput(
            f"at most {MAX_ENV_VARIABLES} variables and {MAX_SECRETS_PER_SANDBOX} secrets",
            fields={"env": ["too many"]},
        )
    for key, value in env.items():
        check_name(key, field="env")
        if not isinstance(value, str) or "\0" in value:
            raise InvalidInput(f"{key}: a value is text without NUL", fields={"env": ["bad"]})
    if sum(len(k) + len(v) for k, v in env.items()) > MAX_ENV_BYTES:
        raise InvalidInput(f"env holds at most {MAX_ENV_BYTES} bytes", fields={"env": ["big"]})
    for name in names:
        check_name(name, field="secrets")
    clash = sorted(set(env) & set(names))
    if clash:
        raise InvalidInput(
            f"{', '.join(clash)} is both a variable and a secret", fields={"env": ["clash"]}
        )
    if not names:
        return env, names
    known = set(TeamSecret.objects.filter(team=team, name__in=names).values_list("name", flat=True))
    missing = [name for name in names if name not in known]
    if missing:
        raise InvalidInput(
            f"your team has no secret {', '.join(missing)}", fields={"secrets": ["not found"]}
        )
    return env, names


def environment_for(sandbox: Sandbox) -> dict[str, str]:
    """The variables of the sandbox's exec and terminal processes: its env and its secrets,
    decrypted now (a secret replaced since the create gives its new value)."""
    env = dict(sandbox.env or {})
    names = list(sandbox.secret_names or [])
    if not names:
        return env
    env.update(secret_values(team_id=sandbox.team_id, names=names))
    return env


def secret_values(*, team_id: int, names: list[str]) -> dict[str, str]:
    """The decrypted values of the team's secrets ``names``, for a sandbox's processes only
    (its variables, a repository's clone credential): never logged, never shown."""
    env: dict[str, str] = {}
    stored = dict(
        TeamSecret.objects.filter(team_id=team_id, name__in=names).values_list("name", "ciphertext")
    )
    missing = [name for name in names if name not in stored]
    if missing:
        raise Conflict(
            f"the sandbox uses secret {', '.join(missing)}, which your team deleted: "
            "set it again, or start a sandbox without it"
        )
    cipher = _cipher()
    for name in names:
        try:
            env[name] = cipher.decrypt(stored[name].encode()).decode()
        except InvalidToken:
            raise SecretsNotConfigured(
                f"secret {name} cannot be decrypted with SANDBOX_SECRET_KEYS: was a key "
                "removed before `manage.py rotate_secret_keys` ran?"
            ) from None
    return env


def rotate_keys() -> int:
    """Re-encrypt every secret with the first key; returns how many."""
    cipher = _cipher()
    count = 0
    with transaction.atomic():
        for secret in TeamSecret.objects.select_for_update().order_by("pk"):
            secret.ciphertext = cipher.rotate(secret.ciphertext.encode()).decode()
            secret.save(update_fields=["ciphertext"])
            count += 1
    return count
