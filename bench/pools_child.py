"""The warm-pool measurements of ``bench/bench_pools.py``, in a process of their own.

Django runs on a throwaway SQLite database in a temporary directory with the production
task settings except the worker: tasks are queued (``Q_SYNC=0``) and nothing runs them,
so what a request costs is measured without a refill running inside it. Where a refill
must run meanwhile (the steady stream), a thread of this process calls the worker's task
function (``pools.refill``) every 100 ms, as a django-q2 worker polling its queue every
200 ms would. Prints one JSON object: name -> list of values (milliseconds or counts).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

PRESET = "1vcpu_1gb_8gb"
HITS = 5
#: local hits are cheap: more of them, the machine is shared and noisy.
LOCAL_HITS = 15


def _setup(tmp: Path) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings_test"
    os.environ["DATABASE_URL"] = f"sqlite:///{tmp}/bench.sqlite3"
    os.environ["SANDBOXES_DATA_DIR"] = str(tmp / "data")
    os.environ["Q_SYNC"] = "0"
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ["SANDBOX_API_RATE"] = "100000000/min"
    os.environ["SANDBOX_API_CREATE_RATE"] = "100000000/min"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _world():
    from django.contrib.auth import get_user_model
    from django.test import Client

    from sandboxes.models import Membership, Team
    from sandboxes.services.actors import Actor
    from sandboxes.services.tokens import create_api_token

    team = Team.objects.create(slug="bench", name="Bench", max_sandboxes=0)
    Team.objects.filter(pk=team.pk).update(max_sandboxes=0, max_vcpus=0, max_memory_mb=0)
    team.refresh_from_db()
    user = get_user_model().objects.create_user(username="bench")
    Membership.objects.create(user=user, team=team, role="owner")
    _, secret = create_api_token(user=user, team=team, actor=Actor.system())
    client = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return team, user, client


def _use(config: dict[str, str], provider: str, ref: str):
    from django.conf import settings

    from sandboxes.models import Preset
    from sandboxes.services import backends
    from sandboxes.services.actors import Actor
    from sandboxes.services.snapshots import import_snapshot

    settings.SANDBOX_PROVIDER_CONFIG = config
    backends.reset()
    preset = Preset.objects.get(pk=PRESET)
    if provider not in preset.providers:
        preset.providers = [*preset.providers, provider]
        preset.save(update_fields=["providers"])
    return import_snapshot(
        provider=provider, preset_id=PRESET, ref=ref, actor=Actor.system(), activate=True
    )


def _pool(team, snapshot, size: int):
    from sandboxes.services import pools
    from sandboxes.services.actors import Actor

    pool = pools.create_pool(
        actor=Actor.system(), team=team, snapshot=snapshot, target_size=size, maximum=size
    )
    pools.refill(pool_id=pool.pk)
    return pool


def _api_hits(client, provider: str, count: int) -> list[float]:
    """POST /api/v1/sandboxes until the answer says running: the whole create of a hit."""
    times = []
    for _ in range(count):
        began = time.perf_counter()
        answer = client.post(
            "/api/v1/sandboxes",
            data=json.dumps({"preset": PRESET, "provider": provider}),
            content_type="application/json",
        )
        elapsed = (time.perf_counter() - began) * 1000
        body = answer.json()
        if answer.status_code != 202 or body.get("status") != "running":
            raise RuntimeError(f"not a running hit: {answer.status_code} {body}")
        times.append(elapsed)
    return times


def _claimed(count_before: int) -> int:
    from sandboxes.models import SandboxEvent

    return SandboxEvent.objects.filter(action="pool_claim").count() - count_before


def pve(out: dict, team, client, tmp: Path) -> None:
    from tests.pve_sim.server import PveSimulator

    with PveSimulator(tmp / "pve", task_delay=2.0) as sim:
        sim.default_cluster()
        snapshot = _use({"SANDBOX_PROVIDERS": "pve-lxc", **sim.config()}, "pve-lxc", "9000")
        began = time.perf_counter()
        _pool(team, snapshot, HITS)
        out["pve_fill_s"] = [time.perf_counter() - began]
        before = sim.cluster.tasks.copy() if hasattr(sim.cluster, "tasks") else {}
        calls_before = _provider_calls("pve-lxc")
        out["pve_hit_ms"] = _api_hits(client, "pve-lxc", HITS)
        out["pve_calls_per_hit"] = [(_provider_calls("pve-lxc") - calls_before) / HITS]
        out["pve_tasks_during_hits"] = [len(sim.cluster.tasks) - len(before)]


def _provider_calls(name: str) -> int:
    from sandboxes.services.backends import get_provider

    client = getattr(get_provider(name), "client", None)
    return getattr(client, "calls", 0)


def docker(out: dict, team, client) -> None:
    host = os.environ.get("DOCKER_HOST", "")
    daemon = None
    if not host:
        from tests import docker_daemon

        if not docker_daemon.available():
            out["docker_error"] = "no dockerd (Debian's docker.io) on this machine"
            return
        daemon = docker_daemon._start()
        host = daemon.host
    try:
        from providers.docker_provider import DockerProvider

        base = DockerProvider(host).ensure_base_image()
        snapshot = _use({"SANDBOX_PROVIDERS": "docker", "DOCKER_HOST": host}, "docker", base)
        pool = _pool(team, snapshot, HITS)
        out["docker_hit_ms"] = _api_hits(client, "docker", HITS)
        _cleanup(pool)
    finally:
        if daemon is not None:
            daemon.stop()


def local(out: dict, team, user, tmp: Path) -> None:
    """Provider calls (the measurement of the 12.8 ms cold baseline, bench_images: create,
    start, first exec) cold and on a hit (get, relabel, first exec), then the same through
    the services, with the database: a hit (create_sandbox answers it running) and a cold
    start (create_sandbox, the worker's start as soon as it is queued) to the first exec."""
    import secrets as random

    from sandboxes.services.actors import Actor
    from sandboxes.services.backends import get_provider
    from tests.local_support import teardown

    config = {
        "SANDBOX_PROVIDERS": "local",
        "LOCAL_SANDBOX_ROOT": str(tmp / "local"),
        "LOCAL_SANDBOX_CGROUP_PARENT": f"sbx-bench-{os.getpid()}-{random.token_hex(3)}",
        "LOCAL_SANDBOX_MIN_FREE_MB": "8",
    }
    snapshot = _use(config, "local", "base")
    provider = get_provider("local")
    actor = Actor.for_user(user)
    try:
        out["local_cold_provider_ms"] = _local_cold_provider(provider, snapshot)
        pool = _pool(team, snapshot, LOCAL_HITS + 1)
        hits, (gets, relabels, execs) = _local_hit_provider(provider, pool)
        out["local_hit_provider_ms"] = hits
        out["local_hit_get_ms"], out["local_hit_relabel_ms"], out["local_hit_exec_ms"] = (
            gets,
            relabels,
            execs,
        )
        _pool_refill(pool)
        hits = _local_service(team, actor)
        out["local_hit_to_exec_ms"], out["local_hit_create_ms"], out["local_first_exec_ms"] = hits
        _drop_pool(pool)
        out["local_cold_to_exec_ms"] = _local_service(team, actor, cold=True)[0]
        if os.environ.get("BENCH_POOL_PROFILE"):
            _profile_hit(team, actor, snapshot)
    finally:
        teardown(provider)


def _local_cold_provider(provider, snapshot) -> list[float]:
    from bench.bench_local import _spec

    samples, made = [], []
    for round_ in range(LOCAL_HITS + 1):
        spec = _spec()
        began = time.perf_counter()
        instance = provider.create(spec, snapshot.provider_ref, {"sandbox_id": spec.sandbox_id})
        instance.start()
        result = instance.exec(["true"], timeout=30)
        if round_:  # the first one warms caches
            samples.append((time.perf_counter() - began) * 1000)
        if result.exit_code != 0:
            raise RuntimeError(f"first exec failed: {result}")
        made.append(instance)
        provider.wait_for_spares()  # each create starts the next spare disk: not timed
    for each in made:
        each.delete()
    return samples


def _local_hit_provider(provider, pool) -> list[float]:
    """What a hit asks of the provider, on each ready member: get, relabel, first exec."""
    from sandboxes.models import PoolMember

    samples, taken, parts = [], [], []
    members = list(PoolMember.objects.filter(pool=pool, state="ready"))
    provider.wait_for_spares()  # the fill's creates started making spare disks
    os.sync()
    for index, member in enumerate(members):
        began = time.perf_counter()
        instance = provider.get(member.provider_ref)
        got = time.perf_counter()
        instance.relabel({**instance.metadata, "sandbox_id": f"sbx-bench{index:05d}"})
        relabelled = time.perf_counter()
        result = instance.exec(["true"], timeout=30)
        done = time.perf_counter()
        if index:  # the first one warms caches
            samples.append((done - began) * 1000)
            parts.append(
                ((got - began) * 1000, (relabelled - got) * 1000, (done - relabelled) * 1000)
            )
        if result.exit_code != 0:
            raise RuntimeError(f"first exec failed: {result}")
        taken.append(instance)
    for instance in taken:  # afterwards: a delete's writes would fall on the next hit
        instance.delete()
    PoolMember.objects.filter(pool=pool).delete()
    return samples, [list(part) for part in zip(*parts, strict=True)]


def _pool_refill(pool) -> None:
    from sandboxes.services import pools

    pools.refill(pool_id=pool.pk)


def _local_service(team, actor, *, cold: bool = False):
    """create_sandbox (a hit answers running; a cold create is started by the worker's
    task function, called at once) then exec_command: totals, creates, first execs."""
    from sandboxes.models import Sandbox
    from sandboxes.services import interactive, lifecycle
    from sandboxes.services.backends import get_provider

    totals, creates, execs = [], [], []
    get_provider("local").wait_for_spares()
    for round_ in range(LOCAL_HITS + 1):
        began = time.perf_counter()
        sandbox = lifecycle.create_sandbox(
            team=team, actor=actor, preset_id=PRESET, provider="local"
        )
        if cold:
            lifecycle.perform_operation(sandbox_id=sandbox.pk)
            sandbox = Sandbox.objects.select_related("team").get(pk=sandbox.pk)
        made = time.perf_counter()
        result = interactive.exec_command(sandbox=sandbox, actor=actor, command=["true"])
        done = time.perf_counter()
        if sandbox.status != "running" or result.exit_code != 0:
            raise RuntimeError(f"not running: {sandbox.status} {result}")
        if round_:  # the first one warms caches
            totals.append((done - began) * 1000)
            creates.append((made - began) * 1000)
            execs.append((done - made) * 1000)
        get_provider("local").wait_for_spares()  # a cold create starts one: not timed
    _delete_local_sandboxes(team)
    return totals, creates, execs


def _delete_local_sandboxes(team) -> None:
    """The bench's sandboxes: instances deleted, rows marked so (the host's memory budget
    counts live rows; their audit events keep them)."""
    from sandboxes.models import Sandbox
    from sandboxes.services.backends import get_provider
    from sandboxes.states import Status

    provider = get_provider("local")
    live = Sandbox.objects.filter(team=team, provider="local").exclude(status=Status.DELETED)
    for sandbox in live:
        if sandbox.provider_ref:
            provider.get(sandbox.provider_ref).delete()
    live.update(status=Status.DELETED, provider_ref="")


def _profile_hit(team, actor, snapshot) -> None:
    import cProfile
    import pstats

    from sandboxes.services import interactive, lifecycle

    pool = _pool(team, snapshot, 2)
    profile = cProfile.Profile()
    profile.enable()
    sandbox = lifecycle.create_sandbox(team=team, actor=actor, preset_id=PRESET, provider="local")
    interactive.exec_command(sandbox=sandbox, actor=actor, command=["true"])
    profile.disable()
    pstats.Stats(profile, stream=sys.stderr).sort_stats("cumulative").print_stats(45)
    _drop_pool(pool)


def _drop_pool(pool) -> None:
    """The rows only: the local provider's teardown removes the instances."""
    from sandboxes.models import PoolMember

    PoolMember.objects.filter(pool=pool).delete()
    pool.delete()


def _cleanup(pool) -> None:
    from sandboxes.services import pools
    from sandboxes.services.actors import Actor

    pools.delete_pool(actor=Actor.system(), pool=pool)
    pools.maintain()


class SlowClones:
    """The in-memory provider whose create takes 2 s, in parallel (as a linked clone on
    storage that clones concurrently would): the hit-rate runs measure the pool's logic,
    not a back end's queue."""

    @staticmethod
    def install() -> None:
        from providers.registry import register_provider
        from tests import memory_provider

        class Slow(memory_provider.MemoryProvider):
            def create(self, spec, snapshot_ref, metadata):
                if metadata.get("pool"):
                    time.sleep(2.0)
                return super().create(spec, snapshot_ref, metadata)

        register_provider(memory_provider.NAME, lambda: Slow)
        memory_provider.reset()


def hit_rates(out: dict, team, user) -> None:
    from sandboxes.models import WarmPool
    from sandboxes.services import lifecycle, pools
    from sandboxes.services.actors import Actor

    SlowClones.install()
    snapshot = _use({"SANDBOX_PROVIDERS": "memory"}, "memory", "base")
    actor = Actor.for_user(user)

    def create() -> None:
        lifecycle.create_sandbox(team=team, actor=actor, preset_id=PRESET, provider="memory")

    pool = _pool(team, snapshot, 20)
    before = _claimed(0)
    for _ in range(20):
        create()
    out["burst_hits"] = [_claimed(before)]
    _cleanup(pool)

    pool = _pool(team, snapshot, 5)
    stop = threading.Event()

    def worker() -> None:
        from django.db import connection

        while not stop.is_set():
            pools.refill(pool_id=pool.pk)
            stop.wait(0.1)
        connection.close()

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    WarmPool.objects.filter(pk=pool.pk).update(hits=0, misses=0)
    stream = int(os.environ.get("BENCH_POOL_STREAM", "30"))
    began = time.monotonic()
    for index in range(stream):
        time.sleep(max(0.0, began + index - time.monotonic()))  # one a second
        create()
    stop.set()
    thread.join()
    pool.refresh_from_db()
    out["stream_hits"] = [pool.hits]
    out["stream_total"] = [pool.hits + pool.misses]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-pools-") as name:
        tmp = Path(name)
        _setup(tmp)
        team, user, client = _world()
        out: dict = {}
        wanted = sys.argv[1:] or ["pve", "docker", "local", "rates"]
        for part, run in (
            ("pve", lambda: pve(out, team, client, tmp)),
            ("docker", lambda: docker(out, team, client)),
            ("local", lambda: local(out, team, user, tmp)),
            ("rates", lambda: hit_rates(out, team, user)),
        ):
            if part not in wanted:
                continue
            try:
                run()
            except Exception as exc:  # one part failing must not hide the others
                import traceback

                out[f"{part}_error"] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
        print(json.dumps(out))


if __name__ == "__main__":
    main()
