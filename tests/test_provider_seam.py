"""The seam between the control plane and its providers: what a provider declares is what
it gets (settings), and nothing else needs editing to add one."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import pytest

from providers.registry import (
    BUILTIN_PROVIDERS,
    build_providers,
    config_keys,
    provider_class,
    provider_config,
    register_provider,
    unregister_provider,
)
from tests import memory_provider

ROOT = Path(__file__).resolve().parent.parent


class SeamProvider(memory_provider.MemoryProvider):
    """The in-memory provider with one setting of its own, under no known prefix."""

    name = "seamtest"
    config_keys: ClassVar[tuple[str, ...]] = ("SEAMTEST_TOKEN",)

    def __init__(self, token: str = "") -> None:
        super().__init__()
        self.token = token

    @classmethod
    def from_config(cls, config: Mapping[str, str]) -> SeamProvider:
        return cls(config.get("SEAMTEST_TOKEN", ""))


ENVIRON = {
    "SANDBOX_PROVIDERS": "seamtest",
    "SEAMTEST_TOKEN": "t0ken",
    "SEAMTEST_UNDECLARED": "no",
    "PVE_NOT_A_SETTING": "no",  # a known provider's prefix is no longer a pass
    "AWS_SECRET_ACCESS_KEY": "never",
    "HOME": "/root",
}


@pytest.fixture
def seam_provider():
    register_provider("seamtest", lambda: SeamProvider)
    yield
    unregister_provider("seamtest")


def test_a_provider_registered_at_run_time_receives_its_declared_key(seam_provider):
    config = provider_config(ENVIRON)
    assert dict(config) == {"SANDBOX_PROVIDERS": "seamtest", "SEAMTEST_TOKEN": "t0ken"}
    provider = build_providers(config)["seamtest"]
    assert provider.token == "t0ken"


def test_a_config_made_before_the_registration_still_delivers_the_key():
    """Django's settings make the mapping at import; a test or worker settings module
    registers its provider afterwards (the order trap of the worker processes)."""
    config = provider_config(ENVIRON)
    assert "SEAMTEST_TOKEN" not in config  # nobody declares it yet
    register_provider("seamtest", lambda: SeamProvider)
    try:
        assert config["SEAMTEST_TOKEN"] == "t0ken"
    finally:
        unregister_provider("seamtest")
    assert "SEAMTEST_TOKEN" not in config


def test_unknown_keys_never_leak():
    config = provider_config(ENVIRON)
    for key in ("SEAMTEST_UNDECLARED", "PVE_NOT_A_SETTING", "AWS_SECRET_ACCESS_KEY", "HOME"):
        assert key not in config
    assert "t0ken" not in repr(config)


def test_defaults_apply_only_to_unset_declared_keys():
    config = provider_config(
        {"LOCAL_SANDBOX_ROOT": "/set"}, defaults={"LOCAL_SANDBOX_ROOT": "/d", "NOPE": "x"}
    )
    assert dict(config) == {"LOCAL_SANDBOX_ROOT": "/set"}
    assert provider_config({}, defaults={"LOCAL_SANDBOX_ROOT": "/d"})["LOCAL_SANDBOX_ROOT"] == "/d"


class Recording(dict):
    """A configuration that notes every key read."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


MINIMAL = {
    "local": lambda tmp: {"LOCAL_SANDBOX_ROOT": str(tmp / "local")},
    "morph": lambda tmp: {"MORPH_API_KEY": "k"},
    "docker": lambda tmp: {"DOCKER_HOST": "unix:///nonexistent/docker.sock"},
    "pve-lxc": lambda tmp: {"PVE_API_URL": "https://127.0.0.1:8006", "PVE_API_TOKEN": "u@pam!t=s"},
    "pve-vm": lambda tmp: {"PVE_API_URL": "https://127.0.0.1:8006", "PVE_API_TOKEN": "u@pam!t=s"},
    "aws-ec2": lambda tmp: {"AWS_EC2_REGION": "eu-west-1"},
}


@pytest.mark.parametrize("name", list(BUILTIN_PROVIDERS))
def test_every_environment_variable_a_provider_reads_is_declared(name, tmp_path):
    """A key read but not declared would never arrive from the environment."""
    cls = provider_class(name)
    # Without a minimal configuration here, the keys read up to the first one missing are
    # checked (from_config then refuses the empty configuration).
    config = Recording(MINIMAL[name](tmp_path) if name in MINIMAL else {})
    cls.configured(config)
    try:
        cls.from_config(config)
    except ValueError:
        assert name not in MINIMAL, f"{name}'s minimal configuration is refused"
    assert config.read, f"{name} read no setting at all"
    environment_like = {k for k in config.read if k.isupper() and k.isidentifier()}
    assert environment_like <= set(cls.config_keys), sorted(environment_like - set(cls.config_keys))
    assert set(cls.config_keys) <= set(config_keys())


