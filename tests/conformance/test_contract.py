"""The provider contract (``providers/base.py``), checked against every provider.

Each test runs once per entry in ``harnesses.HARNESSES`` (the fixtures are in
conftest.py). A provider that lacks a capability must say so in ``capabilities`` and
raise ``Unsupported`` when asked anyway; the tests check exactly that instead of skipping.
"""

from __future__ import annotations

import pytest

from providers.base import (
    META_POOL,
    META_SANDBOX_ID,
    Capabilities,
    ExecResult,
    InstanceStatus,
)
from providers.errors import Conflict, NotFound, Unsupported
from tests.conformance.harnesses import ProviderUnderTest


def caps(pt: ProviderUnderTest) -> Capabilities:
    return pt.provider.capabilities


def test_capabilities_are_data_with_reasons(pt):
    capabilities = caps(pt)
    assert set(capabilities.as_dict()) >= {
        "supports_pause",
        "supports_hibernate",
        "supports_snapshots",
        "supports_exec",
        "supports_expose_http",
        "supports_wake_on",
        "supports_ssh",
        "supports_resize",
    }
    for name, supported in capabilities.as_dict().items():
        assert isinstance(supported, bool)
        assert bool(capabilities.reason(name)) != supported, name
    assert capabilities.supports_exec, "every provider must offer exec"


def test_size_limits_are_data_and_offer_the_suites_size(pt):
    """Declared limits (None: none) are whole numbers the conformance size fits in: the
    service layer offers every preset within them (services.backends.preset_refusal)."""
    capabilities = caps(pt)
    for limit in (capabilities.max_vcpus, capabilities.max_memory_mb, capabilities.max_disk_gb):
        assert limit is None or (isinstance(limit, int) and limit > 0)
    vcpus, memory_mb, disk_gb = pt.size
    assert capabilities.size_refusal(vcpus=vcpus, memory_mb=memory_mb, disk_gb=disk_gb) == ""
    if capabilities.max_vcpus is not None:
        too_many = capabilities.size_refusal(
            vcpus=capabilities.max_vcpus + 1, memory_mb=memory_mb, disk_gb=disk_gb
        )
        assert f"(at most {capabilities.max_vcpus})" in too_many


def test_create_start_get_and_list(pt):
    spec = pt.spec()
    instance = pt.create(spec)
    assert instance.id
    assert instance.metadata[META_SANDBOX_ID] == spec.sandbox_id
    instance.start()
    fetched = pt.provider.get(instance.id)
    assert fetched.id == instance.id
    assert fetched.status == InstanceStatus.RUNNING
    assert fetched.metadata == pt.metadata(spec)
    listed = {i.id: i for i in pt.provider.list()}
    assert instance.id in listed
    assert listed[instance.id].metadata[META_SANDBOX_ID] == spec.sandbox_id


def test_relabel_hands_a_pool_member_to_a_sandbox(pt):
    """A warm pool's member (docs/pools.md) carries its own id and ``pool``; a claim
    relabels it, and from then on ``get`` and ``list`` say whose it is."""
    spec = pt.spec()
    instance = pt.provider.create(spec, pt.snapshot_ref, {**pt.metadata(spec), META_POOL: "7"})
    pt.made.append(instance)
    instance.start()
    assert pt.provider.get(instance.id).metadata[META_POOL] == "7"
    claimed = pt.metadata(pt.spec())  # another sandbox id
    pt.provider.get(instance.id).relabel(claimed)
    fetched = pt.provider.get(instance.id)
    assert fetched.metadata == claimed
    assert fetched.status == InstanceStatus.RUNNING
    listed = {i.id: i for i in pt.provider.list()}
    assert listed[instance.id].metadata == claimed
    if not pt.no_exec:  # where commands do not really run, an exit code proves nothing
        assert fetched.exec("true", timeout=30).exit_code == 0


def test_create_is_idempotent_per_sandbox_id(pt):
    spec = pt.spec()
    first = pt.create(spec)
    second = pt.create(spec)
    assert second.id == first.id
    mine = [i for i in pt.provider.list() if i.metadata.get(META_SANDBOX_ID) == spec.sandbox_id]
    assert len(mine) == 1


def test_start_and_stop_are_idempotent(pt):
    instance = pt.running()
    instance.start()
    assert pt.provider.get(instance.id).status == InstanceStatus.RUNNING
    instance.stop()
    instance.stop()
    assert pt.provider.get(instance.id).status == InstanceStatus.STOPPED


def test_exec_returns_exit_code_stdout_and_stderr(pt):
    pt.needs_exec()
    instance = pt.running()
    result = instance.exec("echo out; echo err >&2; exit 3", timeout=30)
    assert isinstance(result, ExecResult)
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not result.timed_out
    argv = instance.exec(["printf", "%s|", "a b", "c"], timeout=30)
    assert (argv.exit_code, argv.stdout) == (0, "a b|c|")


def test_exec_passes_variables_to_the_command_and_refuses_bad_names(pt):
    pt.needs_exec()
    """How a team's secrets reach a command: as its environment, values kept exact."""
    instance = pt.running()
    value = "s3cr3t with spaces, 'quotes' and $dollars"
    result = instance.exec('printf %s "$API_KEY"', timeout=30, env={"API_KEY": value})
    assert (result.exit_code, result.stdout) == (0, value)
    assert instance.exec('printf %s "$API_KEY"', timeout=30).stdout == ""  # not kept
    for bad in ({"1X": "v"}, {"A=B": "v"}, {"X": "nul\0"}):
        with pytest.raises(ValueError, match="not an environment variable name"):
            instance.exec("true", timeout=10, env=bad)


