"""PVE provider behaviour beyond the shared contract, against the simulator over HTTPS."""

from __future__ import annotations

import json
import time

import pytest
import requests

from providers.base import META_SANDBOX_ID, InstanceSpec, InstanceStatus
from providers.errors import Conflict, NotFound, OperationFailed, QuotaExceeded, Unsupported
from providers.pve import PveLxcProvider, PveVmProvider
from providers.pve.agent import AgentServer, sign
from providers.pve.settings import PveSettings
from tests.pve_sim.harness import require_for
from tests.pve_sim.server import DROP_AFTER, EXISTS, LOCKED, SLOW, TASK_FAIL, PveSimulator

GiB = 1024**3


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    require_for("pve-vm")
    simulator = PveSimulator(tmp_path_factory.mktemp("pve"), task_delay=0.02)
    simulator.default_cluster()
    simulator.cluster.add_template(9200, "lxc", "pve2", storage="ceph", name="on-ceph")
    simulator.start()
    yield simulator
    simulator.close()


@pytest.fixture
def lxc(sim):
    sim.clear_faults()
    provider = PveLxcProvider.from_config(sim.config(PVE_LOCK_WAIT="2"))
    yield provider
    for instance in provider.list():
        instance.delete()


def spec(sandbox_id: str, **overrides) -> InstanceSpec:
    values = {"sandbox_id": sandbox_id, "preset_id": "1vcpu_1gb_8gb", "vcpus": 1}
    values |= {"memory_mb": 1024, "disk_gb": 8}
    values |= overrides
    return InstanceSpec(**values)


def meta(sandbox_id: str) -> dict[str, str]:
    return {
        "sandbox_id": sandbox_id,
        "team": "acme",
        "preset": "1vcpu_1gb_8gb",
        "snapshot_id": "pvelxc_1vcpu_1gb_8gb_v1",
    }


def ours(sim) -> list:
    sim.cluster.settle()
    return [g for g in sim.guests() if g.owner != "foreign"]


# --- settings -----------------------------------------------------------------------------


def test_settings_are_checked_and_never_show_the_secret(tmp_path):
    base = {"PVE_API_URL": "https://pve.example.org:8006", "PVE_API_TOKEN": "a@pam!t=s3cr3t"}
    settings = PveSettings.from_config(base)
    assert (settings.host, settings.user, settings.token_name) == (
        "pve.example.org:8006",
        "a@pam",
        "t",
    )
    assert "s3cr3t" not in repr(settings)
    assert "s3cr3t" not in repr(PveLxcProvider(settings))
    assert "s3cr3t" not in repr(PveLxcProvider(settings).client)
    bad = [
        ({"PVE_API_TOKEN": "a@pam:s3cr3t"}, "PVE_API_TOKEN must look like"),
        ({"PVE_API_URL": "http://pve:8006"}, "https://"),
        ({"PVE_VMID_RANGE": "300-200"}, "PVE_VMID_RANGE"),
        ({"PVE_VERIFY_TLS": str(tmp_path / "missing.pem")}, "PVE_VERIFY_TLS"),
        ({"PVE_PUBLIC_DOMAIN": "not a domain"}, "PVE_PUBLIC_DOMAIN"),
        ({"PVE_HTTP_TIMEOUT": "fast"}, "PVE_HTTP_TIMEOUT"),
    ]
    for override, message in bad:
        with pytest.raises(ValueError, match=message) as raised:
            PveSettings.from_config(base | override)
        assert "s3cr3t" not in str(raised.value)
    assert PveLxcProvider.configured(base)
    assert not PveVmProvider.configured({"PVE_API_URL": base["PVE_API_URL"]})


def test_a_wrong_token_is_a_readable_error_without_the_secret(sim):
    config = sim.config(PVE_API_TOKEN="root@pam!sandboxes=not-the-secret")
    provider = PveLxcProvider.from_config(config)
    with pytest.raises(OperationFailed, match="PVE_API_TOKEN") as raised:
        provider.list()
    assert "not-the-secret" not in str(raised.value)
    assert not provider.health().reachable


