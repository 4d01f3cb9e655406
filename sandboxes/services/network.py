"""Outbound network policies: validating them, and the one place the effective policy of
a sandbox is computed (see docs/network.md).

The preset's policy is the default; a team's override replaces it for the team's
sandboxes; a sandbox's own override (given at create) replaces both. The result is stored
on the sandbox (``Sandbox.network``) and handed to the provider in its create spec, so
what the page and the API show is what the provider enforces, even if the preset or
the team changes later.
"""

from __future__ import annotations

from typing import Any

from providers.base import Capabilities
from providers.network import MODES, NONE, NetworkPolicy, make_policy
from sandboxes.models import Preset, Sandbox, Team
from sandboxes.services.errors import CapabilityMissing, InvalidInput


def parse_policy(
    mode: Any,
    allow: Any = None,
    *,
    field: str = "network_policy",
    allow_field: str = "network_allow",
) -> NetworkPolicy:
    """A validated policy from input; InvalidInput (a 400 naming ``field`` for the mode,
    ``allow_field`` for the allowlist) otherwise."""
    if not isinstance(mode, str) or mode not in MODES:
        problem = f"choose one of {', '.join(MODES)}"
        raise InvalidInput(f"{field}: {problem}", fields={field: [problem]})
    if allow is None:
        allow = []
    if not isinstance(allow, list | tuple) or not all(isinstance(e, str) for e in allow):
        problem = "the allowlist is a list of CIDRs and host names"
        raise InvalidInput(f"{allow_field}: {problem}", fields={allow_field: [problem]})
    try:
        return make_policy(mode, allow)
    except ValueError as exc:
        raise InvalidInput(f"{allow_field}: {exc}", fields={allow_field: [str(exc)]}) from None


def stored(mode: str | None, allow: list | None) -> NetworkPolicy | None:
    """A policy kept in a row (None: no override). Rows were validated when written."""
    if not mode:
        return None
    try:
        return make_policy(mode, allow or [])
    except ValueError:
        return NetworkPolicy()  # never wider than what was validated


def effective_policy(
    *, preset: Preset, team: Team, override: NetworkPolicy | None = None
) -> tuple[NetworkPolicy, str]:
    """The policy a new sandbox gets, and where it came from (preset, team, sandbox)."""
    if override is not None:
        return override, "sandbox"
    team_policy = stored(team.network_policy, team.network_allow)
    if team_policy is not None:
        return team_policy, "team"
    return stored(preset.network_policy, preset.network_allow) or NetworkPolicy(), "preset"


def check_supported(policy: NetworkPolicy, *, provider: str, caps: Capabilities) -> None:
    """CapabilityMissing when ``provider`` cannot enforce ``policy``."""
    refusal = caps.network_refusal(policy)
    if refusal:
        raise CapabilityMissing(provider, f"supports_network_{policy.mode}", refusal)


def as_record(policy: NetworkPolicy, source: str) -> dict:
    return {**policy.as_dict(), "source": source}


def of_sandbox(sandbox: Sandbox) -> NetworkPolicy:
    """The policy the sandbox was created with (rows from before policies: ``none``)."""
    return NetworkPolicy.from_dict(sandbox.network or {"mode": NONE})
