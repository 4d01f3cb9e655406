"""The service proxy never connects to an address a PVE guest chose for it (SSRF).

Every connection here goes to this host's loopback; the listeners prove that a refused
address was never connected to (``0.0.0.0`` and ``::ffff:127.0.0.1`` reach 127.0.0.1 on
Linux, ``127.1.2.3`` and ``::1`` their own loopback addresses).
"""

from __future__ import annotations

import contextlib
import itertools

import pytest

from providers.pve.settings import LOOPBACK_GUESTS_KEY
from sandboxes.models import Membership, Sandbox
from sandboxes.services import interactive
from sandboxes.services.actors import Actor
from sandboxes.services.errors import ProviderFailure
from sandboxes.services.tokens import create_api_token
from tests.background.harness import FakeService
from tests.providers.pve_service import service_rig
from tests.pve_sim.harness import require_for
from tests.pve_sim.server import PveSimulator
from tests.tcp_server import TcpServer

pytestmark = pytest.mark.django_db

_slugs = itertools.count()


@contextlib.contextmanager
def listeners():
    """127.0.0.1:P, and on the same port 127.1.2.3 and ::1 where this host allows."""
    first = TcpServer("127.0.0.1")
    made = [first]
    for host in ("127.1.2.3", "::1"):
        with contextlib.suppress(OSError):
            made.append(TcpServer(host, first.port))
    try:
        yield first.port, made
    finally:
        for listener in made:
            listener.close()


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    require_for("pve-vm")
    simulator = PveSimulator(tmp_path_factory.mktemp("pve-proxy"), task_delay=0.01)
    simulator.default_cluster()
    simulator.start()
    yield simulator
    simulator.close()


@contextlib.contextmanager
def running_vm(sim, django_user_model, **settings: str):
    with service_rig(sim, "pve-vm", f"ssrf{next(_slugs)}", **settings) as rig:
        sandbox = rig.start_one()
        user = django_user_model.objects.create_user(username=f"u{sandbox.pk}", password="x")
        Membership.objects.create(user=user, team=rig.team, role="member")
        _, raw = create_api_token(user=user, team=rig.team, actor=Actor.for_user(user))
        guest = sim.cluster.guests[int(sandbox.provider_ref)]
        try:
            yield sandbox, guest, user, {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
        finally:
            guest.reported = None


STRICT = {LOOPBACK_GUESTS_KEY: "0"}  # as in production: the simulator's loopback refused


# Only addresses that land on this host's loopback, where the listeners would see a
# connection if the check let one through: link-local, multicast and the other refused
# classes go through the same rule, proven without any traffic in
# tests/providers/test_pve_guest_addresses.py.
@pytest.mark.parametrize("address", ["0.0.0.0", "127.1.2.3", "::1", "::ffff:127.0.0.1"])
def test_a_guest_reporting_a_forbidden_address_is_never_connected_to(
    sim, django_user_model, client, address
):
    with running_vm(sim, django_user_model, **STRICT) as (sandbox, guest, user, auth):
        guest.reported = [address]
        with pytest.raises(ProviderFailure, match="no address the control plane may connect"):
            interactive.expose_service(
                sandbox=sandbox, actor=Actor.for_user(user), name="web", port=8080
            )
        with listeners() as (port, made):
            # A row written before this rule, or by anything else: checked when connecting.
            host = f"[{address}]" if ":" in address else address
            service = {"name": "web", "port": port, "url": f"http://{host}:{port}/"}
            Sandbox.objects.filter(pk=sandbox.pk).update(services=[service])
            response = client.get(f"/s/{sandbox.pk}/web/secret", **auth)
            assert response.status_code == 502
            error = response.json()["error"]
            assert error["code"] == "bad_gateway"
            assert "may not connect to" in error["message"]
            assert [listener.connections for listener in made] == [0] * len(made)


def test_a_name_resolving_to_loopback_is_refused_when_connecting(sim, django_user_model, client):
    vm = running_vm(sim, django_user_model, **STRICT)
    with vm as (sandbox, _, _, auth), listeners() as (port, made):
        service = {"name": "web", "port": port, "url": f"http://localhost:{port}/"}
        Sandbox.objects.filter(pk=sandbox.pk).update(services=[service])
        response = client.get(f"/s/{sandbox.pk}/web/", **auth)
        assert response.status_code == 502
        assert [listener.connections for listener in made] == [0] * len(made)


def test_an_allowed_address_inside_pve_guest_cidrs_is_served(sim, django_user_model, client):
    """The simulator's guests live on 127.<net>.X.Y; tests let loopback through (never
    production) so that an address inside PVE_GUEST_CIDRS can really be served."""
    cidr = f"127.{sim.runtime.net}.0.0/16"
    with running_vm(sim, django_user_model, PVE_GUEST_CIDRS=cidr) as (sandbox, _, user, auth):
        url = interactive.expose_service(
            sandbox=sandbox, actor=Actor.for_user(user), name="probe", port=1
        )["url"]
        host = url.split("//")[1].split(":")[0]
        served = FakeService(lambda: True, b"from the guest", host=host, offset=0)
        try:
            interactive.expose_service(
                sandbox=sandbox, actor=Actor.for_user(user), name="web", port=served.port
            )
            response = client.get(f"/s/{sandbox.pk}/web/", **auth)
            assert response.status_code == 200
            assert b"".join(response.streaming_content) == b"from the guest"
        finally:
            served.close()


def test_an_address_outside_pve_guest_cidrs_is_refused_when_connecting(
    sim, django_user_model, client
):
    narrow = {"PVE_GUEST_CIDRS": "127.9.0.0/16"}  # 127.0.0.1 lies outside it
    with running_vm(sim, django_user_model, **narrow) as (sandbox, _, _, auth):
        served = FakeService(lambda: True, b"never", offset=0)
        try:
            service = {"name": "web", "port": 80, "url": f"http://127.0.0.1:{served.port}/"}
            Sandbox.objects.filter(pk=sandbox.pk).update(services=[service])
            response = client.get(f"/s/{sandbox.pk}/web/", **auth)
            assert response.status_code == 502
            assert served.seen == []
        finally:
            served.close()
