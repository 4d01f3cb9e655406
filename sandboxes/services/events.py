"""Writing the audit trail. Every service action calls ``record_event`` once per outcome."""

from __future__ import annotations

from typing import Any

from sandboxes.models import Outcome, Sandbox, SandboxEvent, Snapshot, Team
from sandboxes.services.actors import Actor


def record_event(
    *,
    actor: Actor,
    action: str,
    outcome: Outcome,
    sandbox: Sandbox | None = None,
    snapshot: Snapshot | None = None,
    team: Team | None = None,
    from_status: str = "",
    to_status: str = "",
    message: str = "",
    data: dict[str, Any] | None = None,
) -> SandboxEvent:
    if team is not None:
        team_id = team.pk
    elif sandbox is not None:
        team_id = sandbox.team_id
    else:
        team_id = snapshot.team_id if snapshot is not None else None
    return SandboxEvent.objects.create(
        team_id=team_id,
        sandbox=sandbox,
        snapshot=snapshot,
        actor_kind=actor.kind,
        actor_user=actor.user,
        actor_token=actor.token,
        actor_label=actor.label[:150],
        action=action,
        from_status=from_status,
        to_status=to_status,
        outcome=outcome,
        message=message[:2000],
        data=data or {},
    )
