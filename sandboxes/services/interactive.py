"""Calls whose answer the caller waits for: exec, exposed services, wake-on, settings,
and a sandbox's metrics (a read, but one that asks the provider).

These run in the request (they are quick on every provider) and are audited like the
lifecycle actions. A provider failure becomes ``ProviderFailure`` with the provider's
message; nothing in the row changes unless the provider call succeeded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from providers.base import ExecResult, Instance, MetricSample, SshInfo
from providers.errors import ProviderError
from sandboxes import db_pool
from sandboxes.models import Outcome, Sandbox, TtlAction
from sandboxes.services import long_calls, team_secrets
from sandboxes.services.actors import Actor
from sandboxes.services.backends import capabilities, get_provider
from sandboxes.services.errors import (
    CapabilityMissing,
    IllegalTransition,
    InvalidInput,
    NotAllowed,
    ProviderFailure,
    ServiceError,
)
from sandboxes.services.events import record_event
from sandboxes.services.validation import (
    validate_metadata,
    validate_name,
    validate_seconds,
    validate_service,
)
from sandboxes.states import ACTION_STATUSES, PARKED, Status

MAX_EXEC_TIMEOUT = 3600
MAX_COMMAND_LENGTH = 64 * 1024
#: Activity is written at most this often per sandbox (a busy sandbox is not a hot row).
ACTIVITY_GRANULARITY = timedelta(seconds=30)


def _require(sandbox: Sandbox, actor: Actor, capability: str | None, *, statuses, action: str):
    actor.require_write(sandbox.team, f"{action}")
    if capability:
        caps = capabilities(sandbox.provider)
        if not caps.supports(capability):
            raise CapabilityMissing(sandbox.provider, capability, caps.reason(capability))
    if sandbox.status not in statuses:
        raise IllegalTransition(action, sandbox.status, allowed=[str(s) for s in statuses])


def _instance(sandbox: Sandbox) -> Instance:
    try:
        return get_provider(sandbox.provider).get(sandbox.provider_ref)
    except ProviderError as exc:
        raise _failure(exc) from exc


def _failure(exc: ProviderError) -> ProviderFailure:
    return ProviderFailure(exc.message, provider_code=exc.code, retryable=exc.retryable)


def touch_activity(sandbox: Sandbox, *, at=None) -> None:
    """Note that someone used the sandbox (idle hibernation counts from here)."""
    at = at or timezone.now()
    Sandbox.objects.filter(pk=sandbox.pk, last_activity_at__lt=at - ACTIVITY_GRANULARITY).update(
        last_activity_at=at
    )


def activity_is_recent(sandbox: Sandbox) -> bool:
    """Whether ``sandbox`` as just loaded was touched within the granularity: then
    ``touch_activity`` would change nothing (activity only moves forward, so the stored
    value is at least that recent), and exec and the service proxy skip its statement."""
    return sandbox.last_activity_at >= timezone.now() - ACTIVITY_GRANULARITY


def exec_command(
    *, sandbox: Sandbox, actor: Actor, command: str | list[str], timeout_seconds: int = 60
) -> ExecResult:
    """Run a command in a running sandbox and return its exit code and output."""
    _require(sandbox, actor, "supports_exec", statuses=ACTION_STATUSES["exec"], action="exec")
    if isinstance(command, str):
        valid = 0 < len(command) <= MAX_COMMAND_LENGTH
    else:
        valid = (
            isinstance(command, list)
            and 0 < len(command) <= 1000
            and all(isinstance(p, str) for p in command)
            and sum(len(p) for p in command) <= MAX_COMMAND_LENGTH
        )
    if not valid:
        raise InvalidInput(
            "command: a non-empty string or list of strings (64 KiB at most)",
            fields={"command": ["a non-empty string or list of strings"]},
        )
    if (
        not isinstance(timeout_seconds, int)
        or isinstance(timeout_seconds, bool)
        or not 1 <= timeout_seconds <= MAX_EXEC_TIMEOUT
    ):
        raise InvalidInput(
            f"timeout_seconds: 1 to {MAX_EXEC_TIMEOUT}",
            fields={"timeout_seconds": [f"a whole number from 1 to {MAX_EXEC_TIMEOUT}"]},
        )
    shown = command if isinstance(command, str) else " ".join(command)
    # A long call: it holds a thread until the command ends (long_calls says why that
    # is counted per team). Refused before anything reaches the provider.
    env = team_secrets.environment_for(sandbox)  # never logged, never in an event
    slot = long_calls.acquire(team=sandbox.team, kind="exec", seconds=timeout_seconds)
    # The command may run for up to an hour: the pool's connection is free meanwhile.
    db_pool.give_back()
    try:
        result = _instance(sandbox).exec(command, timeout=timeout_seconds, env=env)
    except ProviderError as exc:
        record_event(
            actor=actor,
            action="exec",
            outcome=Outcome.FAILED,
            sandbox=sandbox,
            message=exc.message,
            data={"command": shown[:200]},
        )
        raise _failure(exc) from exc
    finally:
        slot.release()
    record_event(
        actor=actor,
        action="exec",
        outcome=Outcome.SUCCEEDED,
        sandbox=sandbox,
        data={
            "command": shown[:200],
            "exit_code": result.exit_code,
            "timed_out": result.timed_out,
        },
    )
    if not activity_is_recent(sandbox):  # else the UPDATE would change nothing
        touch_activity(sandbox)
    return result


def expose_service(*, sandbox: Sandbox, actor: Actor, name: str, port: int) -> dict[str, Any]:
    """Expose ``port`` of the sandbox as an HTTP service called ``name``; return it."""
    name, port = validate_service(name, port)
    _require(
        sandbox,
        actor,
        "supports_expose_http",
        statuses=ACTION_STATUSES["services"],
        action="expose services of",
    )
    try:
        url = _instance(sandbox).expose_http_service(name, port)
    except ProviderError as exc:
        raise _failure(exc) from exc
    service = {"name": name, "port": port, "url": url}
    with transaction.atomic():
        row = Sandbox.objects.select_for_update().get(pk=sandbox.pk)
        row.services = [s for s in row.services if s["name"] != name] + [service]
        row.save(update_fields=["services", "updated_at"])
        record_event(
            actor=actor,
            action="expose_service",
            outcome=Outcome.SUCCEEDED,
            sandbox=row,
            data=service,
        )
    sandbox.services = row.services
    return service


def refresh_service_url(sandbox: Sandbox, name: str) -> dict[str, Any] | None:
    """The service as the provider reports it now, stored on the row, when its URL is not
    the row's (a provider that moved it: ``local`` services left host loopback ports for
    unix sockets); None when it is the same or the provider cannot tell."""
    try:
        current = _instance(sandbox).networking.http_services
    except ProviderError:
        return None
    fresh = next((s for s in current if s.name == name), None)
    with transaction.atomic():
        row = Sandbox.objects.select_for_update().get(pk=sandbox.pk)
        known = next((s for s in row.services if s["name"] == name), None)
        if fresh is None or known is None or known["url"] == fresh.url:
            return None
        service = {**known, "url": fresh.url}
        row.services = [service if s["name"] == name else s for s in row.services]
        row.save(update_fields=["services", "updated_at"])
    sandbox.services = row.services
    return service


def hide_service(*, sandbox: Sandbox, actor: Actor, name: str) -> None:
    _require(
        sandbox,
        actor,
        "supports_expose_http",
        statuses=ACTION_STATUSES["services"],
        action="hide services of",
    )
    if name not in {s["name"] for s in sandbox.services}:
        raise InvalidInput(f"no exposed service called {name!r}", fields={"name": ["not exposed"]})
    try:
        _instance(sandbox).hide_http_service(name)
    except ProviderError as exc:
        raise _failure(exc) from exc
    with transaction.atomic():
        row = Sandbox.objects.select_for_update().get(pk=sandbox.pk)
        row.services = [s for s in row.services if s["name"] != name]
        row.save(update_fields=["services", "updated_at"])
        record_event(
            actor=actor,
            action="hide_service",
            outcome=Outcome.SUCCEEDED,
            sandbox=row,
            data={"name": name},
        )
    sandbox.services = row.services


def set_wake_on(*, sandbox: Sandbox, actor: Actor, http: bool, ssh: bool) -> Sandbox:
    """Choose whether traffic (HTTP to an exposed service, SSH) wakes a paused sandbox.

    Both work on every provider: requests through the control plane's service proxy and
    preview hosts, and connections to its SSH gateway (docs/ssh.md), resume the sandbox
    first. A provider that can wake on traffic by itself (``supports_wake_on``) is told
    too, so its own URLs (Morph's SSH) wake it.
    """
    if not isinstance(http, bool) or not isinstance(ssh, bool):
        raise InvalidInput("http and ssh are true or false")
    _require(sandbox, actor, None, statuses=ACTION_STATUSES["wake_on"], action="set wake-on for")
    caps = capabilities(sandbox.provider)
    if caps.supports_wake_on:
        try:
            _instance(sandbox).set_wake_on(http, ssh)
        except ProviderError as exc:
            raise _failure(exc) from exc
    with transaction.atomic():
        Sandbox.objects.filter(pk=sandbox.pk).update(wake_on_http=http, wake_on_ssh=ssh)
        record_event(
            actor=actor,
            action="set_wake_on",
            outcome=Outcome.SUCCEEDED,
            sandbox=sandbox,
            data={"http": http, "ssh": ssh},
        )
    sandbox.wake_on_http, sandbox.wake_on_ssh = http, ssh
    return sandbox


_UNSET: Any = object()


def update_sandbox_settings(
    *,
    sandbox: Sandbox,
    actor: Actor,
    name: str = _UNSET,
    ttl_seconds: int | None = _UNSET,
    ttl_action: str = _UNSET,
    idle_timeout_seconds: int | None = _UNSET,
    metadata: dict[str, str] = _UNSET,
) -> Sandbox:
    """Change a sandbox's name, TTL, idle timeout or metadata (only what is passed)."""
    actor.require_write(sandbox.team, "change sandboxes")
    if sandbox.status == Status.DELETED:
        raise IllegalTransition("change", sandbox.status)
    changes: dict[str, Any] = {}
    if name is not _UNSET:
        changes["name"] = validate_name(name)
    if ttl_seconds is not _UNSET:
        changes["ttl_seconds"] = validate_seconds("ttl_seconds", ttl_seconds)
        start = sandbox.started_at or timezone.now()
        seconds = changes["ttl_seconds"]
        changes["expires_at"] = start + timedelta(seconds=seconds) if seconds else None
    if ttl_action is not _UNSET:
        if ttl_action not in TtlAction.values:
            raise InvalidInput(
                "ttl_action: pause, stop or delete",
                fields={"ttl_action": ["pause, stop or delete"]},
            )
        changes["ttl_action"] = ttl_action
    if idle_timeout_seconds is not _UNSET:
        changes["idle_timeout_seconds"] = validate_seconds(
            "idle_timeout_seconds", idle_timeout_seconds
        )
    if metadata is not _UNSET:
        changes["metadata"] = validate_metadata(metadata)
    if not changes:
        return sandbox
    with transaction.atomic():
        Sandbox.objects.filter(pk=sandbox.pk).update(updated_at=timezone.now(), **changes)
        record_event(
            actor=actor,
            action="update_settings",
            outcome=Outcome.SUCCEEDED,
            sandbox=sandbox,
            data={k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in changes.items()},
        )
    sandbox.refresh_from_db()
    return sandbox


def ssh_access(*, sandbox: Sandbox, actor: Actor) -> SshInfo:
    """How to connect to the sandbox over SSH, where its provider offers that.

    Reading this needs only read access (it holds no secret: the SSH server still asks
    for the user's key). The sandbox must be running, or paused with wake-on-SSH.
    """
    if not actor.can_read(sandbox.team):
        raise NotAllowed("you are not a member of this sandbox's team")
    caps = capabilities(sandbox.provider)
    if not caps.supports_ssh:
        raise CapabilityMissing(sandbox.provider, "supports_ssh", caps.reason("supports_ssh"))
    reachable = {Status.RUNNING}
    if sandbox.wake_on_ssh:
        reachable |= PARKED
    if sandbox.status not in reachable:
        raise IllegalTransition("connect over SSH to", sandbox.status, allowed=sorted(reachable))
    try:
        return _instance(sandbox).ssh_info()
    except ProviderError as exc:
        raise _failure(exc) from exc


@dataclass(frozen=True)
class Metrics:
    """CPU and memory samples of a sandbox, or why there are none."""

    samples: list[MetricSample] = field(default_factory=list)
    reason: str = ""  # why nothing is reported (unsupported, not running, provider error)


def sandbox_metrics(*, sandbox: Sandbox) -> Metrics:
    """Recent samples from the sandbox's provider (a provider call: keep it off hot paths).

    Never raises for what the provider cannot tell: the reason is the answer then.
    """
    try:
        caps = capabilities(sandbox.provider)
    except ServiceError as exc:
        return Metrics(reason=exc.message)
    if not caps.supports_metrics:
        return Metrics(
            reason=f"not reported by {sandbox.provider}: {caps.reason('supports_metrics')}"
        )
    if not sandbox.provider_ref or sandbox.status == Status.DELETED:
        return Metrics(reason=f"the sandbox is {sandbox.status}; nothing to measure")
    try:
        samples = get_provider(sandbox.provider).get(sandbox.provider_ref).metrics()
    except ProviderError as exc:
        return Metrics(reason=f"{sandbox.provider} could not report metrics: {exc.message}")
    if not samples:
        return Metrics(reason=f"{sandbox.provider} has no samples for this sandbox yet")
    return Metrics(samples=list(samples))
