"""Choosing the node a new guest goes to, from ``/cluster/resources``.

A linked clone shares its template's base volume, so it stays on the template's node. A
full clone may go to any online node when the template's disk is on shared storage (PVE
copies it there with ``target``); otherwise it too stays on the template's node. Among
the allowed nodes the one with the most free memory wins (then the least CPU load).
"""

from __future__ import annotations

from providers.errors import OperationFailed, QuotaExceeded, Unavailable

MIB = 1024**2


def online_nodes(rows: list[dict]) -> dict[str, dict]:
    return {r["node"]: r for r in rows if r.get("type") == "node" and r.get("status") == "online"}


def free_memory(row: dict) -> int:
    return int(row.get("maxmem", 0)) - int(row.get("mem", 0))


def storage_is_shared(rows: list[dict], storage: str, node: str) -> bool:
    for r in rows:
        if r.get("type") == "storage" and r.get("storage") == storage and r.get("node") == node:
            return bool(int(r.get("shared", 0)))
    return False


def choose_node(
    rows: list[dict],
    *,
    template_node: str,
    template_storage: str,
    memory_mb: int,
    full_clone: bool,
    pinned: str = "",
) -> str:
    """The node to place the new guest on; a clear error when none can take it."""
    nodes = online_nodes(rows)
    movable = full_clone and storage_is_shared(rows, template_storage, template_node)
    if not movable:
        if pinned and pinned != template_node:
            raise OperationFailed(
                f"PVE_NODE is {pinned} but the template lives on {template_node} on local "
                "storage, and a clone of it can only be made there"
            )
        allowed = [template_node]
    else:
        allowed = [pinned] if pinned else sorted(nodes)
    up = [n for n in allowed if n in nodes]
    if not up:
        raise Unavailable(f"node {', '.join(allowed)} is offline or unknown to the cluster")
    fits = [n for n in up if free_memory(nodes[n]) >= memory_mb * MIB]
    if not fits:
        raise QuotaExceeded(
            f"no PVE node has {memory_mb} MiB of memory free (checked {', '.join(up)})"
        )
    return max(fits, key=lambda n: (free_memory(nodes[n]), -float(nodes[n].get("cpu", 0))))
