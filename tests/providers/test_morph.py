"""The Morph provider beyond the shared contract, through the real SDK and the fake API."""

from __future__ import annotations

import logging

import pytest

from providers.base import InstanceSpec, InstanceStatus
from providers.errors import NotFound, OperationFailed, ProviderError, Unavailable
from providers.morph import MorphProvider
from providers.registry import ProviderConfigError, build_providers
from tests.morph_fake import FakeMorph

KEY = "morph-test-key-7f3a9c"


@pytest.fixture
def fake():
    server = FakeMorph(KEY).start()
    yield server
    server.stop()


@pytest.fixture
def provider(fake):
    return MorphProvider(KEY, fake.base_url, poll_interval=0.01)


def spec(sandbox_id: str = "sbx-morph0001", **overrides) -> InstanceSpec:
    values = {"sandbox_id": sandbox_id, "preset_id": "2vcpu_4gb_16gb", "vcpus": 2}
    values.update({"memory_mb": 4096, "disk_gb": 16}, **overrides)
    return InstanceSpec(**values)


def marker(sandbox_id: str = "sbx-morph0001") -> dict[str, str]:
    return {
        "sandbox_id": sandbox_id,
        "team": "acme",
        "preset": "2vcpu_4gb_16gb",
        "snapshot_id": "morph_2vcpu_4gb_16gb_v1",
    }


def started(provider, fake, sandbox_id: str = "sbx-morph0001"):
    instance = provider.create(spec(sandbox_id), fake.state.BASE_SNAPSHOT, marker(sandbox_id))
    instance.start()
    return instance


def test_settings_switch_it_on_and_are_checked():
    assert MorphProvider.configured({"MORPH_API_KEY": "k"})
    assert not MorphProvider.configured({"MORPH_API_KEY": " "})
    assert not MorphProvider.configured({})
    built = build_providers({"SANDBOX_PROVIDERS": "morph", "MORPH_API_KEY": "k"})
    assert built["morph"].base_url == "https://cloud.morph.so/api"
    with pytest.raises(ProviderConfigError, match="MORPH_API_KEY"):
        build_providers({"SANDBOX_PROVIDERS": "morph"})
    with pytest.raises(ProviderConfigError, match="MORPH_BASE_URL"):
        build_providers({"SANDBOX_PROVIDERS": "morph", "MORPH_API_KEY": "k", "MORPH_BASE_URL": "x"})
    with pytest.raises(ProviderConfigError, match="MORPH_BOOT_TIMEOUT"):
        build_providers(
            {"SANDBOX_PROVIDERS": "morph", "MORPH_API_KEY": "k", "MORPH_BOOT_TIMEOUT": "-1"}
        )


def test_boot_uses_the_preset_size_and_carries_the_marker(provider, fake):
    instance = started(provider, fake)
    booted = fake.state.instances[instance.id]
    assert booted.spec == {"vcpus": 2, "memory": 4096, "disk_size": 16 * 1024}
    assert booted.snapshot_id == fake.state.BASE_SNAPSHOT
    assert booted.metadata == marker()
    assert [i.id for i in provider.list()] == [instance.id]


def test_instances_without_our_marker_are_not_listed(provider, fake):
    provider.client.instances.boot(fake.state.BASE_SNAPSHOT, metadata={"owner": "someone"})
    assert provider.list() == []


