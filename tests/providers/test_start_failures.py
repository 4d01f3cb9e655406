"""A failure at any step of a start leaves nothing on the back end that no sandbox owns.

Driven through the service layer (``create_sandbox`` + ``perform_operation``), against the
fake Morph API and a real dockerd. A clean start is recorded first; then, for every call
it made, a fresh start is run with exactly that call failing: before the back end acts,
and (for calls that change something) after it acted with the answer lost.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from sandboxes.models import Preset, Sandbox, Team
from sandboxes.services import backends
from sandboxes.services.actors import Actor
from sandboxes.services.lifecycle import create_sandbox, perform_operation
from sandboxes.services.snapshots import import_snapshot
from sandboxes.states import Status
from tests.docker_faults import FaultyTransport
from tests.morph_fake import FakeMorph

PRESET = "1vcpu_512mb_4gb"


@dataclass
class Backend:
    provider: str
    snapshot_ref: str
    calls: Callable[[], list[str]]
    fail: Callable[[str, int, bool], None]
    clear: Callable[[], None]
    #: Every instance/container (and image, for Docker) the back end holds now.
    holdings: Callable[[], set[str]]


@contextlib.contextmanager
def morph_backend(settings) -> Iterator[Backend]:
    fake = FakeMorph("morph-failure-key").start()
    settings.SANDBOX_PROVIDER_CONFIG = {
        "SANDBOX_PROVIDERS": "morph",
        "MORPH_API_KEY": fake.api_key,
        "MORPH_BASE_URL": fake.base_url,
    }

    def fail(route: str, skip: int, after: bool) -> None:
        fake.fail_nth(route, skip=skip, after=after)

    try:
        yield Backend(
            "morph",
            fake.state.BASE_SNAPSHOT,
            calls=lambda: list(fake.calls),
            fail=fail,
            clear=fake.clear_faults,
            holdings=lambda: {f"instance:{i}" for i in fake.state.instances},
        )
    finally:
        fake.stop()


@contextlib.contextmanager
def docker_backend(settings) -> Iterator[Backend]:
    from tests.docker_daemon import daemon

    host = daemon().host
    settings.SANDBOX_PROVIDER_CONFIG = {"SANDBOX_PROVIDERS": "docker", "DOCKER_HOST": host}
    provider = backends.get_provider("docker")
    base = provider.ensure_base_image()
    client = provider.client
    faults = FaultyTransport.install(client)

    def holdings() -> set[str]:
        containers = client.containers.list(all=True, filters={"label": "sandboxes.role"})
        images = client.images.list(all=True)
        return {f"container:{c.id}" for c in containers} | {f"image:{i.id}" for i in images}

    yield Backend(
        "docker",
        base,
        calls=lambda: list(faults.calls),
        fail=lambda route, skip, after: faults.fail(route, skip=skip, after=after),
        clear=faults._faults.clear,
        holdings=holdings,
    )


BACKENDS = {"morph": morph_backend, "docker": docker_backend}


def _owned(backend: Backend) -> set[str]:
    kind = "instance" if backend.provider == "morph" else "container"
    refs = Sandbox.objects.exclude(provider_ref="").values_list("provider_ref", flat=True)
    return {f"{kind}:{ref}" for ref in refs}


def _start(team: Team) -> Sandbox:
    sandbox = create_sandbox(team=team, actor=Actor.system(), preset_id=PRESET)
    perform_operation(sandbox_id=sandbox.pk)
    sandbox.refresh_from_db()
    return sandbox


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_a_failure_at_any_step_of_a_start_leaves_nothing_unowned(name, settings):
    with BACKENDS[name](settings) as backend:
        team = Team.objects.create(slug="faults", name="Faults")
        Preset.objects.create(id=PRESET, vcpus=1, memory_mb=512, disk_gb=4, providers=[name])
        import_snapshot(
            provider=name,
            preset_id=PRESET,
            ref=backend.snapshot_ref,
            actor=Actor.system(),
            activate=True,
        )
        before = backend.holdings()
        first = len(backend.calls())
        clean = _start(team)
        assert clean.status == Status.RUNNING, clean.last_error
        steps = backend.calls()[first:]
        assert steps, "a start talks to the back end"

        outcomes: dict[str, int] = {"running": 0, "failed": 0}
        for index, route in enumerate(steps):
            occurrence = steps[:index].count(route)
            for after in (False, True) if not route.startswith("GET ") else (False,):
                backend.clear()
                backend.fail(route, occurrence, after)
                sandbox = _start(team)
                backend.clear()
                where = f"{route} #{occurrence + 1} ({'after' if after else 'before'} acting)"
                assert sandbox.status in (Status.RUNNING, Status.FAILED), where
                if sandbox.status == Status.FAILED:
                    outcomes["failed"] += 1
                    assert sandbox.provider_ref == "", where
                    assert sandbox.last_error, where
                else:
                    outcomes["running"] += 1
                left = backend.holdings() - before - _owned(backend)
                assert not left, f"{where} left {sorted(left)}"
        assert outcomes["failed"] > 0, outcomes

        # Nothing was made outside the sandboxes that own it: deleting them empties the back end.
        provider = backends.get_provider(name)
        for ref in Sandbox.objects.exclude(provider_ref="").values_list("provider_ref", flat=True):
            provider.get(ref).delete()
        assert backend.holdings() - before == set()
