"""Outbound network policies of local sandboxes, against a test-built internet.

Every packet stays inside network namespaces this module makes (tests/netns_world.py):
the provider's LOCAL_SANDBOX_NET_NAMESPACE is the fake host, its default route leads to
the fake world. Each defence is shown twice: an attack that works without it (the
control: the launcher patched to leave that one defence out), then the same attack
failing against a real sandbox.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from providers.local import launch, network
from providers.network import make_policy
from tests import netns_world as w
from tests.local_support import local_provider
from tests.providers.conftest import sh
from tests.system import require

INTERNET = make_policy("internet")

PROBE = r"""
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    sock = socket.socket()
    sock.settimeout(10)
    try:
        sock.connect((host, int(port)))
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        body = sock.recv(4096).decode(errors="replace").split("\r\n\r\n")[-1]
        print(target, "open", body.replace(" ", "_"))
    except OSError as exc:
        print(target, "blocked", type(exc).__name__)
    finally:
        sock.close()
"""

#: A TCP SYN written as an Ethernet frame on a packet socket: below nftables' hooks.
RAW_SYN = r"""
import random, socket, struct, sys
dst, gateway_mac_hint = sys.argv[1], None
def csum(data):
    if len(data) % 2: data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16: total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
src = socket.inet_aton(sys.argv[2]); dst = socket.inet_aton(dst)
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind(("eth0", 0))
mine = sock.getsockname()[4]
gw = None
for line in open("/proc/net/arp").read().splitlines()[1:]:
    fields = line.split()
    if fields[0] == sys.argv[3]: gw = bytes.fromhex(fields[3].replace(":", ""))