# --- create ---------------------------------------------------------------------------------


def test_create_writes_metadata_size_and_a_secret_then_list_finds_it(sim, lxc):
    instance = lxc.create(spec("sbx-meta1"), "9000", meta("sbx-meta1"))
    guest = sim.cluster.guests[int(instance.id)]
    assert guest.node == "pve1"  # a linked clone stays with its template
    assert guest.base == 9000
    assert lxc.settings.vmid_range[0] <= guest.vmid <= lxc.settings.vmid_range[1]
    assert guest.config["cores"] == "1"
    assert guest.config["memory"] == "1024"
    assert guest.config["rootfs"].endswith("size=8G")  # grown to the preset's disk
    assert guest.config["tags"] == "sandboxes;sbx-meta1;team-acme"
    assert guest.config["hostname"] == "sbx-meta1"
    assert "sandboxes:v1" in guest.config["description"]
    assert guest.config["env"].startswith("SANDBOX_AGENT_SECRET=")
    listed = {i.id: i for i in lxc.list()}
    assert listed[instance.id].metadata == meta("sbx-meta1")
    assert listed[instance.id].status == InstanceStatus.STOPPED


def test_a_lost_description_is_rebuilt_from_tags(sim, lxc):
    instance = lxc.create(spec("sbx-edited"), "9000", meta("sbx-edited"))
    sim.cluster.guests[int(instance.id)].config["description"] = "someone edited this in the UI"
    found = [i for i in lxc.list() if i.id == instance.id]
    assert found
    assert found[0].metadata[META_SANDBOX_ID] == "sbx-edited"


def test_lock_errors_are_retried(sim, lxc):
    sim.add_fault("PUT", "/nodes/{node}/lxc/{vmid}/config", LOCKED, times=2)
    instance = lxc.create(spec("sbx-locks"), "9000", meta("sbx-locks"))
    assert sim.faults[0].fired == 2
    assert lxc.get(instance.id).metadata[META_SANDBOX_ID] == "sbx-locks"


def test_a_vmid_taken_meanwhile_is_skipped(sim, lxc):
    sim.add_fault("POST", "/nodes/{node}/lxc/{vmid}/clone", EXISTS, times=1)
    instance = lxc.create(spec("sbx-taken"), "9000", meta("sbx-taken"))
    taken = [g for g in sim.guests() if g.owner == "foreign"]
    assert len(taken) == 1
    assert str(taken[0].vmid) != instance.id
    assert instance.metadata[META_SANDBOX_ID] == "sbx-taken"
    sim.cluster.remove(taken[0])


def test_a_slow_clone_is_waited_for(sim, lxc):
    sim.add_fault("POST", "/nodes/{node}/lxc/{vmid}/clone", SLOW, delay=1.5)
    instance = lxc.create(spec("sbx-slow"), "9000", meta("sbx-slow"))
    assert "lock" not in sim.cluster.guests[int(instance.id)].config


def test_a_failed_clone_task_says_why_and_leaves_nothing(sim, lxc):
    sim.add_fault("POST", "/nodes/{node}/lxc/{vmid}/clone", TASK_FAIL, message="storage full")
    before = set(lxc.vmids.store.keys(lxc.vmids.namespace))
    with pytest.raises(OperationFailed, match="storage full"):
        lxc.create(spec("sbx-fail"), "9000", meta("sbx-fail"))
    assert ours(sim) == []
    assert set(lxc.vmids.store.keys(lxc.vmids.namespace)) == before


def test_a_lost_clone_answer_is_rolled_back(sim, lxc):
    sim.add_fault("POST", "/nodes/{node}/lxc/{vmid}/clone", DROP_AFTER)
    with pytest.raises(Exception, match="connection"):
        lxc.create(spec("sbx-lost"), "9000", meta("sbx-lost"))
    assert ours(sim) == []


def test_create_from_something_that_is_not_a_template(sim, lxc):
    instance = lxc.create(spec("sbx-src"), "9000", meta("sbx-src"))
    with pytest.raises(NotFound, match="not a template"):
        lxc.create(spec("sbx-x"), instance.id, meta("sbx-x"))
    with pytest.raises(NotFound, match="not for pve-lxc"):
        lxc.create(spec("sbx-x"), "9100", meta("sbx-x"))