def test_exec_timeout_kills_the_command_not_the_instance(pt):
    pt.needs_exec()
    instance = pt.running()
    result = instance.exec("sleep 30", timeout=1)
    assert result.timed_out
    assert result.exit_code != 0
    assert instance.exec("echo alive", timeout=30).stdout == "alive\n"


def test_exec_on_a_stopped_instance_is_a_conflict(pt):
    instance = pt.running()
    instance.stop()
    with pytest.raises(Conflict):
        instance.exec("true", timeout=10)


def test_files_survive_stop_and_start(pt):
    pt.needs_exec()
    instance = pt.running()
    assert instance.exec("echo kept > conformance.txt", timeout=30).exit_code == 0
    instance.stop()
    instance.start()
    assert instance.exec("cat conformance.txt", timeout=30).stdout == "kept\n"


def test_pause_and_resume_or_unsupported(pt):
    instance = pt.running()
    if not caps(pt).supports_pause:
        with pytest.raises(Unsupported) as raised:
            instance.pause()
        assert raised.value.capability == "supports_pause"
        return
    pt.needs_exec()
    instance.exec("echo before > paused.txt", timeout=30)
    instance.pause()
    assert pt.provider.get(instance.id).status == InstanceStatus.PAUSED
    with pytest.raises(Conflict):
        instance.exec("true", timeout=10)
    instance.resume()
    assert pt.provider.get(instance.id).status == InstanceStatus.RUNNING
    assert instance.exec("cat paused.txt", timeout=30).stdout == "before\n"


def test_hibernate_or_unsupported(pt):
    instance = pt.running()
    if not caps(pt).supports_hibernate:
        with pytest.raises(Unsupported) as raised:
            instance.hibernate()
        assert raised.value.capability == "supports_hibernate"
        return
    pt.needs_exec()
    instance.exec("echo before > hibernated.txt", timeout=30)
    instance.hibernate()
    assert pt.provider.get(instance.id).status == InstanceStatus.HIBERNATED
    instance.resume()
    assert pt.provider.get(instance.id).status == InstanceStatus.RUNNING
    assert instance.exec("cat hibernated.txt", timeout=30).stdout == "before\n"


def test_expose_and_hide_http_service_or_unsupported(pt):
    instance = pt.running()
    if not caps(pt).supports_expose_http:
        with pytest.raises(Unsupported):
            instance.expose_http_service("web", 8080)
        return
    url = instance.expose_http_service("web", 8080)
    assert url.startswith(("http://", "https://", "http+unix://"))  # see HttpService
    services = pt.provider.get(instance.id).networking.http_services
    assert [(s.name, s.port, s.url) for s in services] == [("web", 8080, url)]
    instance.hide_http_service("web")
    assert pt.provider.get(instance.id).networking.http_services == ()


def test_wake_on_or_unsupported(pt):
    instance = pt.running()
    if not caps(pt).supports_wake_on:
        with pytest.raises(Unsupported):
            instance.set_wake_on(True, False)
        return
    instance.set_wake_on(True, False)
    instance.set_wake_on(False, False)


def test_snapshot_makes_a_version_that_keeps_files(pt):
    instance = pt.running()
    if not caps(pt).supports_snapshots:
        with pytest.raises(Unsupported):
            instance.snapshot()
        return
    pt.needs_exec()
    instance.exec("echo from-snapshot > snap.txt", timeout=30)
    made = instance.snapshot()
    assert made.ref
    assert pt.provider.get(instance.id).status == InstanceStatus.RUNNING
    child = pt.create(pt.spec(), snapshot_ref=made.ref)
    child.start()
    assert child.exec("cat snap.txt", timeout=30).stdout == "from-snapshot\n"
    with pytest.raises(Conflict):
        pt.provider.delete_snapshot(made.ref)  # a sandbox still stands on it
    child.delete()
    instance.delete()
    pt.provider.delete_snapshot(made.ref)
    with pytest.raises(NotFound):
        pt.provider.create(pt.spec(), made.ref, pt.metadata(pt.spec()))


def test_delete_removes_the_instance_and_is_idempotent(pt):
    instance = pt.running()
    instance.delete()
    with pytest.raises(NotFound):
        pt.provider.get(instance.id)
    assert instance.id not in {i.id for i in pt.provider.list()}
    instance.delete()
    with pytest.raises(NotFound):
        instance.exec("true", timeout=10)


def test_create_from_a_missing_snapshot_is_not_found(pt):
    with pytest.raises(NotFound):
        pt.provider.create(pt.spec(), pt.missing_snapshot_ref, pt.metadata(pt.spec()))


def test_health_reports_reachable_with_latency(pt):
    health = pt.provider.health()
    assert health.reachable
    assert health.latency_ms is not None
    assert health.latency_ms >= 0


def test_stop_and_delete_work_from_paused(pt):
    if not caps(pt).supports_pause:
        return  # covered by test_pause_and_resume_or_unsupported
    pt.needs_exec()
    instance = pt.running()
    instance.exec("echo kept > paused-stop.txt", timeout=30)
    instance.pause()
    instance.stop()
    assert pt.provider.get(instance.id).status == InstanceStatus.STOPPED
    instance.start()
    assert instance.exec("cat paused-stop.txt", timeout=30).stdout == "kept\n"
    instance.pause()
    instance.delete()
    with pytest.raises(NotFound):
        pt.provider.get(instance.id)


def test_list_reports_each_instance_once_with_its_status(pt):
    first, second = pt.running(), pt.running()
    second.stop()
    listed = [i for i in pt.provider.list() if i.id in (first.id, second.id)]
    assert sorted((i.id, i.status) for i in listed) == sorted(
        [(first.id, InstanceStatus.RUNNING), (second.id, InstanceStatus.STOPPED)]
    )
