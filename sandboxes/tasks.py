"""django-q2 entry points. Thin: they take ids and call the services, which re-read the
row, take a lease and do nothing when there is nothing (left) to do."""

from __future__ import annotations

from sandboxes.services import (
    images,
    lifecycle,
    orphans,
    pools,
    snapshots,
    sweep,
    workers,
    workspaces,
)


def run_sandbox_operation(sandbox_id: str) -> None:
    lifecycle.perform_operation(sandbox_id=sandbox_id)


def run_workspace_setup(sandbox_id: str) -> None:
    workspaces.run_setup(sandbox_id=sandbox_id)


def run_snapshot_operation(snapshot_pk: int) -> None:
    snapshots.perform_snapshot_operation(snapshot_pk=snapshot_pk)


def run_sweep(stuck_seconds: int | None = None) -> dict[str, int]:
    """The scheduled sweep (reconciliation, TTLs, idle, failed sandboxes, orphans).

    ``stuck_seconds=0``: after a worker restart, resume what the dead cluster left now.
    """
    return sweep.run_sweep(stuck_seconds=stuck_seconds).actions


def worker_heartbeat(cluster: str, hops: int) -> None:
    workers.heartbeat(cluster=cluster, hops=hops)


def run_snapshot_retention() -> int:
    return sweep.run_snapshot_retention()


def remove_orphan(provider: str, ref: str, sandbox_id: str) -> None:
    orphans.remove_orphan(provider=provider, ref=ref, sandbox_id=sandbox_id)


def run_image_build(build_pk: int) -> None:
    images.perform_build(build_pk=build_pk)


def refill_pool(pool_id: int) -> int:
    """Top one warm pool up (asked for by a claim, a miss or a change of the pool)."""
    return pools.refill(pool_id=pool_id)


def maintain_pools() -> int:
    """The pools schedule: drain, recycle, refill every pool."""
    return pools.maintain()