# --- placement --------------------------------------------------------------------------------


def test_full_clones_from_shared_storage_go_to_the_node_with_most_free_memory(sim):
    """PVE_FULL_CLONE_PRESETS names the presets made as full clones (a PVE setting)."""
    lxc = PveLxcProvider.from_config(
        sim.config(PVE_LOCK_WAIT="2", PVE_FULL_CLONE_PRESETS="2vcpu_2gb_8gb, 1vcpu_1gb_8gb")
    )
    sim.cluster.nodes["pve1"].maxmem = 16 * GiB
    try:
        instance = lxc.create(spec("sbx-full"), "9200", meta("sbx-full"))
        guest = sim.cluster.guests[int(instance.id)]
        assert guest.node == "pve2"  # pve2 has 64 GiB, pve1 16 GiB, pve3 8 GiB
        assert guest.base is None
        assert ":vm-" in guest.config["rootfs"]
        sim.cluster.nodes["pve2"].maxmem = 4 * GiB
        moved = lxc.create(spec("sbx-full2"), "9200", meta("sbx-full2"))
        assert sim.cluster.guests[int(moved.id)].node == "pve1"
        # Another preset is a linked clone: it stays with its template on pve2 and
        # shares the template's base volume.
        linked = lxc.create(
            spec("sbx-linked", preset_id="2vcpu_4gb_16gb"), "9200", meta("sbx-linked")
        )
        assert sim.cluster.guests[int(linked.id)].node == "pve2"
        assert sim.cluster.guests[int(linked.id)].base is not None
    finally:
        sim.cluster.nodes["pve1"].maxmem = sim.cluster.nodes["pve2"].maxmem = 64 * GiB
        for made in lxc.list():
            made.delete()


def test_full_clone_presets_must_be_preset_ids(sim):
    with pytest.raises(ValueError, match="PVE_FULL_CLONE_PRESETS"):
        PveLxcProvider.from_config(sim.config(PVE_FULL_CLONE_PRESETS="big"))


def test_no_node_with_room_is_a_quota_error(sim, lxc):
    with pytest.raises(QuotaExceeded, match="MiB of memory free"):
        lxc.create(spec("sbx-huge", memory_mb=500_000), "9000", meta("sbx-huge"))
    assert ours(sim) == []


def test_pinned_node_that_cannot_hold_a_linked_clone(sim):
    provider = PveLxcProvider.from_config(sim.config(PVE_NODE="pve3"))
    with pytest.raises(OperationFailed, match="PVE_NODE is pve3"):
        provider.create(spec("sbx-pin"), "9000", meta("sbx-pin"))


# --- running guests ------------------------------------------------------------------------------


def test_services_use_the_public_domain_and_survive_in_the_description(sim):
    provider = PveLxcProvider.from_config(sim.config(PVE_PUBLIC_DOMAIN="sbx.example.org"))
    instance = provider.create(spec("sbx-web"), "9000", meta("sbx-web"))
    try:
        url = instance.expose_http_service("web", 8080)
        assert url == "https://port-8080-sbx-web.sbx.example.org"
        again = provider.get(instance.id)
        assert [(s.name, s.port, s.url) for s in again.networking.http_services] == [
            ("web", 8080, url)
        ]
        assert again.metadata == meta("sbx-web")
    finally:
        instance.delete()


def test_delete_snapshot_names_the_linked_clones_that_stand_on_it(sim, lxc):
    parent = lxc.create(spec("sbx-parent"), "9000", meta("sbx-parent"))
    parent.start()
    made = lxc.get(parent.id).snapshot()
    child = lxc.create(spec("sbx-child"), made.ref, meta("sbx-child"))
    with pytest.raises(Conflict, match="sbx-child"):
        lxc.delete_snapshot(made.ref)
    with pytest.raises(Conflict, match="not a CT template"):
        lxc.delete_snapshot(parent.id)
    assert made.size_bytes == 8 * GiB
    child.delete()
    lxc.delete_snapshot(made.ref)
    assert int(made.ref) not in sim.cluster.guests


