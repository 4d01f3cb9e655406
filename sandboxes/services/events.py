"""Writing the audit trail. Every service action calls ``record_event`` once per outcome."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class Audit:
    """The event a worker's status change is recorded with.

    ``transitions.finish`` writes it in the same transaction as the change (filling in the
    statuses), so a crash between the two cannot leave a change without its audit row.
    """

    actor: Actor
    action: str
    sandbox: Sandbox
    outcome: Outcome = Outcome.SUCCEEDED
    message: str = ""
    data: dict[str, Any] | None = None

    def record(self, *, from_status: str, to_status: str) -> SandboxEvent:
        return record_event(
            actor=self.actor,
            action=self.action,
            outcome=self.outcome,
            sandbox=self.sandbox,
            from_status=from_status,
            to_status=to_status,
            message=self.message,
            data=self.data,
        )