def test_a_worker_process_receives_a_test_providers_key(tmp_path):
    """The worker's settings module registers the file-backed provider after the test
    settings made SANDBOX_PROVIDER_CONFIG; its root still arrives, in another process."""
    root = tmp_path / "store"
    code = (
        "import django; django.setup()\n"
        "from sandboxes.services.backends import backends\n"
        "print(backends().providers['filestore'].store.root)\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.background.worker_settings",
        "SANDBOX_PROVIDERS": "filestore",
        "SANDBOX_PROVIDER_FILESTORE_ROOT": str(root),
    }
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(root)


# --- presets: every provider unless restricted, sizes refused through capabilities ---------


class SmallProvider(memory_provider.MemoryProvider):
    """The in-memory provider declaring it makes nothing above 2 vCPUs, 4 GB, 16 GB."""

    name = "smallmem"

    @property
    def capabilities(self):
        return dataclasses.replace(
            super().capabilities,
            max_vcpus=2,
            max_memory_mb=4096,
            max_disk_gb=16,
            limits_source="a test's limits",
        )


@pytest.fixture
def small_backend(settings, presets):
    """Two providers registered at run time, with no preset edited for either."""
    register_provider("smallmem", lambda: SmallProvider)
    register_provider(memory_provider.NAME, lambda: memory_provider.MemoryProvider)
    memory_provider.reset()
    settings.SANDBOX_PROVIDER_CONFIG = {"SANDBOX_PROVIDERS": f"{memory_provider.NAME},smallmem"}
    yield
    unregister_provider("smallmem")
    unregister_provider(memory_provider.NAME)


def test_the_migrated_presets_are_offered_on_every_provider(presets):
    assert presets.count() == 6
    assert all(p.providers == [] for p in presets)


def test_a_new_provider_gets_every_preset_with_no_migration(small_backend):
    from sandboxes.models import Preset
    from sandboxes.services import backends
    from sandboxes.services.actors import Actor
    from sandboxes.services.snapshots import import_snapshot

    for preset in Preset.objects.all():
        assert backends.preset_refusal(preset, memory_provider.NAME) == ""
        import_snapshot(
            provider=memory_provider.NAME, preset_id=preset.pk, ref="base", actor=Actor.system()
        )


def test_an_explicit_restriction_still_holds(small_backend):
    from sandboxes.models import Preset
    from sandboxes.services import backends
    from sandboxes.services.actors import Actor
    from sandboxes.services.errors import InvalidInput
    from sandboxes.services.snapshots import import_snapshot

    preset = Preset.objects.get(pk="1vcpu_1gb_8gb")
    preset.providers = ["smallmem"]
    preset.save()
    assert backends.offered_providers(preset) == ["smallmem"]
    with pytest.raises(InvalidInput, match="offered only on smallmem"):
        import_snapshot(
            provider=memory_provider.NAME, preset_id=preset.pk, ref="base", actor=Actor.system()
        )


def test_a_provider_refuses_a_size_beyond_its_capabilities(small_backend, team, member):
    from sandboxes.models import Preset
    from sandboxes.services import backends, lifecycle
    from sandboxes.services.actors import Actor
    from sandboxes.services.errors import InvalidInput
    from sandboxes.services.snapshots import import_snapshot

    large = Preset.objects.get(pk="4vcpu_16gb_48gb")
    message = backends.preset_refusal(large, "smallmem")
    assert message == (
        "preset 4vcpu_16gb_48gb is not offered on smallmem: too large for this provider "
        "(a test's limits): 4 vCPUs (at most 2), 16384 MB memory (at most 4096 MB), "
        "48 GB disk (at most 16 GB)"
    )
    with pytest.raises(InvalidInput, match="too large for this provider"):
        import_snapshot(provider="smallmem", preset_id=large.pk, ref="base", actor=Actor.system())
    # The size it can make is offered, and a sandbox of it starts as usual.
    import_snapshot(
        provider="smallmem", preset_id="2vcpu_4gb_16gb", ref="base", actor=Actor.system(),
        activate=True,
    )  # fmt: skip
    sandbox = lifecycle.create_sandbox(
        team=team, actor=Actor.for_user(member), preset_id="2vcpu_4gb_16gb", provider="smallmem"
    )
    assert sandbox.vcpus == 2
    with pytest.raises(InvalidInput, match="too large"):
        lifecycle.create_sandbox(
            team=team, actor=Actor.for_user(member), preset_id=large.pk, provider="smallmem"
        )


