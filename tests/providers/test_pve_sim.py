"""The PVE simulator answers like PVE: schema validation, errors, tasks, locks, faults.

Everything goes over real HTTPS through proxmoxer (the client the providers use) or
plain requests, with the simulator's certificate verified.
"""

from __future__ import annotations

import time

import pytest
import requests
from proxmoxer import ProxmoxAPI
from proxmoxer.core import ResourceException

from tests.pve_sim.harness import require_for
from tests.pve_sim.server import DROP, EXISTS, HTTP_500, LOCKED, TASK_FAIL, TIMEOUT, PveSimulator


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    require_for("pve-lxc")
    simulator = PveSimulator(tmp_path_factory.mktemp("sim"), task_delay=0.05, hang_seconds=1.0)
    simulator.default_cluster()
    simulator.start()
    yield simulator
    simulator.close()


@pytest.fixture
def api(sim):
    sim.clear_faults()
    user, _, rest = sim.token.partition("!")
    name, _, secret = rest.partition("=")
    host = sim.url.removeprefix("https://")
    return ProxmoxAPI(
        host, user=user, token_name=name, token_value=secret, verify_ssl=sim.cert_file, timeout=0.5
    )


def wait_task(api, node: str, upid: str) -> dict:
    for _ in range(200):
        status = api.nodes(node).tasks(upid).status.get()
        if status["status"] == "stopped":
            return status
        time.sleep(0.02)
    raise AssertionError("task never stopped")


def raw(sim, method: str, path: str, **kwargs) -> requests.Response:
    headers = {"Authorization": f"PVEAPIToken={sim.token}"}
    return requests.request(
        method,
        f"{sim.url}/api2/json{path}",
        headers=headers,
        verify=sim.cert_file,
        timeout=10,
        **kwargs,
    )


def test_unknown_path_or_method_is_not_implemented_as_pveproxy_says(sim):
    answer = raw(sim, "GET", "/nodes/pve1/lxc/9000/nonsense")
    assert answer.status_code == 501
    assert answer.json() == {
        "data": None,
        "message": "Method 'GET /nodes/pve1/lxc/9000/nonsense' not implemented\n",
    }
    assert raw(sim, "DELETE", "/version").status_code == 501


@pytest.mark.parametrize(
    ("method", "path", "params", "bad"),
    [
        ("POST", "/nodes/pve1/lxc/9000/clone", {"newid": "200", "colour": "red"}, "colour"),
        ("POST", "/nodes/pve1/lxc/9000/clone", {"newid": "two"}, "newid"),
        ("POST", "/nodes/pve1/lxc/9000/clone", {"newid": "50"}, "newid"),
        ("POST", "/nodes/pve1/lxc/9000/clone", {"newid": "200", "full": "maybe"}, "full"),
        ("POST", "/nodes/pve1/lxc/9000/clone", {"hostname": "x"}, "newid"),
        ("PUT", "/nodes/pve1/lxc/9000/resize", {"disk": "sda", "size": "8G"}, "disk"),
        ("PUT", "/nodes/pve1/lxc/9000/resize", {"disk": "rootfs", "size": "big"}, "size"),
        ("PUT", "/nodes/pve1/lxc/9000/config", {"net0": "name=eth0,colour=red"}, "net0"),
        ("PUT", "/nodes/pve1/lxc/9000/config", {"tags": "ok;not ok!"}, "tags"),
        ("GET", "/nodes/pve1/lxc/99/config", {}, "vmid"),
        ("GET", "/cluster/resources", {"type": "toaster"}, "type"),
    ],
)
def test_parameter_verification_failed_like_pve(sim, method, path, params, bad):
    where = "params" if method == "GET" else "data"
    answer = raw(sim, method, path, **{where: params})
    assert answer.status_code == 400
    assert answer.reason == "Parameter verification failed."
    body = answer.json()
    assert body["data"] is None
    assert set(body["errors"]) == {bad}


def test_a_valid_request_passes_with_typed_values(api):
    config = api.nodes("pve1").lxc(9000).config.get()
    assert config["template"] == 1
    assert config["cores"] == 1
    assert config["rootfs"] == "local-lvm:base-9000-disk-0,size=4G"


def test_wrong_token_is_refused(sim):
    answer = requests.get(
        f"{sim.url}/api2/json/version",
        headers={"Authorization": "PVEAPIToken=root@pam!sandboxes=wrong"},
        verify=sim.cert_file,
        timeout=10,
    )
    assert answer.status_code == 401


def test_clone_is_a_task_that_holds_a_create_lock_until_done(sim, api):
    sim.cluster.delays["vzclone"] = 0.3
    try:
        upid = api.nodes("pve1").lxc(9000).clone.post(newid=300001, hostname="locked-one")
        assert upid.startswith("UPID:pve1:")
        assert ":vzclone:9000:root@pam!sandboxes:" in upid
        assert api.nodes("pve1").tasks(upid).status.get()["status"] == "running"
        with pytest.raises(ResourceException, match=r"CT is locked \(create\)"):
            api.nodes("pve1").lxc(300001).config.put(cores=2)
        assert wait_task(api, "pve1", upid)["exitstatus"] == "OK"
        api.nodes("pve1").lxc(300001).config.put(cores=2)
    finally:
        sim.cluster.delays.clear()
    with pytest.raises(ResourceException, match="is still in use by linked clone"):
        api.nodes("pve1").lxc(9000).delete()
    with pytest.raises(ResourceException, match="already exists on node 'pve1'"):
        api.nodes("pve1").lxc(9000).clone.post(newid=300001)
    wait_task(api, "pve1", api.nodes("pve1").lxc(300001).delete())
    with pytest.raises(ResourceException, match="does not exist"):
        api.nodes("pve1").lxc(300001).config.get()


def test_injected_faults(sim, api):
    clone = "/nodes/{node}/lxc/{vmid}/clone"
    sim.add_fault("POST", clone, TASK_FAIL)
    upid = api.nodes("pve1").lxc(9000).clone.post(newid=300002)
    assert wait_task(api, "pve1", upid)["exitstatus"].startswith("simulated task failure")
    assert 300002 not in sim.cluster.guests  # PVE removes a failed clone itself

    sim.add_fault("GET", "/version", HTTP_500)
    with pytest.raises(ResourceException) as raised:
        api.version.get()
    assert raised.value.status_code == 500

    sim.add_fault("GET", "/version", DROP)
    with pytest.raises(requests.exceptions.ConnectionError):
        api.version.get()

    sim.add_fault("GET", "/version", TIMEOUT)
    with pytest.raises(requests.exceptions.Timeout):
        api.version.get()

    sim.add_fault("PUT", "/nodes/{node}/lxc/{vmid}/config", LOCKED)
    with pytest.raises(ResourceException, match=r"CT is locked \(backup\)"):
        api.nodes("pve1").lxc(9000).config.put(cores=1)

    sim.add_fault("POST", clone, EXISTS)
    with pytest.raises(ResourceException, match="already exists"):
        api.nodes("pve1").lxc(9000).clone.post(newid=300003)
    assert sim.cluster.guests[300003].owner == "foreign"
    assert api.version.get()["release"] == "9.2"  # every fault fired once, then cleared
