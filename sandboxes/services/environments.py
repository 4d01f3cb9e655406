"""Team environments: a named, audited recipe for sandboxes (see docs/environments.md).

An environment holds what to start from (a snapshot id, or a preset on a provider), the
repository and its setup script, plain variables and names of team secrets, services to
expose once it runs, an outbound network policy and lifecycle defaults. Starting from it
(``start_environment``) is one create whose fields come from the recipe: the sandbox
copies them, so editing the environment later changes no sandbox already made.

Every change is checked as create would check it (the snapshot resolves, the secrets
exist, the policy parses) and writes an audit event naming the environment.
"""

from __future__ import annotations

import re
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from sandboxes.models import Environment, Outcome, Sandbox, Team
from sandboxes.services import lifecycle, network, team_secrets, workspaces
from sandboxes.services.actors import Actor
from sandboxes.services.backends import default_provider
from sandboxes.services.errors import InvalidInput
from sandboxes.services.events import record_event
from sandboxes.services.snapshots import resolve_for_start
from sandboxes.services.validation import MAX_SECONDS, validate_service

_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
MAX_SERVICES = 16
#: The fields of a recipe, as ``create_environment`` and ``update_environment`` take them.
FIELDS = (
    "name",
    "description",
    "snapshot_id",
    "preset",
    "provider",
    "repo",
    "env",
    "secrets",
    "setup",
    "services",
    "network_policy",
    "network_allow",
    "idle_timeout_seconds",
    "delete_parked_after_seconds",
    "ttl_seconds",
)
LIFECYCLE = ("idle_timeout_seconds", "delete_parked_after_seconds", "ttl_seconds")


def _bad(field: str, problem: str) -> InvalidInput:
    return InvalidInput(f"{field}: {problem}", fields={field: [problem]})


def _seconds(field: str, value: Any) -> int | None:
    """Null: the team's default (for ttl: none); 0: never; else 1 to MAX_SECONDS."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SECONDS:
        raise _bad(field, f"null, 0 (never) or a whole number of seconds up to {MAX_SECONDS}")
    return value


def _check(*, team: Team, data: dict[str, Any]) -> dict[str, Any]:
    """The recipe's model fields from ``data`` (every field of ``FIELDS``), checked."""
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _bad("name", "1-64 lowercase letters, digits and dashes, not at either end")
    description = data.get("description") or ""
    if not isinstance(description, str) or len(description) > 200:
        raise _bad("description", "text of at most 200 characters")
    snapshot_id = data.get("snapshot_id") or ""
    preset_id = data.get("preset") or None
    provider = data.get("provider") or ""
    for field, value in (("snapshot_id", snapshot_id), ("provider", provider)):
        if not isinstance(value, str) or len(value) > 128:
            raise _bad(field, "text of at most 128 characters")
    # The same resolution as create: the version (or the active one) must exist now.
    snapshot = resolve_for_start(
        team=team,
        preset_id=preset_id,
        provider=provider or default_provider(),
        snapshot_id=snapshot_id or None,
    )
    env, secret_names = team_secrets.check_sandbox_environment(
        team=team, env=data.get("env"), secrets=data.get("secrets")
    )
    repo = workspaces.check_repo(team=team, repo=data.get("repo"))
    setup = workspaces.check_setup(data.get("setup"))
    services = data.get("services") or []
    if not isinstance(services, list) or len(services) > MAX_SERVICES:
        raise _bad("services", f"a list of at most {MAX_SERVICES} {{name, port}}")
    checked_services = []
    for service in services:
        if not isinstance(service, dict) or set(service) - {"name", "port"}:
            raise _bad("services", "each service is {name, port}")
        try:
            service_name, port = validate_service(service.get("name"), service.get("port"))
        except InvalidInput as exc:
            raise _bad("services", exc.message) from None
        checked_services.append({"name": service_name, "port": port})
    if len({s["name"] for s in checked_services}) != len(checked_services):
        raise _bad("services", "service names must differ")
    policy_mode, policy_allow = data.get("network_policy") or "", data.get("network_allow") or []
    if policy_mode:
        policy = network.parse_policy(policy_mode, policy_allow)
        policy_mode, policy_allow = policy.mode, list(policy.allow)
    elif policy_allow:
        raise _bad("network_allow", "give network_policy: allowlist with network_allow")
    checked = {
        "name": name,
        "description": description.strip(),
        "snapshot_id": snapshot_id,
        "preset": snapshot.preset if (preset_id or not snapshot_id) else None,
        "provider": provider,
        "repo": repo,
        "env": env,
        "secret_names": secret_names,
        "setup": setup,
        "services": checked_services,
        "network_policy": policy_mode,
        "network_allow": policy_allow,
    }
    for field in LIFECYCLE:
        checked[field] = _seconds(field, data.get(field))
    if checked["ttl_seconds"] == 0:
        checked["ttl_seconds"] = None
    return checked


