"""Warm pools (services/pools.py, docs/pools.md) against the in-memory provider, with
tasks run on commit: claims, misses, refill limits, drain, recycle, lost rows, scoping
and permissions. The concurrency test (50 creates against a pool of 20) needs
PostgreSQL's row locks and runs where the suite runs on it (CI)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import close_old_connections, connection
from django.utils import timezone

from providers.base import META_POOL
from providers.errors import OperationFailed
from sandboxes import selectors
from sandboxes.models import (
    ActorKind,
    Membership,
    MemberState,
    PoolMember,
    Sandbox,
    SandboxEvent,
    Team,
    WarmPool,
)
from sandboxes.services import lifecycle, orphans, pools, sweep
from sandboxes.services.actors import Actor
from sandboxes.services.errors import InvalidInput, NotAllowed
from sandboxes.services.snapshots import activate_snapshot, import_snapshot, resolve_for_start
from sandboxes.states import Status
from tests import memory_provider

pytestmark = pytest.mark.django_db(transaction=True)

PRESET = "1vcpu_1gb_8gb"


@pytest.fixture
def owner(django_user_model, team):
    user = django_user_model.objects.create_user(username="olga", password="pw")
    Membership.objects.create(user=user, team=team, role="owner")
    return user


@pytest.fixture
def snapshot(memory_backend, team):
    return resolve_for_start(team=team, preset_id=PRESET, provider="memory", snapshot_id=None)


def make_pool(team, owner, snapshot, **kwargs) -> WarmPool:
    kwargs.setdefault("target_size", 2)
    pool = pools.create_pool(actor=Actor.for_user(owner), team=team, snapshot=snapshot, **kwargs)
    pool.refresh_from_db()
    return pool


def ready(pool) -> list[PoolMember]:
    return list(PoolMember.objects.filter(pool=pool, state=MemberState.READY))


def create(team, user, **kwargs) -> Sandbox:
    kwargs.setdefault("preset_id", PRESET)
    kwargs.setdefault("provider", "memory")
    sandbox = lifecycle.create_sandbox(team=team, actor=Actor.for_user(user), **kwargs)
    sandbox.refresh_from_db()
    return sandbox


def test_a_pool_fills_to_its_target_with_started_instances(memory_backend, team, owner, snapshot):
    pool = make_pool(team, owner, snapshot, target_size=3, maximum=5)
    members = ready(pool)
    assert len(members) == 3
    for member in members:
        record = memory_backend.instances[member.provider_ref]
        assert record.status == "running"
        assert record.metadata[META_POOL] == str(pool.pk)
        assert record.metadata["sandbox_id"] == member.id
    fills = SandboxEvent.objects.filter(action="pool_fill", outcome="succeeded")
    assert fills.count() == 3
    assert {e.actor_kind for e in fills} == {ActorKind.SCHEDULER}
    # Members are not sandboxes: the team's list and its quota do not see them.
    assert not selectors.sandboxes_for_team(team=team).exists()


def test_a_create_claims_a_member_relabels_it_and_the_pool_refills(
    memory_backend, team, owner, snapshot
):
    pool = make_pool(team, owner, snapshot, target_size=2)
    before = {m.provider_ref: m.id for m in ready(pool)}
    sandbox = create(team, owner, name="dev", env={"A": "1"})
    assert sandbox.status == Status.RUNNING
    assert sandbox.provider_ref in before
    # The instance now says it is this sandbox's: orphan detection and adoption see it.
    assert memory_backend.instances[sandbox.provider_ref].metadata == {
        "sandbox_id": sandbox.pk,
        "team": "alpha",
        "preset": PRESET,
        "snapshot_id": snapshot.snapshot_id,
    }
    assert not PoolMember.objects.filter(pk=before[sandbox.provider_ref]).exists()
    claim = SandboxEvent.objects.get(action="pool_claim", sandbox=sandbox)
    assert claim.data["member"] == before[sandbox.provider_ref]
    assert claim.actor_user == owner
    pool.refresh_from_db()
    assert (pool.hits, pool.misses) == (1, 0)
    assert len(ready(pool)) == 2  # refilled after the claim
    assert sandbox.provider_ref not in {m.provider_ref for m in ready(pool)}
    # The sandbox behaves like any other: env reaches its processes, delete removes it.
    from sandboxes.services import interactive

    result = interactive.exec_command(
        sandbox=sandbox, actor=Actor.for_user(owner), command=["sh", "-c", "echo $A"]
    )
    assert result.stdout.strip() == "1"
    lifecycle.delete_sandbox(sandbox=sandbox, actor=Actor.for_user(owner))
    assert sandbox.provider_ref not in memory_backend.instances


def test_a_miss_falls_back_to_a_normal_start(memory_backend, team, owner, snapshot):
    memory_provider.MemoryProvider.fail("create", OperationFailed("no room for members"))
    pool = make_pool(team, owner, snapshot, target_size=1)
    assert ready(pool) == []
    assert SandboxEvent.objects.filter(action="pool_fill", outcome="failed").exists()
    sandbox = create(team, owner)
    assert sandbox.status == Status.RUNNING
    assert not SandboxEvent.objects.filter(action="pool_claim").exists()
    pool.refresh_from_db()
    assert pool.misses == 1
    assert len(ready(pool)) == 1  # the miss asked for a refill, which worked this time


def test_a_create_with_another_network_policy_does_not_take_a_member(
    memory_backend, team, owner, snapshot
):
    pool = make_pool(team, owner, snapshot, target_size=1)
    memory_backend.enabled.add("supports_network_internet")
    sandbox = create(team, owner, network_policy="internet")
    assert sandbox.status == Status.RUNNING
    assert sandbox.provider_ref not in {m.provider_ref for m in ready(pool)}
    pool.refresh_from_db()
    assert pool.hits == 0


def test_refill_never_goes_beyond_the_maximum(memory_backend, team, owner, snapshot):
    pool = make_pool(team, owner, snapshot, target_size=2, maximum=2)
    # Two members being removed still count against the maximum: no new one is made.
    PoolMember.objects.filter(pool=pool).update(state=MemberState.DELETING)
    assert pools.refill(pool_id=pool.pk) == 0
    assert PoolMember.objects.filter(pool=pool).count() == 2
    with pytest.raises(InvalidInput):
        pools.update_pool(actor=Actor.for_user(owner), pool=pool, maximum=1)


def test_refill_stops_at_the_providers_free_capacity(
    memory_backend, team, owner, snapshot, monkeypatch
):
    from providers.base import Capacity

    monkeypatch.setattr(
        memory_provider.MemoryProvider,
        "capacity",
        # 3 GiB of which 1 GiB is taken, plus what the instances (members too) hold.
        lambda self: Capacity(
            memory_mb_total=3 * 1024, memory_mb_used=1024 * (1 + len(memory_backend.instances))
        ),
        raising=False,
    )
    pool = make_pool(team, owner, snapshot, target_size=5, maximum=5)
    assert len(ready(pool)) == 2  # 2 GiB free, 1 GiB each
    pools.refill(pool_id=pool.pk)
    pools.refill(pool_id=pool.pk)
    assert len(ready(pool)) == 2
    refused = SandboxEvent.objects.filter(action="pool_fill", outcome="refused")
    assert refused.count() == 1  # once, not at every refill while the host is full


def test_activating_a_new_version_drains_the_old_pool_and_fills_the_new(
    memory_backend, team, owner, snapshot
):
    pool = make_pool(team, owner, snapshot, target_size=2)
    old_refs = {m.provider_ref for m in ready(pool)}
    v2 = import_snapshot(
        provider="memory", preset_id=PRESET, ref="base", actor=Actor.system(), label="v2"
    )
    activate_snapshot(snapshot=v2, actor=Actor.system(), team=None)
    pool.refresh_from_db()
    assert pool.snapshot == v2
    members = ready(pool)
    assert len(members) == 2
    assert {m.snapshot_id for m in members} == {v2.pk}
    assert not old_refs & set(memory_backend.instances)  # the old members are gone
    drains = SandboxEvent.objects.filter(action="pool_remove", data__reason="drain")
    assert drains.count() == 2
    assert {e.actor_kind for e in drains} == {ActorKind.SCHEDULER}
    sandbox = create(team, owner)
    assert sandbox.snapshot == v2
    assert SandboxEvent.objects.filter(action="pool_claim", sandbox=sandbox).exists()


def test_members_older_than_the_maximum_age_are_recycled(memory_backend, team, owner, snapshot):
    pool = make_pool(team, owner, snapshot, target_size=2, max_age_seconds=600)
    old = ready(pool)[0]
    PoolMember.objects.filter(pk=old.pk).update(ready_at=timezone.now() - timedelta(hours=1))
    pools.maintain()
    assert not PoolMember.objects.filter(pk=old.pk).exists()
    assert old.provider_ref not in memory_backend.instances
    assert len(ready(pool)) == 2
    event = SandboxEvent.objects.get(action="pool_remove", data__reason="recycle")
    assert event.actor_kind == ActorKind.SCHEDULER


def test_a_member_whose_row_was_lost_is_taken_back(memory_backend, team, owner, snapshot):
    pool = make_pool(team, owner, snapshot, target_size=2)
    lost = ready(pool)[0]
    PoolMember.objects.filter(pk=lost.pk).delete()
    report = sweep.run_sweep()
    assert report.actions["pools"] == 1
    assert report.actions["orphans"] == 0  # members are never judged as orphans
    back = PoolMember.objects.get(pk=lost.pk)
    assert (back.pool, back.state, back.provider_ref) == (pool, "ready", lost.provider_ref)
    assert SandboxEvent.objects.filter(action="pool_recover").count() == 1


def test_a_lost_member_that_fits_no_pool_is_deleted_not_leaked(
    memory_backend, team, owner, snapshot
):
    pool = make_pool(team, owner, snapshot, target_size=2)
    refs = {m.provider_ref for m in ready(pool)}
    PoolMember.objects.filter(pool=pool).delete()
    WarmPool.objects.filter(pk=pool.pk).delete()
    sweep.run_sweep()
    assert not refs & set(memory_backend.instances)
    removed = SandboxEvent.objects.filter(action="pool_remove", data__reason="lost_row")
    assert removed.count() == 2
    assert not orphans.find_orphans(rows=[], inventory=sweep.take_inventory())


def test_a_member_whose_instance_vanished_loses_its_row(memory_backend, team, owner, snapshot):
    pool = make_pool(team, owner, snapshot, target_size=2)
    gone = ready(pool)[0]
    del memory_backend.instances[gone.provider_ref]
    sweep.run_sweep()
    assert not PoolMember.objects.filter(pk=gone.pk).exists()
    assert SandboxEvent.objects.filter(action="pool_lost").count() == 1


def test_deleting_a_pool_removes_its_members(memory_backend, team, owner, snapshot):
    pool = make_pool(team, owner, snapshot, target_size=2)
    refs = {m.provider_ref for m in ready(pool)}
    pools.delete_pool(actor=Actor.for_user(owner), pool=pool)
    assert not PoolMember.objects.exists()
    assert not refs & set(memory_backend.instances)


def test_a_teams_pool_serves_only_that_team_and_a_shared_pool_serves_all(
    memory_backend, team, other_team, owner, outsider, snapshot, admin_user
):
    own = make_pool(team, owner, snapshot, target_size=1)
    other = create(other_team, outsider)
    assert not SandboxEvent.objects.filter(action="pool_claim", sandbox=other).exists()
    assert len(ready(own)) == 1
    shared = pools.create_pool(
        actor=Actor.for_user(admin_user), team=None, snapshot=snapshot, target_size=1
    )
    other = create(other_team, outsider)
    claim = SandboxEvent.objects.get(action="pool_claim", sandbox=other)
    assert claim.data["pool"] == shared.pk
    mine = create(team, owner)
    assert SandboxEvent.objects.get(action="pool_claim", sandbox=mine).data["pool"] == own.pk
    assert {p.pk for p in selectors.pools_for_team(team=other_team)} == {shared.pk}
    assert {p.pk for p in selectors.pools_for_team(team=team)} == {own.pk, shared.pk}


def test_only_owners_and_admins_manage_a_teams_pools(
    memory_backend, team, owner, member, viewer, team_admin, outsider, snapshot
):
    for user in (member, viewer, outsider):
        with pytest.raises(NotAllowed):
            pools.create_pool(actor=Actor.for_user(user), team=team, snapshot=snapshot)
    with pytest.raises(NotAllowed):  # shared pools are the operators'
        pools.create_pool(actor=Actor.for_user(owner), team=None, snapshot=snapshot)
    pool = pools.create_pool(actor=Actor.for_user(team_admin), team=team, snapshot=snapshot)
    with pytest.raises(NotAllowed):
        pools.update_pool(actor=Actor.for_user(member), pool=pool, target_size=3)
    with pytest.raises(NotAllowed):
        pools.delete_pool(actor=Actor.for_user(outsider), pool=pool)
    pools.update_pool(actor=Actor.for_user(owner), pool=pool, target_size=3, maximum=3)
    assert len(ready(pool)) == 3


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="row locks (SKIP LOCKED): PostgreSQL, as in CI"
)
def test_fifty_concurrent_creates_against_a_pool_of_twenty(
    memory_backend, django_user_model, snapshot, admin_user, monkeypatch, settings
):
    settings.SANDBOX_TEAM_MAX_SANDBOXES = 50
    pool = pools.create_pool(
        actor=Actor.for_user(admin_user), team=None, snapshot=snapshot, target_size=20
    )
    assert len(ready(pool)) == 20
    # The worker is not running: nothing refills while the creates race.
    monkeypatch.setattr(pools, "_ask_refill", lambda pool_id: None)
    teams = []
    for index in range(5):  # creates of one team queue on its row lock; five teams race
        team = Team.objects.create(slug=f"t{index}", name=f"T{index}")
        user = django_user_model.objects.create_user(username=f"u{index}", password="pw")
        Membership.objects.create(user=user, team=team, role="member")
        teams.append((team, user))
    made: list[Sandbox] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(50)

    def one(index: int) -> None:
        team, user = teams[index % 5]
        try:
            gate.wait()
            made.append(create(team, user))
        except BaseException as exc:
            errors.append(exc)
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(made) == 50
    assert {s.status for s in made} == {Status.RUNNING}
    claims = SandboxEvent.objects.filter(action="pool_claim")
    assert claims.count() == 20
    members = [e.data["member"] for e in claims]
    assert len(set(members)) == 20  # nothing claimed twice
    refs = [s.provider_ref for s in made]
    assert len(set(refs)) == 50
    pool.refresh_from_db()
    assert (pool.hits, pool.misses) == (20, 30)
    assert PoolMember.objects.count() == 0
    # Nothing orphaned: every instance belongs to exactly one sandbox.
    assert set(memory_backend.instances) == set(refs)
    assert orphans.find_orphans(rows=[], inventory=sweep.take_inventory()) == []


def test_an_operator_manages_shared_pools_in_the_admin(memory_backend, snapshot, admin_client):
    answer = admin_client.post(
        "/admin/sandboxes/warmpool/add/",
        {
            "snapshot": snapshot.pk,
            "team": "",
            "target_size": 2,
            "maximum": 2,
            "max_age_seconds": 3600,
            "enabled": "on",
            "members-TOTAL_FORMS": 0,
            "members-INITIAL_FORMS": 0,
        },
    )
    assert answer.status_code == 302, answer.content.decode()[-1500:]
    pool = WarmPool.objects.get()
    assert pool.team is None
    assert len(ready(pool)) == 2
    event = SandboxEvent.objects.get(action="pool_create")
    assert event.actor_user.username == "admin"
    page = admin_client.get("/admin/sandboxes/warmpool/")
    assert page.status_code == 200
    assert snapshot.snapshot_id in page.content.decode()


def test_a_pooled_snapshot_cannot_be_deleted_under_its_members(
    memory_backend, team, owner, snapshot
):
    from sandboxes.services.errors import Conflict
    from sandboxes.services.snapshots import delete_snapshot

    v2 = import_snapshot(
        provider="memory", preset_id=PRESET, ref="base", actor=Actor.system(), team=team
    )
    pool = make_pool(team, owner, v2, target_size=1)
    with pytest.raises(Conflict, match="warm pool"):
        delete_snapshot(snapshot=v2, actor=Actor.for_user(owner))
    pools.delete_pool(actor=Actor.for_user(owner), pool=pool)
    assert delete_snapshot(snapshot=v2, actor=Actor.for_user(owner)).status == "deleted"


def test_a_failed_relabel_leaves_the_sandbox_running_and_the_sweep_finishes_it(
    memory_backend, team, owner, snapshot
):
    make_pool(team, owner, snapshot, target_size=1)
    memory_provider.MemoryProvider.fail("relabel", OperationFailed("metadata store down"))
    sandbox = create(team, owner)
    assert sandbox.status == Status.RUNNING
    assert "metadata store down" in sandbox.last_error
    record = memory_backend.instances[sandbox.provider_ref]
    assert record.metadata.get(META_POOL)  # still the member's
    report = sweep.run_sweep()
    assert report.actions["orphans"] == 0  # the sandbox owns it: not an orphan
    assert record.metadata == lifecycle.provider_metadata(sandbox)
    assert SandboxEvent.objects.filter(action="pool_relabel", sandbox=sandbox).exists()
    assert sandbox.provider_ref in memory_backend.instances


def test_a_hit_answers_the_sandbox_as_stored(memory_backend, team, owner, snapshot):
    """The create settles a hit in memory instead of reading the row back: what it
    returns must be what was written."""
    make_pool(team, owner, snapshot, target_size=1)
    sandbox = lifecycle.create_sandbox(
        team=team, actor=Actor.for_user(owner), preset_id=PRESET, provider="memory", ttl_seconds=600
    )
    stored = Sandbox.objects.get(pk=sandbox.pk)
    fields = ["status", "operation", "lease_token", "lease_expires_at", "provider_ref"]
    fields += ["started_at", "status_changed_at", "last_activity_at", "expires_at", "services"]
    assert {f: getattr(sandbox, f) for f in fields} == {f: getattr(stored, f) for f in fields}
    assert (sandbox.status, sandbox.lease_token, sandbox.operation) == (Status.RUNNING, "", "")
    assert sandbox.expires_at == sandbox.started_at + timedelta(seconds=600)


def test_no_worker_can_take_a_hit_while_its_create_starts_it(
    memory_backend, team, owner, snapshot, monkeypatch
):
    """The row is born holding the start's lease: a worker running the start meanwhile
    (a retried task, the reconciler) finds it leased and leaves it alone."""
    make_pool(team, owner, snapshot, target_size=1)
    seen = []
    relabel = memory_provider.MemoryInstance.relabel

    def relabel_while_a_worker_tries(self, metadata):
        sandbox_id = metadata["sandbox_id"]
        seen.append(Sandbox.objects.values_list("status", "lease_token").get(pk=sandbox_id))
        lifecycle.perform_operation(sandbox_id=sandbox_id)
        relabel(self, metadata)

    monkeypatch.setattr(memory_provider.MemoryInstance, "relabel", relabel_while_a_worker_tries)
    sandbox = create(team, owner)
    status, lease = seen[0]
    assert status == Status.STARTING
    assert lease  # leased from its insert
    assert len(seen) == 1  # the worker did not relabel (nor start) it a second time
    assert sandbox.status == Status.RUNNING
    starts = SandboxEvent.objects.filter(sandbox=sandbox, action="start")
    assert starts.count() == 1


def test_a_hit_costs_a_pinned_number_of_statements(
    memory_backend, team, owner, snapshot, django_assert_max_num_queries, monkeypatch
):
    """Every statement of a hit is on the caller's clock (issue 16's instant starts): the
    caller's role, resolving the version (2), the create's transaction (team lock, quota,
    pool, member, claim, hit count, version lock, the row, two events), the refill task,
    and the start's settle (the row and its event); no read of the row afterwards.
    Changing this count means reading docs/benchmarks.md's pool section again."""
    from django_q.conf import Conf

    make_pool(team, owner, snapshot, target_size=2)
    create(team, owner)  # warm caches (content types, the provider)
    monkeypatch.setattr(Conf, "SYNC", False)  # the refill is queued, as in production
    actor = Actor.for_user(owner)
    with django_assert_max_num_queries(22):  # BEGIN and COMMIT lines included
        sandbox = lifecycle.create_sandbox(
            team=team, actor=actor, preset_id=PRESET, provider="memory"
        )
    assert sandbox.status == Status.RUNNING