def test_the_api_and_the_dashboard_do_not_offer_a_size_a_provider_refuses(
    small_backend, team, member
):
    from django.urls import reverse

    from tests.api.conftest import bearer_client
    from tests.dashboard.conftest import signed_in

    presets = {
        p["id"]: p for p in bearer_client(member, team).get("/api/v1/presets").json()["results"]
    }
    assert presets["2vcpu_4gb_16gb"]["providers"] == [memory_provider.NAME, "smallmem"]
    assert presets["4vcpu_16gb_48gb"]["providers"] == [memory_provider.NAME]
    config = bearer_client(member, team).get("/api/v1/config").json()
    sizes = {p["id"]: p["providers"] for p in config["presets"]}
    assert sizes["8vcpu_32gb_64gb"] == [memory_provider.NAME]

    client = signed_in(member)
    form = client.get(reverse("sandbox-new"), {"provider": "smallmem"}).content.decode()
    assert 'value="2vcpu_4gb_16gb"' in form
    assert 'value="4vcpu_16gb_48gb"' not in form
    form = client.get(reverse("sandbox-new"), {"provider": memory_provider.NAME}).content.decode()
    assert 'value="4vcpu_16gb_48gb"' in form
    page = client.get(reverse("preset-list")).content.decode()
    assert page.count("smallmem") == 3  # the three presets it can make
    health = client.get(reverse("provider-health")).content.decode()
    assert "Largest sandbox: 2 vCPUs, 4096 MB memory, 16 GB disk" in health
    assert "a test&#x27;s limits" in health


def test_the_migration_keeps_restrictions_and_lifts_the_full_lists():
    import importlib

    migration = importlib.import_module("sandboxes.migrations.0017_presets_every_provider")

    class Row:
        def __init__(self, providers):
            self.providers = providers

        def save(self, **kwargs):
            pass

    rows = [Row(list(migration.BUILTIN)), Row([*migration.BUILTIN, "memory"]), Row(["pve-vm"])]

    class Apps:
        @staticmethod
        def get_model(app, name):
            return type("M", (), {"objects": type("Q", (), {"all": staticmethod(lambda: rows)})})

    migration.unrestrict(Apps, None)
    assert [r.providers for r in rows] == [[], [], ["pve-vm"]]
    migration.restrict(Apps, None)
    assert [r.providers for r in rows] == [
        list(migration.BUILTIN),
        list(migration.BUILTIN),
        ["pve-vm"],
    ]