def as_data(environment: Environment) -> dict[str, Any]:
    """An environment as the ``data`` its create or update takes (to change one field)."""
    return {
        "name": environment.name,
        "description": environment.description,
        "snapshot_id": environment.snapshot_id,
        "preset": environment.preset_id,
        "provider": environment.provider,
        "repo": environment.repo or None,
        "env": environment.env,
        "secrets": environment.secret_names,
        "setup": environment.setup,
        "services": environment.services,
        "network_policy": environment.network_policy,
        "network_allow": environment.network_allow,
        "idle_timeout_seconds": environment.idle_timeout_seconds,
        "delete_parked_after_seconds": environment.delete_parked_after_seconds,
        "ttl_seconds": environment.ttl_seconds,
    }


def _summary(environment: Environment) -> dict[str, Any]:
    """What an audit event keeps of a recipe: names and settings, never a secret."""
    return {
        "name": environment.name,
        "snapshot_id": environment.snapshot_id,
        "preset": environment.preset_id or "",
        "provider": environment.provider,
        "repo": environment.repo,
        "env": sorted(environment.env),
        "secrets": environment.secret_names,
        "services": environment.services,
        "network_policy": environment.network_policy,
    }


def _saved(environment: Environment) -> None:
    try:
        with transaction.atomic():
            environment.save()
    except IntegrityError:
        raise _bad("name", f"your team already has an environment {environment.name}") from None


def create_environment(*, team: Team, actor: Actor, data: dict[str, Any]) -> Environment:
    actor.require_write(team, "change its environments")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise _bad(unknown[0], "unknown field")
    fields = _check(team=team, data=data)
    now = timezone.now()
    with transaction.atomic():
        environment = Environment(
            team=team, created_at=now, updated_at=now, updated_by=actor.label, **fields
        )
        _saved(environment)
        record_event(
            actor=actor,
            action="environment_create",
            outcome=Outcome.SUCCEEDED,
            team=team,
            message=f"environment {environment.name} created",
            data=_summary(environment),
        )
    return environment


def update_environment(
    *, environment: Environment, actor: Actor, changes: dict[str, Any]
) -> Environment:
    """Change some fields of the recipe (``changes``: a subset of ``FIELDS``)."""
    team = environment.team
    actor.require_write(team, "change its environments")
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        raise _bad(unknown[0], "unknown field")
    fields = _check(team=team, data={**as_data(environment), **changes})
    with transaction.atomic():
        for key, value in fields.items():
            setattr(environment, key, value)
        environment.updated_at = timezone.now()
        environment.updated_by = actor.label
        _saved(environment)
        record_event(
            actor=actor,
            action="environment_update",
            outcome=Outcome.SUCCEEDED,
            team=team,
            message=f"environment {environment.name} changed: {', '.join(sorted(changes))}",
            data=_summary(environment),
        )
    return environment


def delete_environment(*, environment: Environment, actor: Actor) -> None:
    """Delete the recipe; sandboxes started from it keep what they copied."""
    team = environment.team
    actor.require_write(team, "change its environments")
    with transaction.atomic():
        name = environment.name
        environment.delete()
        record_event(
            actor=actor,
            action="environment_delete",
            outcome=Outcome.SUCCEEDED,
            team=team,
            message=f"environment {name} deleted",
            data={"name": name},
        )


def start_environment(
    *,
    environment: Environment,
    actor: Actor,
    name: str = "",
    idempotency_key: str = "",
    overrides: dict[str, Any] | None = None,
) -> Sandbox:
    """A sandbox made from the recipe (one create). ``overrides`` may replace what a
    person chooses per sandbox: ``repo`` (url, branch, path...), ``ttl_seconds``,
    ``idle_timeout_seconds``, ``delete_parked_after_seconds``, ``metadata``."""
    overrides = dict(overrides or {})
    allowed = {"repo", "branch", "ttl_seconds", "idle_timeout_seconds"}
    allowed |= {"delete_parked_after_seconds", "metadata"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise _bad(unknown[0], "cannot be changed when starting from an environment")
    repo = overrides.get("repo", environment.repo or None)
    if overrides.get("branch") is not None:
        if not repo:
            raise _bad("branch", "the environment has no repository")
        repo = {**repo, "branch": overrides["branch"]}

    def lifecycle_value(field: str) -> Any:
        if field in overrides:
            return overrides[field]
        own = getattr(environment, field)
        if own is None:
            return lifecycle.TEAM_DEFAULT
        return own or None  # 0: never

    return lifecycle.create_sandbox(
        team=environment.team,
        actor=actor,
        preset_id=environment.preset_id,
        provider=environment.provider or None,
        snapshot_id=environment.snapshot_id or None,
        name=name or environment.name,
        ttl_seconds=overrides.get("ttl_seconds", environment.ttl_seconds),
        idle_timeout_seconds=lifecycle_value("idle_timeout_seconds"),
        delete_parked_after_seconds=lifecycle_value("delete_parked_after_seconds"),
        metadata=overrides.get("metadata"),
        idempotency_key=idempotency_key,
        network_policy=environment.network_policy or None,
        network_allow=environment.network_allow or None,
        env=environment.env,
        secrets=environment.secret_names,
        repo=repo,
        setup=environment.setup,
        environment=environment,
    )
