"""Which actions the dashboard offers on a sandbox, and why one is not offered.

The service layer decides and enforces; this only predicts its answer so the page can
show a disabled button with the reason instead of a button that fails. The status sets
are the services' own (``lifecycle.OPERATIONS``, ``states.ACTION_STATUSES``), so the
prediction cannot drift from the rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sandboxes.models import Sandbox
from sandboxes.services.lifecycle import OPERATIONS
from sandboxes.states import ACTION_STATUSES, in_words

if TYPE_CHECKING:
    from sandboxes.services.backends import Capabilities

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

FEATURES: dict[str, str] = {
    # name: the capability it needs (its statuses are states.ACTION_STATUSES[name])
    "exec": "supports_exec",
    "terminal": "supports_terminal",
    "services": "supports_expose_http",
    # Wake-on-HTTP goes through the control plane's proxy to exposed services, so it
    # needs what exposing needs; wake-on-SSH is the provider's own (see _services.html).
    "wake_on": "supports_expose_http",
    "snapshot": "supports_snapshots",
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
    """Whether exec, services, wake-on or snapshot can be used now, and why not."""
    capability, statuses = FEATURES[feature], ACTION_STATUSES[feature]
    if not caps.supports(capability):
        reason = f"not offered by {sandbox.provider}: {caps.reason(capability)}"
    elif sandbox.status not in statuses:
        reason = f"the sandbox is {sandbox.status}; this needs it {in_words(statuses)}"
    else:
        reason = read_only_reason
    return Offer(feature, allowed=not reason, reason=reason)