tcp = struct.pack("!HHIIBBHHH", random.randint(20000, 60000), 80, 1, 0, 5 << 4, 2, 65535, 0, 0)
tcp = tcp[:16] + struct.pack("!H", csum(src + dst + struct.pack("!BBH", 0, 6, 20) + tcp)) + tcp[18:]
iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0x4000, 64, 6, 0, src, dst)
iph = iph[:10] + struct.pack("!H", csum(iph)) + iph[12:]
sock.send((gw or b"\xff" * 6) + mine + b"\x08\x00" + iph + tcp)
print("sent")
"""


def require_network_tools() -> None:
    require("pasta", shutil.which("pasta") is not None, "apt-get install -y passt")
    require("nft", shutil.which("nft") is not None, "apt-get install -y nftables")
    require("ip", shutil.which("ip") is not None, "apt-get install -y iproute2")


@pytest.fixture(scope="module")
def world():
    require_network_tools()
    require("root", os.geteuid() == 0, "network namespaces need root")
    with w.World() as made:
        yield made


@pytest.fixture(scope="module")
def net(world, tmp_path_factory):
    with local_provider(
        tmp_path_factory.mktemp("egress-root"),
        LOCAL_SANDBOX_NET_NAMESPACE=world.upstream,
        LOCAL_SANDBOX_DNS=w.GATEWAY,
    ) as provider:
        yield provider


def probe(box, *targets: str) -> dict[str, str]:
    """target -> "open <what answered>" or "blocked <error>"."""
    out = sh(box, "python3 - " + " ".join(targets) + " <<'EOF'\n" + PROBE + "\nEOF\n", 120)
    found = {}
    for line in out.splitlines():
        target, verdict, detail = line.split(" ", 2)
        found[target] = f"{verdict} {detail}"
    return found


def start(sandboxes, provider, policy=INTERNET):
    box = sandboxes.running(provider, network=policy)
    # Only ever the test world: the sandbox's default route is the fake host's gateway.
    assert f"default via {w.GATEWAY}" in sh(box, "ip route"), "not in the test world"
    return box


def web(address: str) -> str:
    return f"{address}:{w.WEB_PORT}"


def host(address: str) -> str:
    return f"{address}:{w.HOST_PORT}"


#: What `internet` must refuse, and what answers there when nothing refuses it.
FORBIDDEN = {
    host(w.HOST_PUBLIC): f"open reached_{w.HOST_PUBLIC}",  # the host's own (public) address
    web(w.PRIVATE): f"open reached_{w.PRIVATE}",
    web(w.SHARED): f"open reached_{w.SHARED}",
    web(w.METADATA): f"open reached_{w.METADATA}",
}


def test_internet_reaches_public_hosts_by_address_and_by_name(net, sandboxes):
    box = start(sandboxes, net)
    assert probe(box, web(w.PUBLIC))[web(w.PUBLIC)] == f"open reached_{w.PUBLIC}"
    lookup = "import socket; print(socket.gethostbyname('public.example'))"
    resolved = sh(box, f'python3 -c "{lookup}"')
    assert resolved.strip() == w.PUBLIC
    assert sh(box, "cat /etc/resolv.conf").strip() == f"nameserver {network.DNS_ADDRESS}"


def test_internet_refuses_the_host_private_shared_and_metadata_addresses(
    net, sandboxes, world, monkeypatch
):
    # Control: with an empty ruleset, pasta carries every one of them.
    with monkeypatch.context() as patch:
        patch.setattr(network, "ruleset", lambda *a, **k: "flush ruleset\n")
        control = start(sandboxes, net)
        assert probe(control, *FORBIDDEN) == FORBIDDEN
    before = world.accepted.copy()
    box = start(sandboxes, net)
    verdicts = probe(box, *FORBIDDEN, host("127.0.0.1"))
    assert all(v.startswith("blocked") for v in verdicts.values()), verdicts
    assert world.accepted == before


def test_pastas_host_mappings_are_off(net, sandboxes, world, monkeypatch):
    """pasta's defaults make the host's loopback services answer on the sandbox's
    127.0.0.1 (-T auto) and on the gateway address (gateway mapping)."""
    at_loopback, at_gateway = host("127.0.0.1"), host(w.GATEWAY)
    real_argv = network.pasta_argv

    def defaults(*args):
        argv = real_argv(*args)
        argv.remove("--no-map-gw")
        at = argv.index("--tcp-ns")
        del argv[at : at + 2]
        return argv

    with monkeypatch.context() as patch:
        patch.setattr(network, "pasta_argv", defaults)
        control = start(sandboxes, net)
        # -T auto forwards ports bound when pasta starts; the host's is bound already.
        found = probe(control, at_loopback, at_gateway)
        assert found[at_loopback] == "open reached_127.0.0.1", found
        assert found[at_gateway] == "open reached_127.0.0.1", found
    box = start(sandboxes, net)
    found = probe(box, at_loopback, at_gateway)
    assert found[at_loopback].startswith("blocked"), found
    assert found[at_gateway].startswith("blocked"), found  # the world's gateway: closed port


def test_root_inside_cannot_lift_the_policy(net, sandboxes, world):
    box = start(sandboxes, net)
    attempts = {
        "nft flush ruleset": "Operation not permitted",
        "nft delete table inet sandbox": "Operation not permitted",
        f"ip route add {w.PRIVATE}/32 dev eth0": "Operation not permitted",
        "ip addr add 10.9.9.1/24 dev eth0": "Operation not permitted",
        "ip link set eth0 down": "Operation not permitted",
        "unshare -n true": "Operation not permitted",
        "unshare -Ur true": "Operation not permitted",
        "echo 1 > /proc/sys/net/ipv4/ip_forward": "Read-only file system",
    }
    for command, error in attempts.items():
        result = box.exec(command, timeout=30)
        assert result.exit_code != 0, command
        assert error in result.stderr, (command, result.stderr)
    assert probe(box, web(w.PRIVATE))[web(w.PRIVATE)].startswith("blocked")
    # Control: the first of them, done with CAP_NET_ADMIN (host root in the sandbox's
    # network namespace), would have opened the private host.
    pid = _runtime(net, box.id).pid
    subprocess.run(["nsenter", "-t", str(pid), "-n", "nft", "flush", "ruleset"], check=True)
    assert probe(box, web(w.PRIVATE))[web(w.PRIVATE)] == f"open reached_{w.PRIVATE}"


def test_packet_sockets_would_bypass_the_rules_so_the_sandbox_has_none(
    net, sandboxes, world, monkeypatch
):
    syn = f"python3 - {w.PRIVATE} {w.HOST} {w.GATEWAY} <<'EOF'\n{RAW_SYN}\nEOF\n"
    with monkeypatch.context() as patch:
        patch.setattr(launch, "dropped_capabilities", lambda spec: set())
        control = start(sandboxes, net)
        assert probe(control, web(w.PUBLIC))[web(w.PUBLIC)].startswith("open")  # fills ARP
        assert probe(control, web(w.PRIVATE))[web(w.PRIVATE)].startswith("blocked")
        before = world.accepted[w.PRIVATE]
        assert "sent" in sh(control, syn)
        assert _eventually(lambda: world.accepted[w.PRIVATE] > before), "pasta never connected"
    box = start(sandboxes, net)
    result = box.exec(syn, timeout=30)
    assert result.exit_code != 0
    assert "PermissionError" in result.stderr
    effective = sh(box, "grep CapEff /proc/self/status").split()[1]
    assert not int(effective, 16) & (1 << 13)  # CAP_NET_RAW


def test_allowlist_reaches_only_what_it_lists(net, sandboxes, world):
    policy = make_policy("allowlist", ["public.example", "1.1.1.0/24", "inside.example"])
    box = start(sandboxes, net, policy)
    found = probe(box, web(w.PUBLIC), web(w.PUBLIC_LISTED), web(w.PUBLIC_OTHER), *FORBIDDEN)
    assert found.pop(web(w.PUBLIC)) == f"open reached_{w.PUBLIC}"
    assert found.pop(web(w.PUBLIC_LISTED)) == f"open reached_{w.PUBLIC_LISTED}"
    # Not listed; and a listed name that resolves to a private address stays refused.
    assert all(v.startswith("blocked") for v in found.values()), found


def test_none_is_loopback_only(net, sandboxes):
    box = sandboxes.running(net)
    assert "eth0" not in sh(box, "ip -o link")
    assert probe(box, web(w.PUBLIC))[web(w.PUBLIC)].startswith("blocked")


def test_stop_ends_pasta_and_start_connects_again(net, sandboxes):
    box = start(sandboxes, net)
    helper = _runtime(net, box.id).network_pid
    assert helper
    assert _alive(helper)
    box.stop()
    assert not _alive(helper)
    box.start()
    assert probe(box, web(w.PUBLIC))[web(w.PUBLIC)].startswith("open")


def test_a_policy_is_refused_where_it_cannot_be_enforced(tmp_path):
    from providers.errors import Unsupported

    with local_provider(tmp_path / "root", LOCAL_SANDBOX_PASTA="no-such-pasta") as provider:
        caps = provider.capabilities
        assert not caps.supports_network_internet
        assert "no-such-pasta not found" in caps.reason("supports_network_internet")
        from tests.providers.conftest import metadata, new_spec

        spec = new_spec(network=INTERNET)
        with pytest.raises(Unsupported, match="internet network policy is not available"):
            provider.create(spec, "base", metadata(spec))


def _runtime(provider, sandbox_id: str):
    return provider.store.load(sandbox_id).runtime


def _alive(pid: int) -> bool:
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return False


def _eventually(check, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()
