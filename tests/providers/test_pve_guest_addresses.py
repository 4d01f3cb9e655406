"""A PVE guest reports its own address: only one the control plane may connect to is used.

These tests only choose addresses: nothing here connects to any of them (the proxy's
refusal at connect time is proven against loopback listeners in
tests/test_proxy_addresses.py).
"""

from __future__ import annotations

import pytest

from providers.addresses import AddressRule, parse_networks
from providers.errors import Conflict
from providers.pve import PveLxcProvider, PveVmProvider
from providers.pve.settings import LOOPBACK_GUESTS_KEY
from providers.registry import config_keys, provider_config
from tests.pve_sim.harness import require_for
from tests.pve_sim.server import PveSimulator

FORBIDDEN = [
    "0.0.0.0",
    "127.1.2.3",
    "169.254.1.1",
    "224.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "::ffff:127.0.0.1",
    "fe80::1",
    "ff02::1",
    "64:ff9b::7f00:1",
]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    require_for("pve-vm")
    simulator = PveSimulator(tmp_path_factory.mktemp("pve-addresses"), task_delay=0.01)
    simulator.default_cluster()
    simulator.start()
    yield simulator
    simulator.close()


def strict(sim: PveSimulator, cls=PveVmProvider, **settings: str):
    """A provider as production makes it: the simulator's loopback guests not allowed."""
    return cls.from_config({**sim.config(**settings), LOOPBACK_GUESTS_KEY: "0"})


def spec(sandbox_id: str):
    from providers.base import InstanceSpec

    return InstanceSpec(sandbox_id, "1vcpu_1gb_8gb", vcpus=1, memory_mb=1024, disk_gb=8)


def meta(sandbox_id: str) -> dict[str, str]:
    return {"sandbox_id": sandbox_id, "team": "acme", "preset": "1vcpu_1gb_8gb"}


@pytest.fixture(scope="module")
def vm(sim):
    provider = strict(sim)
    instance = provider.create(spec("sbx-addr-vm"), "9100", meta("sbx-addr-vm"))
    instance.start()
    yield sim.cluster.guests[int(instance.id)], provider, instance.id
    provider.get(instance.id).delete()


def expose(provider, ref: str) -> str:
    return provider.get(ref).expose_http_service("web", 8080)  # a fresh handle: no cache


@pytest.mark.parametrize("address", FORBIDDEN)
def test_a_vm_reporting_a_forbidden_address_gets_no_service_url(vm, address):
    guest, provider, ref = vm
    guest.reported = [address]
    try:
        with pytest.raises(Conflict) as caught:
            expose(provider, ref)
    finally:
        guest.reported = None
    assert "no address the control plane may connect to" in caught.value.message
    assert provider.get(ref).networking.http_services == ()


@pytest.mark.parametrize(
    ("reported", "url"),
    [
        (["10.20.30.40"], "http://10.20.30.40:8080"),
        (["127.0.0.1", "fe80::1", "192.168.7.9"], "http://192.168.7.9:8080"),
        (["fd00:20::5"], "http://[fd00:20::5]:8080"),
        (["::ffff:10.1.1.1"], "http://10.1.1.1:8080"),
    ],
)
def test_an_allowed_address_becomes_the_service_url(vm, reported, url):
    """Nothing connects to these: the URL is only written down."""
    guest, provider, ref = vm
    guest.reported = reported
    try:
        assert expose(provider, ref) == url
    finally:
        guest.reported = None
        provider.get(ref).hide_http_service("web")


def test_pve_guest_cidrs_narrows_what_is_accepted(sim, vm):
    guest, _, ref = vm
    narrow = strict(sim, PVE_GUEST_CIDRS="10.20.0.0/16, fd00:20::/64")
    guest.reported = ["10.99.0.1", "10.20.30.40"]
    try:
        assert expose(narrow, ref) == "http://10.20.30.40:8080"
        guest.reported = ["10.99.0.1", "192.168.1.1"]
        with pytest.raises(Conflict) as caught:
            expose(narrow, ref)
        assert "outside PVE_GUEST_CIDRS" in caught.value.message
    finally:
        guest.reported = None
        narrow.get(ref).hide_http_service("web")
    assert narrow.service_address_rule.networks == parse_networks("10.20.0.0/16,fd00:20::/64", "x")


def test_pve_guest_cidrs_must_be_networks(sim):
    with pytest.raises(ValueError, match="PVE_GUEST_CIDRS: 'ten' is not a network"):
        strict(sim, PVE_GUEST_CIDRS="127.9.0.0/16,ten")


def test_lxc_exec_does_not_go_to_a_forbidden_address(sim):
    provider = strict(sim, PveLxcProvider)
    instance = provider.create(spec("sbx-addr-ct"), "9000", meta("sbx-addr-ct"))
    try:
        instance.start()
        guest = sim.cluster.guests[int(instance.id)]
        # The simulator's own CT address is on loopback: refused like any other.
        with pytest.raises(Conflict, match="loopback"):
            provider.get(instance.id).exec("true")
        guest.reported = ["0.0.0.0", "::1"]
        with pytest.raises(Conflict, match="unspecified"):
            provider.get(instance.id).exec("true")
    finally:
        provider.get(instance.id).delete()


def test_the_simulator_setting_is_no_environment_variable(sim):
    """Only declared names reach providers from the environment; the loopback switch is
    none, even when the environment carries it."""
    assert LOOPBACK_GUESTS_KEY not in config_keys()
    assert LOOPBACK_GUESTS_KEY not in provider_config({LOOPBACK_GUESTS_KEY: "1"})
    assert PveVmProvider.from_config(sim.config()).service_address_rule.allow_loopback
    assert strict(sim).service_address_rule == AddressRule(setting="PVE_GUEST_CIDRS")
