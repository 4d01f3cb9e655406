"""The labels the provider puts on what it makes, so ``list`` can find them again.

Metadata goes in one JSON label (labels cannot be removed, only overwritten, and an
image committed from a sandbox carries its labels: one label we always overwrite keeps
the metadata exact), plus the sandbox id on its own so Docker can filter by it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

ROLE = "sandboxes.role"
SANDBOX_ID = "sandboxes.sandbox_id"
METADATA = "sandboxes.metadata"
#: The sandbox's outbound policy (JSON of providers.network.NetworkPolicy.as_dict()).
NETWORK = "sandboxes.network"
#: On forwarders and networks: the sandbox container they serve.
OWNER = "sandboxes.owner"
SERVICE_NAME = "sandboxes.service"
SERVICE_PORT = "sandboxes.service_port"

ROLE_SANDBOX = "sandbox"
ROLE_FORWARDER = "forwarder"
ROLE_NETWORK = "network"
ROLE_SNAPSHOT = "snapshot"
#: A relabel record: a container's labels cannot change after it was made, so the
#: metadata given to it later (a warm pool's member claimed by a sandbox) lives in the
#: labels of an empty volume named after it (``relabel_name``), made anew at each
#: relabel. It sits in the daemon beside the container (no state of our own on the
#: control plane's host) and the sandbox cannot reach it.
ROLE_RELABEL = "relabel"

#: Committed images get these so a container someone runs from a snapshot image by hand
#: is not mistaken for a sandbox.
SNAPSHOT_CHANGES = [f'LABEL {ROLE}={ROLE_SNAPSHOT} {SANDBOX_ID}="" {METADATA}="" {NETWORK}=""']

_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]")


def sandbox_labels(sandbox_id: str, metadata: Mapping[str, str]) -> dict[str, str]:
    return {
        ROLE: ROLE_SANDBOX,
        SANDBOX_ID: sandbox_id,
        METADATA: json.dumps(dict(metadata), sort_keys=True),
    }


def network_of(labels: Mapping[str, str]) -> dict | None:
    try:
        value = json.loads(labels.get(NETWORK) or "null")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def metadata_of(labels: Mapping[str, str]) -> dict[str, str]:
    try:
        value = json.loads(labels.get(METADATA) or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def container_name(sandbox_id: str) -> str:
    """Docker enforces unique names: a second create for one sandbox id cannot slip by."""
    return "sbx-" + _NAME_UNSAFE.sub("-", sandbox_id)[:100]


def relabel_name(container_id: str) -> str:
    return "sbx-labels-" + container_id[:24]