def test_the_api_key_never_shows_in_errors_logs_or_repr(fake, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = MorphProvider("not-" + KEY, fake.base_url, poll_interval=0.01)
    with pytest.raises(OperationFailed, match="MORPH_API_KEY") as refused:
        wrong.create(spec(), fake.state.BASE_SNAPSHOT, marker())
    right = MorphProvider(KEY, fake.base_url, poll_interval=0.01)
    fake.fail("POST /snapshot/{id}/boot", status=500, detail=f"backend said {KEY}")
    with pytest.raises(Unavailable) as echoed:
        right.create(spec(), fake.state.BASE_SNAPSHOT, marker())
    assert "[redacted]" in str(echoed.value)
    instance = started(right, fake, "sbx-morph0002")
    texts = [str(refused.value), str(echoed.value), repr(right), repr(wrong), repr(instance)]
    texts += [record.getMessage() for record in caplog.records]
    assert echoed.value.__cause__ is None
    assert echoed.value.__context__ is not None
    for text in texts:
        assert KEY not in text


def test_stop_pauses_reads_stopped_and_parks_wake_on(provider, fake):
    instance = started(provider, fake)
    instance.set_wake_on(True, True)
    instance.stop()
    raw = fake.state.instances[instance.id]
    assert raw.status == "paused"
    assert raw.wake_on == {"wake_on_ssh": False, "wake_on_http": False}
    stopped = provider.get(instance.id)
    assert stopped.status == InstanceStatus.STOPPED
    assert stopped.metadata == marker()  # our bookkeeping keys stay hidden
    stopped.set_wake_on(True, False)  # remembered for the next start, not applied
    assert raw.wake_on == {"wake_on_ssh": False, "wake_on_http": False}
    stopped.start()
    assert raw.status == "ready"
    assert raw.wake_on == {"wake_on_ssh": False, "wake_on_http": True}
    assert provider.get(instance.id).status == InstanceStatus.RUNNING
    instance.pause()
    assert provider.get(instance.id).status == InstanceStatus.PAUSED


def test_a_stop_that_fails_keeps_the_wake_on_flags(provider, fake):
    instance = started(provider, fake)
    instance.set_wake_on(True, False)
    raw = fake.state.instances[instance.id]
    for _ in range(2):  # a failed stop, and its retry failing too
        fake.fail("POST /instance/{id}/pause", status=500)
        with pytest.raises(ProviderError):
            instance.stop()
        assert provider.get(instance.id).status == InstanceStatus.RUNNING
    provider.get(instance.id).start()  # running: start only puts the flags back
    assert raw.wake_on == {"wake_on_ssh": False, "wake_on_http": True}
    fake.fail("POST /instance/{id}/pause", status=500)
    with pytest.raises(ProviderError):
        instance.stop()
    paused = provider.get(instance.id)
    paused.pause()  # a pause after a failed stop wakes on HTTP as before
    assert provider.get(instance.id).status == InstanceStatus.PAUSED
    assert raw.wake_on == {"wake_on_ssh": False, "wake_on_http": True}


def test_ttl_is_kept_by_morph_and_applies_its_action(provider, fake):
    instance = started(provider, fake)
    instance.set_ttl(60, "pause")
    assert fake.state.instances[instance.id].ttl["ttl_action"] == "pause"
    fake.state.clock_offset = 61
    assert provider.get(instance.id).status == InstanceStatus.PAUSED
    instance.set_ttl(None)
    with pytest.raises(ValueError, match="greater than zero"):
        instance.set_ttl(0)


def test_an_instance_that_fails_to_boot_is_removed(provider, fake):
    fake.state.boot_outcome = "error"
    with pytest.raises(OperationFailed, match="error"):
        provider.create(spec(), fake.state.BASE_SNAPSHOT, marker())
    assert fake.state.instances == {}


def test_a_lost_boot_answer_is_cleaned_up(provider, fake):
    fake.fail("POST /snapshot/{id}/boot", status=502, after=True)
    with pytest.raises(Unavailable):
        provider.create(spec(), fake.state.BASE_SNAPSHOT, marker())
    assert fake.state.instances == {}


def test_a_failed_snapshot_is_deleted(provider, fake):
    instance = started(provider, fake)
    fake.state.snapshot_outcome = "failed"
    with pytest.raises(OperationFailed, match="failed"):
        instance.snapshot()
    assert set(fake.state.snapshots) == {fake.state.BASE_SNAPSHOT}
    assert provider.get(instance.id).status == InstanceStatus.RUNNING


def test_a_snapshot_whose_answer_was_lost_is_deleted(provider, fake):
    instance = started(provider, fake)
    fake.fail("POST /instance/{id}/snapshot", status=502, after=True)
    with pytest.raises(Unavailable):
        instance.snapshot()
    assert set(fake.state.snapshots) == {fake.state.BASE_SNAPSHOT}
    made = instance.snapshot()  # earlier snapshots of the instance are kept
    fake.fail("POST /instance/{id}/snapshot", status=502, after=True)
    with pytest.raises(Unavailable):
        instance.snapshot()
    assert set(fake.state.snapshots) == {fake.state.BASE_SNAPSHOT, made.ref}


def test_exposed_services_come_back_from_morph(provider, fake):
    instance = started(provider, fake)
    url = instance.expose_http_service("web", 3000)
    assert url == f"https://web-{instance.id.replace('_', '-')}.http.cloud.morph.so"
    instance.hide_http_service("web")
    instance.hide_http_service("web")  # hiding twice is fine
    assert provider.get(instance.id).networking.http_services == ()


def test_exec_runs_in_the_home_directory_and_cuts_long_output(provider, fake):
    instance = started(provider, fake)
    assert instance.exec("pwd").stdout.strip() == str(fake.state.instances[instance.id].directory)
    big = instance.exec("head -c 1100000 /dev/zero | tr '\\0' x")
    assert big.stdout_truncated
    assert len(big.stdout) == 1024 * 1024


def test_ssh_info_names_the_instance(provider, fake):
    instance = started(provider, fake)
    info = instance.ssh_info()
    assert info.username == instance.id
    assert info.command.endswith(f"{instance.id}@{info.host}")


def test_health_says_unreachable_when_the_api_is_down(fake):
    assert MorphProvider(KEY, fake.base_url).health().reachable
    fake.stop()
    provider = MorphProvider(KEY, fake.base_url)  # no pooled connection to the old server
    health = provider.health()
    assert not health.reachable
    assert "cannot reach" in health.detail
    with pytest.raises(ProviderError):
        provider.get("morphvm_gone")


def test_a_missing_instance_is_not_found(provider):
    with pytest.raises(NotFound):
        provider.get("morphvm_missing")


def test_the_status_names_the_provider_compares_with_are_the_sdks():
    """The provider keeps Morph's status values itself (reading its config_keys must not
    need the SDK); they must stay the SDK's."""
    from morphcloud.api import InstanceStatus, SnapshotStatus

    from providers.morph.session import SdkSnapshotStatus, SdkStatus

    for ours, theirs in ((SdkStatus, InstanceStatus), (SdkSnapshotStatus, SnapshotStatus)):
        assert {m.name: m.value for m in theirs} == {
            k: v for k, v in vars(ours).items() if k.isupper()
        }
