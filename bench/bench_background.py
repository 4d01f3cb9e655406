"""One sweep of the background work (reconciliation, GC, idle hibernation) over 10,000 sandboxes.

Target (issue 7): one sweep in 2 s or less, with a bounded number of queries.

Each sample runs in a fresh child process with its own SQLite database (or
``BENCH_DATABASE_URL``), the in-memory provider holding an instance for every live
sandbox (its single ``list()`` is what the sweep compares against), and tasks going to the
ORM broker as in production (the sweep enqueues; it does not wait for the provider work).

The population mixes what a sweep meets: most sandboxes need nothing (running, paused,
stopped, deleted), and about 23% need something: expired TTLs, idle ones, stuck
operations, drift, old failures, orphan instances. At most ``SANDBOX_SWEEP_BATCH`` actions
per kind are taken per sweep, so the query count is a constant plus a small constant per
action: it is measured at 1,000 and 10,000 sandboxes to show it does not grow with N.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

from bench import Result, run_child

SANDBOXES = 10_000
SAMPLES = 3
#: The batch size for the scaling check: small enough that 1,000 sandboxes fill it too.
SCALING_BATCH = 10
TARGET_MS = 2000

#: (share of N, what it is) — the rest are running sandboxes that need nothing.
MIX = {
    "ttl_expired": 0.05,
    "idle": 0.05,
    "stuck": 0.02,
    "drift": 0.01,
    "failed_old": 0.02,
    "paused": 0.10,
    "stopped": 0.10,
    "deleted": 0.15,
    "orphans": 0.01,  # provider instances without a row (not counted in N)
}


def populate(count: int, *, team_count: int = 20, prefix: str = "b") -> dict[str, int]:
    """Bulk-create ``count`` sandboxes and their memory-provider instances. Django must be
    set up with the memory provider enabled and its shared version imported. ``prefix``
    keeps the ids of several populations apart."""
    from datetime import timedelta

    from django.utils import timezone

    from providers.base import InstanceStatus
    from sandboxes.models import Sandbox, Snapshot, Team
    from sandboxes.states import Status
    from tests import memory_provider

    store = memory_provider.STORE
    workdir = store.root / "shared-workdir"
    workdir.mkdir(exist_ok=True)
    snapshot = Snapshot.objects.get(snapshot_id="memory_1vcpu_1gb_8gb_v1")
    teams = [
        Team.objects.get_or_create(slug=f"bench-{i}", defaults={"name": f"Bench {i}"})[0]
        for i in range(team_count)
    ]
    now = timezone.now()
    long_ago = now - timedelta(hours=2)
    kinds: list[str] = []
    for kind, share in MIX.items():
        if kind != "orphans":
            kinds += [kind] * int(count * share)
    kinds += ["running"] * (count - len(kinds))
    rows = []
    for i, kind in enumerate(kinds):
        sandbox_id = f"sbx-{prefix}{i:09d}"
        ref = f"mem-{prefix}{i}"
        status = {
            "paused": Status.PAUSED,
            "stopped": Status.STOPPED,
            "deleted": Status.DELETED,
            "failed_old": Status.FAILED,
            "stuck": Status.STOPPING,
        }.get(kind, Status.RUNNING)
        row = Sandbox(
            id=sandbox_id,
            team=teams[i % team_count],
            provider=memory_provider.NAME,
            preset_id="1vcpu_1gb_8gb",
            snapshot=snapshot,
            vcpus=1,
            memory_mb=1024,
            disk_gb=8,
            provider_ref="" if kind == "deleted" else ref,
            status=status,
            status_changed_at=long_ago,
            last_activity_at=long_ago if kind == "idle" else now,
            idle_timeout_seconds=600 if kind in ("idle", "running") else None,
            # Parked two hours, past an hour's limit: the sweep deletes them.
            delete_parked_after_seconds=3600 if kind in ("stopped", "paused") else None,
            ttl_seconds=3600 if kind == "ttl_expired" else None,
            ttl_action="stop",
            expires_at=now - timedelta(minutes=1) if kind == "ttl_expired" else None,
            operation="stop" if kind == "stuck" else "",
            created_at=long_ago,
        )
        rows.append(row)
        if kind != "deleted":
            observed = {
                Status.PAUSED: InstanceStatus.PAUSED,
                Status.STOPPED: InstanceStatus.STOPPED,
                Status.FAILED: InstanceStatus.STOPPED,
            }.get(status, InstanceStatus.RUNNING)
            if kind == "drift":
                observed = InstanceStatus.STOPPED
            _add_instance(store, ref, sandbox_id, teams[i % team_count].slug, observed, workdir)
    Sandbox.objects.bulk_create(rows, batch_size=2000)
    for i in range(int(count * MIX["orphans"])):
        orphan_id = f"sbx-{prefix}o{i:08d}"
        _add_instance(store, f"mem-{prefix}o{i}", orphan_id, "bench-0", None, workdir)
    return {kind: kinds.count(kind) for kind in set(kinds)}


def _add_instance(store, ref, sandbox_id, team, status, workdir) -> None:
    from providers.base import InstanceSpec, InstanceStatus
    from tests.memory_provider import _Record

    spec = InstanceSpec(sandbox_id, "1vcpu_1gb_8gb", 1, 1024, 8)
    metadata = {
        "sandbox_id": sandbox_id,
        "team": team,
        "preset": "1vcpu_1gb_8gb",
        "snapshot_id": "memory_1vcpu_1gb_8gb_v1",
    }
    store.instances[ref] = _Record(
        ref, spec, "base", metadata, workdir, status=status or InstanceStatus.RUNNING
    )


def enable_memory_provider() -> None:
    from django.conf import settings

    from providers.registry import register_provider
    from sandboxes.models import Preset
    from sandboxes.services import backends
    from sandboxes.services.actors import Actor
    from sandboxes.services.snapshots import import_snapshot
    from tests import memory_provider

    register_provider(memory_provider.NAME, lambda: memory_provider.MemoryProvider)
    memory_provider.reset()
    settings.SANDBOX_PROVIDER_CONFIG = {"SANDBOX_PROVIDERS": memory_provider.NAME}
    backends.reset()
    preset = Preset.objects.get(pk="1vcpu_1gb_8gb")
    if not preset.offered_on(memory_provider.NAME):  # restricted to other providers
        preset.providers = [*preset.providers, memory_provider.NAME]
        preset.save(update_fields=["providers"])
    import_snapshot(
        provider=memory_provider.NAME,
        preset_id="1vcpu_1gb_8gb",
        ref="base",
        actor=Actor.system(),
        activate=True,
    )


def _child(count: int, batch: int | None) -> dict:
    """Runs in a fresh process: migrate, populate, one timed sweep."""
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from sandboxes.services.sweep import run_sweep

    call_command("migrate", verbosity=0)
    enable_memory_provider()
    mix = populate(count)
    with CaptureQueriesContext(connection) as queries:
        started = time.perf_counter()
        report = run_sweep(limit=batch)
        elapsed = (time.perf_counter() - started) * 1000
    return {
        "ms": elapsed,
        "queries": len(queries),
        "actions": report.actions,
        "errors": report.errors,
        "mix": mix,
    }


def _sample(count: int, batch: int | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-background-") as tmp:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings_test",
            "SANDBOXES_DATA_DIR": tmp,
            "DATABASE_URL": os.environ.get("BENCH_DATABASE_URL") or f"sqlite:///{tmp}/bench.db",
            "Q_SYNC": "0",
            "LOG_LEVEL": "WARNING",
        }
        return run_child("bench_background", "--child", str(count), str(batch or 0), env=env)


def run() -> list[Result]:
    samples = [_sample(SANDBOXES) for _ in range(SAMPLES)]
    # The same number of actions at a tenth of the sandboxes: the same number of queries.
    small, large = _sample(SANDBOXES // 10, SCALING_BATCH), _sample(SANDBOXES, SCALING_BATCH)
    for sample in [*samples, small, large]:
        if sample["errors"]:
            raise RuntimeError(f"sweep phases failed: {sample['errors']}")
    times = [s["ms"] for s in samples]
    median = statistics.median(times)
    actions = samples[0]["actions"]
    queries = samples[0]["queries"]
    return [
        Result(
            name=f"one sweep over {SANDBOXES:,} sandboxes (GC + idle + reconciliation)",
            value=round(median, 1),
            unit="ms (median)",
            target=f"<= {TARGET_MS} ms",
            met=median <= TARGET_MS,
            detail=(
                f"n={SAMPLES}, max {max(times):.0f} ms; actions {sum(actions.values())} "
                f"({', '.join(f'{k} {v}' for k, v in actions.items())}); SQLite unless "
                "BENCH_DATABASE_URL"
            ),
        ),
        Result(
            name=f"queries in that sweep ({sum(actions.values())} actions)",
            value=queries,
            unit="queries",
            detail=f"{queries / max(sum(actions.values()), 1):.1f} per action, all included",
        ),
        Result(
            name=(
                f"queries with {SCALING_BATCH} actions per kind: {SANDBOXES:,} sandboxes vs "
                f"{SANDBOXES // 10:,}"
            ),
            value=large["queries"],
            unit="queries",
            target=f"= {small['queries']} (independent of N)",
            met=large["queries"] == small["queries"],
            detail=(
                f"actions {sum(large['actions'].values())} vs {sum(small['actions'].values())}"
            ),
        ),
    ]


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(_child(int(sys.argv[2]), int(sys.argv[3]) or None)))
    else:
        for result in run():
            print(result)
