from __future__ import annotations

import pytest

from tests.system import skip_is_failure_here


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a test skipped for a missing system component fails instead."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and skip_is_failure_here(str(report.longrepr)):
        report.outcome = "failed"
        report.longrepr = f"CI=true but a system component is missing: {report.longrepr}"


@pytest.fixture
def presets(db):
    """The default presets (a transactional test's flush removes the migration's seed)."""
    import importlib

    from django.apps import apps

    from sandboxes.models import Preset

    importlib.import_module("sandboxes.migrations.0002_default_presets").seed(apps, None)
    # As the migrations leave them: offered on every provider (0017).
    importlib.import_module("sandboxes.migrations.0017_presets_every_provider").unrestrict(
        apps, None
    )
    return Preset.objects.all()


@pytest.fixture
def memory_backend(settings, presets):
    """The service layer pointed at the in-memory provider, with a ready shared version.

    Returns the memory provider's store (instances, faults, calls) for assertions.
    """
    from providers.registry import register_provider, unregister_provider
    from sandboxes.models import Preset
    from sandboxes.services.actors import Actor
    from sandboxes.services.snapshots import import_snapshot
    from tests import memory_provider

    register_provider(memory_provider.NAME, lambda: memory_provider.MemoryProvider)
    store = memory_provider.reset()
    settings.SANDBOX_PROVIDER_CONFIG = {"SANDBOX_PROVIDERS": memory_provider.NAME}
    for preset in Preset.objects.all():
        if not preset.offered_on(memory_provider.NAME):  # an empty list is every provider
            preset.providers = [*preset.providers, memory_provider.NAME]
            preset.save(update_fields=["providers"])
    import_snapshot(
        provider=memory_provider.NAME,
        preset_id="1vcpu_1gb_8gb",
        ref="base",
        actor=Actor.system(),
        label="base",
        activate=True,
    )
    yield store
    unregister_provider(memory_provider.NAME)


@pytest.fixture
def local_backend(settings, presets, tmp_path):
    """The service layer pointed at the local provider (on a private root and cgroup
    parent), with a ready shared version of the two smallest presets and all sandboxes
    together capped at 1536 MB of memory. Nothing here starts a sandbox.

    Returns the provider."""
    import os
    import secrets

    from sandboxes.services import backends
    from sandboxes.services.actors import Actor
    from sandboxes.services.snapshots import import_snapshot
    from tests.local_support import teardown

    settings.SANDBOX_PROVIDER_CONFIG = {
        "SANDBOX_PROVIDERS": "local",
        "LOCAL_SANDBOX_ROOT": str(tmp_path / "local"),
        "LOCAL_SANDBOX_CGROUP_PARENT": f"sbx-test-{os.getpid()}-{secrets.token_hex(3)}",
        "LOCAL_SANDBOX_MIN_FREE_MB": "8",
        "LOCAL_SANDBOX_TOTAL_MEMORY_MB": "1536",
        "LOCAL_SANDBOX_TOTAL_PIDS": "1000",
    }
    for preset_id in ("1vcpu_1gb_8gb", "2vcpu_2gb_8gb"):
        import_snapshot(
            provider="local", preset_id=preset_id, ref="base", actor=Actor.system(), activate=True
        )
    provider = backends.get_provider("local")
    yield provider
    teardown(provider)
    backends.reset()


@pytest.fixture
def team(db):
    from sandboxes.models import Team

    return Team.objects.create(slug="alpha", name="Alpha")


@pytest.fixture
def other_team(db):
    from sandboxes.models import Team

    return Team.objects.create(slug="beta", name="Beta")


def _member(django_user_model, team, username, role):
    from sandboxes.models import Membership

    user = django_user_model.objects.create_user(username=username, password="pw-" + username)
    Membership.objects.create(user=user, team=team, role=role)
    return user


@pytest.fixture
def member(django_user_model, team):
    return _member(django_user_model, team, "alice", "member")


@pytest.fixture
def viewer(django_user_model, team):
    return _member(django_user_model, team, "victor", "viewer")


@pytest.fixture
def team_admin(django_user_model, team):
    return _member(django_user_model, team, "ada", "admin")


@pytest.fixture
def outsider(django_user_model, other_team):
    return _member(django_user_model, other_team, "mallory", "owner")


@pytest.fixture
def asgi_live_server(transactional_db):
    """``config.asgi`` under uvicorn on a loopback port (see ``tests/asgi_server.py``)."""
    from tests.asgi_server import asgi_server

    with asgi_server() as server:
        yield server
