"""Outbound network policies through the API: preset default, team and sandbox overrides,
the effective policy in the API and on the page, validation and capability refusals."""

from __future__ import annotations

import pytest

from providers.network import NetworkPolicy, make_policy
from sandboxes.models import Preset, Sandbox, SandboxEvent
from sandboxes.services import network
from sandboxes.services.actors import Actor
from sandboxes.services.teams import update_team
from tests import netns_world
from tests.api.conftest import error_of

pytestmark = pytest.mark.django_db(transaction=True)  # provisioning runs on commit

SMALL = "1vcpu_1gb_8gb"
NETWORKED = {"supports_network_internet", "supports_network_allowlist"}


def create(api, **extra):
    body = {"preset": SMALL, "provider": "memory", **extra}
    return api.post("/api/v1/sandboxes", body, format="json")


@pytest.fixture
def networked(memory_backend):
    memory_backend.enabled.update(NETWORKED)
    return memory_backend


def spec_of(store, sandbox_id: str):
    (record,) = [r for r in store.instances.values() if r.spec.sandbox_id == sandbox_id]
    return record.spec


def test_the_default_is_the_presets_none(networked, api):
    response = create(api)
    assert response.status_code == 202
    assert response.json()["network"] == {"mode": "none", "allow": [], "source": "preset"}
    assert spec_of(networked, response.json()["id"]).network == NetworkPolicy()


def test_preset_then_team_then_sandbox(networked, api, team):
    Preset.objects.filter(pk=SMALL).update(network_policy="internet")
    first = create(api).json()
    assert first["network"] == {"mode": "internet", "allow": [], "source": "preset"}

    update_team(
        team=team,
        actor=Actor.system(),
        changes={"network_policy": "allowlist", "network_allow": ["PyPI.org.", "1.1.1.1"]},
    )
    second = create(api).json()
    assert second["network"] == {
        "mode": "allowlist",
        "allow": ["pypi.org", "1.1.1.1/32"],
        "source": "team",
    }

    third = create(api, network_policy="none").json()
    assert third["network"] == {"mode": "none", "allow": [], "source": "sandbox"}
    # The provider got exactly the effective policy, as plain data.
    assert spec_of(networked, second["id"]).network == make_policy(
        "allowlist", ["pypi.org", "1.1.1.1"]
    )
    assert spec_of(networked, first["id"]).network == make_policy("internet")
    # Fixed at create: the preset changing later changes no existing sandbox.
    Preset.objects.filter(pk=SMALL).update(network_policy="none")
    again = api.get(f"/api/v1/sandboxes/{first['id']}").json()
    assert again["network"]["mode"] == "internet"
    event = SandboxEvent.objects.get(sandbox_id=first["id"], action="create")
    assert event.data["network"]["mode"] == "internet"


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"network_policy": "everything"}, "network_policy", "is not a valid choice"),
        ({"network_policy": "allowlist"}, "network_allow", "at least one"),
        (
            {"network_policy": "allowlist", "network_allow": ["10.0.0.0/8"]},
            "network_allow",
            "public addresses only",
        ),
        (
            # The cloud metadata address: its blocking is proven against the test host at
            # that address inside tests/netns_world.py's namespaces (the egress tests).
            {"network_policy": "allowlist", "network_allow": [netns_world.METADATA]},
            "network_allow",
            "public addresses only",
        ),
        (
            {"network_policy": "allowlist", "network_allow": ["not a host"]},
            "network_allow",
            "not a host name",
        ),
        (
            {"network_policy": "internet", "network_allow": ["pypi.org"]},
            "network_allow",
            "only the allowlist",
        ),
        ({"network_allow": ["pypi.org"]}, "network_allow", "give network_policy"),
    ],
)
def test_bad_policies_are_400_naming_the_field(networked, api, body, field, says):
    response = create(api, **body)
    assert response.status_code == 400, response.json()
    error = error_of(response)
    assert field in error["fields"], error
    assert says in " ".join(error["fields"][field]), error
    assert not Sandbox.objects.exists()


def test_a_provider_that_cannot_enforce_it_refuses_with_the_capability(memory_backend, api):
    response = create(api, network_policy="internet")
    assert response.status_code == 409
    error = error_of(response)
    assert error["code"] == "capability_missing"
    assert "supports_network_internet" in error["message"]
    assert not Sandbox.objects.exists()


def test_team_overrides_are_validated(team):
    from sandboxes.services.errors import InvalidInput

    with pytest.raises(InvalidInput, match="public addresses only"):
        update_team(
            team=team,
            actor=Actor.system(),
            changes={"network_policy": "allowlist", "network_allow": ["192.168.0.0/16"]},
        )
    update_team(team=team, actor=Actor.system(), changes={"network_policy": "internet"})
    team.refresh_from_db()
    assert network.stored(team.network_policy, team.network_allow) == make_policy("internet")


def test_the_page_shows_the_effective_policy(networked, api, client, member, team):
    sandbox_id = create(
        api, network_policy="allowlist", network_allow=["pypi.org", "93.184.216.0/24"]
    ).json()["id"]
    client.force_login(member)
    page = client.get(f"/sandboxes/{sandbox_id}/").content.decode()
    assert "Network" in page
    assert "allowlist" in page
    assert "pypi.org" in page
    assert "93.184.216.0/24" in page
    assert "from the sandbox" in page