def test_a_failed_snapshot_never_destroys_a_guest_that_took_its_vmid(sim, lxc):
    instance = lxc.create(spec("sbx-snapx"), "9000", meta("sbx-snapx"))
    sim.add_fault(
        "POST",
        "/nodes/{node}/lxc/{vmid}/clone",
        EXISTS,
        where=lambda call: "snapname" in call.params,
    )
    with pytest.raises(Conflict, match="already exists"):
        lxc.get(instance.id).snapshot()
    foreign = [g for g in sim.guests() if g.owner == "foreign"]
    assert len(foreign) == 1  # someone else's guest on that VMID is left alone
    sim.cluster.remove(foreign[0])
    assert sim.cluster.guests[int(instance.id)].snapshots == {}


def test_pause_is_unsupported_for_containers_unless_switched_on(sim, lxc):
    assert not lxc.capabilities.supports_pause
    assert "PVE_LXC_SUSPEND" in lxc.capabilities.reason("supports_pause")
    instance = lxc.create(spec("sbx-nopause"), "9000", meta("sbx-nopause"))
    with pytest.raises(Unsupported):
        instance.pause()
    on = PveLxcProvider.from_config(sim.config(PVE_LXC_SUSPEND="1"))
    assert on.capabilities.supports_pause
    paused = on.create(spec("sbx-criu"), "9000", meta("sbx-criu"))
    paused.start()
    paused.pause()
    assert on.get(paused.id).status == InstanceStatus.PAUSED
    with pytest.raises(Conflict):
        paused.exec("true", timeout=5)
    paused.resume()
    assert paused.exec("echo back", timeout=5).stdout == "back\n"
    paused.pause()
    paused.delete()  # a suspended CT is woken, stopped and destroyed
    assert int(paused.id) not in sim.cluster.guests


def test_vm_hibernate_keeps_state_in_pve_and_health_and_metrics(sim):
    vm = PveVmProvider.from_config(sim.config())
    instance = vm.create(spec("sbx-vm1"), "9100", meta("sbx-vm1"))
    try:
        instance.start()
        instance.hibernate()
        guest = sim.cluster.guests[int(instance.id)]
        assert guest.config["lock"] == "suspended"
        assert guest.status == "stopped"
        assert vm.get(instance.id).status == InstanceStatus.HIBERNATED
        instance.resume()
        assert vm.get(instance.id).status == InstanceStatus.RUNNING
        samples = instance.metrics()
        assert samples
        assert samples[-1].memory_bytes == GiB // 4
        assert samples[-1].cpu_fraction == pytest.approx(0.1)
        health = vm.health()
        assert health.reachable
        assert "9.2" in health.detail
    finally:
        instance.delete()
    assert ours(sim) == []


# --- the LXC exec agent ---------------------------------------------------------------------


def test_the_agent_refuses_bad_signatures_and_replays(tmp_path):
    server = AgentServer("127.0.0.1", 0, secret="right", workdir=tmp_path).start(0.02)
    try:
        host, port = server.address[:2]
        body = json.dumps({"argv": ["echo", "hi"], "timeout": 5}).encode()

        def post(secret: str, nonce: str) -> requests.Response:
            stamp = f"{time.time():.3f}"
            headers = {
                "X-Sandbox-Time": stamp,
                "X-Sandbox-Nonce": nonce,
                "X-Sandbox-Signature": sign(secret, "POST", "/v1/exec", stamp, nonce, body),
            }
            return requests.post(
                f"http://{host}:{port}/v1/exec", data=body, headers=headers, timeout=10
            )

        assert post("wrong", "nonce-0001").status_code == 401
        good = post("right", "nonce-0002")
        assert good.status_code == 200
        assert good.json()["exit_code"] == 0
        expected = sign("right", "response", "nonce-0002", good.content)
        assert good.headers["X-Sandbox-Signature"] == expected
        assert post("right", "nonce-0002").status_code == 401  # replayed
    finally:
        server.close()
