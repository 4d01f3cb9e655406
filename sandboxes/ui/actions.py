"""Which actions the dashboard offers on a sandbox, and why one is not offered.

The service layer decides and enforces; this only predicts its answer so the page can
show a disabled button with the reason instead of a button that fails. The status sets
mirror the services' rules (``lifecycle.OPERATIONS``, ``interactive``, ``snapshots``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sandboxes.models import Sandbox
from sandboxes.services.lifecycle import OPERATIONS
from sandboxes.states import Status

if TYPE_CHECKING:
    from sandboxes.selectors import Capabilities

S = Status
LIFECYCLE_ORDER = ("start", "resume", "pause", "hibernate", "stop", "delete")
LABELS = {
    "start": "Start",
    "resume": "Resume",
    "pause": "Pause",
    "hibernate": "Hibernate",
    "stop": "Stop",
    "delete": "Delete",
}
#: Actions that lose work or the sandbox: confirmed before they run.
DESTRUCTIVE = {"delete": "Delete {name}? Its files are gone for good.", "stop": "Stop {name}?"}

LIVE = frozenset({S.RUNNING, S.PAUSED, S.HIBERNATED, S.STOPPED})
FEATURES: dict[str, tuple[str, frozenset[Status], str]] = {
    # name: (capability, statuses it needs, what it needs in words)
    "exec": ("supports_exec", frozenset({S.RUNNING}), "running"),
    "terminal": ("supports_terminal", frozenset({S.RUNNING}), "running"),
    "services": ("supports_expose_http", LIVE, "running, paused, hibernated or stopped"),
    # Wake-on-HTTP goes through the control plane's proxy to exposed services, so it
    # needs what exposing needs; wake-on-SSH is the provider's own (see _services.html).
    "wake_on": ("supports_expose_http", LIVE, "running, paused, hibernated or stopped"),
    "snapshot": (
        "supports_snapshots",
        frozenset({S.RUNNING, S.PAUSED, S.STOPPED}),
        "running, paused or stopped",
    ),
}


@dataclass(frozen=True)
class Offer:
    """One action as the page shows it: enabled, or disabled with the reason."""

    name: str
    label: str = ""
    allowed: bool = True
    reason: str = ""
    confirm: str = ""

    @property
    def destructive(self) -> bool:
        return bool(self.confirm)


def lifecycle_offers(
    sandbox: Sandbox, caps: Capabilities, *, read_only_reason: str = ""
) -> list[Offer]:
    """The lifecycle actions possible from the sandbox's current status.

    Actions the status rules out are left out (nobody needs "resume" on a running
    sandbox); actions the provider or the user's role rules out are shown disabled with
    the reason.
    """
    offers = []
    for name in LIFECYCLE_ORDER:
        operation = OPERATIONS[name]
        if sandbox.status not in operation.allowed_from:
            continue
        reason = read_only_reason
        if operation.capability and not caps.supports(operation.capability):
            reason = f"{sandbox.provider} cannot {name}: {caps.reason(operation.capability)}"
        confirm = DESTRUCTIVE.get(name, "").format(name=sandbox.name or sandbox.pk)
        offers.append(Offer(name, LABELS[name], not reason, reason, confirm))
    return offers


def feature_offer(
    sandbox: Sandbox, caps: Capabilities, feature: str, *, read_only_reason: str = ""
) -> Offer:
    """Whether exec, the terminal, services, wake-on or snapshot can be used now, and why
    not."""
    capability, statuses, needs = FEATURES[feature]
    if not caps.supports(capability):
        reason = f"not offered by {sandbox.provider}: {caps.reason(capability)}"
    elif sandbox.status not in statuses:
        reason = f"the sandbox is {sandbox.status}; this needs it {needs}"
    else:
        reason = read_only_reason
    return Offer(feature, allowed=not reason, reason=reason)