# --- provider options live with the provider: PVE's full clone ------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_full_clone_boxes_become_the_pve_setting_and_come_back(settings, tmp_path):
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    settings.DATA_DIR = tmp_path
    (tmp_path / "provider-settings.env").write_text(
        "# kept\nPVE_FULL_CLONE_PRESETS=9vcpu_9gb_9gb\n"
    )
    before = [("sandboxes", "0017_presets_every_provider")]
    after = [("sandboxes", "0018_preset_full_clone_to_pve_setting")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    apps = executor.loader.project_state(before).apps
    Preset = apps.get_model("sandboxes", "Preset")
    # (A transactional test before this one may have emptied the seeded table.)
    for preset_id, size in (("2vcpu_4gb_16gb", (2, 4096, 16)), ("8vcpu_32gb_64gb", (8, 32768, 64))):
        Preset.objects.update_or_create(
            id=preset_id,
            defaults=dict(zip(("vcpus", "memory_mb", "disk_gb"), size, strict=True))
            | {"full_clone": True},
        )
    Preset.objects.get_or_create(
        id="1vcpu_1gb_8gb", defaults={"vcpus": 1, "memory_mb": 1024, "disk_gb": 8}
    )
    try:
        executor = MigrationExecutor(connection)
        executor.migrate(after)
        from config.localfiles import provider_settings

        carried = provider_settings(tmp_path / "provider-settings.env")
        assert carried == {"PVE_FULL_CLONE_PRESETS": "2vcpu_4gb_16gb,8vcpu_32gb_64gb,9vcpu_9gb_9gb"}
        assert "# kept" in (tmp_path / "provider-settings.env").read_text()
        # Settings read it below the environment, and the PVE provider takes it.
        from providers.pve.settings import PveSettings

        config = provider_config(
            {"PVE_API_URL": "https://127.0.0.1:8006", "PVE_API_TOKEN": "u@pam!t=s"}, carried
        )
        pve = PveSettings.from_config(config)
        assert pve.full_clone("2vcpu_4gb_16gb")
        assert not pve.full_clone("1vcpu_1gb_8gb")
        assert (
            provider_config({"PVE_FULL_CLONE_PRESETS": ""}, carried)["PVE_FULL_CLONE_PRESETS"] == ""
        )

        executor = MigrationExecutor(connection)
        executor.migrate(before)
        apps = executor.loader.project_state(before).apps
        ticked = apps.get_model("sandboxes", "Preset").objects.filter(full_clone=True)
        assert sorted(ticked.values_list("id", flat=True)) == ["2vcpu_4gb_16gb", "8vcpu_32gb_64gb"]
    finally:
        MigrationExecutor(connection).migrate(
            MigrationExecutor(connection).loader.graph.leaf_nodes()
        )


def test_a_bad_provider_settings_file_is_refused(tmp_path):
    from django.core.exceptions import ImproperlyConfigured

    from config.localfiles import provider_settings

    assert provider_settings(tmp_path / "missing.env") == {}
    (tmp_path / "bad.env").write_text("PVE_FULL_CLONE_PRESETS\n")
    with pytest.raises(ImproperlyConfigured, match="line 1: expected KEY=value"):
        provider_settings(tmp_path / "bad.env")


# --- every provider has its conformance harness and its docs page ---------------------------

#: Providers documented together on one page (docs/providers/<page>.md).
FAMILY_PAGES = {"pve-lxc": "pve", "pve-vm": "pve"}


def missing_pieces(name: str) -> list[str]:
    """What a provider lacks of what every provider has: '' when complete."""
    from tests.conformance.harnesses import HARNESSES

    missing = []
    if name not in HARNESSES:
        missing.append(
            f"a conformance harness in tests/conformance/harnesses.py HARNESSES[{name!r}]"
        )
    page = f"docs/providers/{FAMILY_PAGES.get(name, name)}.md"
    if not (ROOT / page).is_file():
        missing.append(f"a docs page {page}")
    elif page not in (ROOT / "README.md").read_text():
        missing.append(f"a link to {page} in README.md")
    return missing


@pytest.mark.parametrize("name", list(BUILTIN_PROVIDERS))
def test_every_registered_provider_has_a_conformance_harness_and_a_docs_page(name):
    assert missing_pieces(name) == [], f"provider {name} needs: {missing_pieces(name)}"


def test_a_provider_without_them_is_caught():
    assert missing_pieces("nosuch-cloud") == [
        "a conformance harness in tests/conformance/harnesses.py HARNESSES['nosuch-cloud']",
        "a docs page docs/providers/nosuch-cloud.md",
    ]


def test_a_provider_whose_sdk_is_missing_is_named_and_costs_nothing_else(monkeypatch):
    """Reading the keys imports every known provider's module; one whose SDK is not
    installed contributes no keys and is not switched on by itself, and naming it says
    why, while every other provider works as before."""
    from providers import registry

    def missing_sdk():
        raise ModuleNotFoundError("No module named 'nosuchsdk'")

    monkeypatch.setitem(registry.BUILTIN_PROVIDERS, "nosdk", "tests.nosuchmodule:Nope")
    register_provider("seamtest", lambda: SeamProvider)
    try:
        keys = config_keys()
        assert "SEAMTEST_TOKEN" in keys
        assert "LOCAL_SANDBOX_ROOT" in keys
        assert "nosdk" not in registry.enabled_provider_names({})
        with pytest.raises(registry.ProviderConfigError, match="provider nosdk: No module"):
            build_providers({"SANDBOX_PROVIDERS": "nosdk"})
        register_provider("brokensdk", missing_sdk)
        assert "SEAMTEST_TOKEN" in config_keys()
    finally:
        unregister_provider("seamtest")
        unregister_provider("brokensdk")


def test_every_builtin_providers_keys_are_read_without_its_sdk():
    """The registry imports every provider's module at start to read its config_keys:
    with the SDKs not installed (blocked here, in a fresh process), every one still says
    them (SDKs are imported where they are used)."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'morphcloud', 'docker', 'proxmoxer', 'boto3',"
        " 'botocore', 'paramiko'}:\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from providers.registry import BUILTIN_PROVIDERS, config_keys, provider_class\n"
        "keys = set(config_keys())\n"
        "for name in BUILTIN_PROVIDERS:\n"
        "    assert set(provider_class(name).config_keys) <= keys, name\n"
        "    print(name)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == list(BUILTIN_PROVIDERS)
