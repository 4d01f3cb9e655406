"""The /pools/ page: size, ready members, hit rate and refill lag; owners manage."""

from __future__ import annotations

import pytest

from sandboxes.models import Membership, SandboxEvent, WarmPool
from tests.dashboard.conftest import signed_in

pytestmark = pytest.mark.django_db(transaction=True)

SNAPSHOT = "memory_1vcpu_1gb_8gb_v1"


@pytest.fixture
def owner(django_user_model, team):
    user = django_user_model.objects.create_user(username="olga", password="pw")
    Membership.objects.create(user=user, team=team, role="owner")
    return user


def test_an_owner_creates_a_pool_and_sees_it_fill(memory_backend, team, owner):
    client = signed_in(owner)
    answer = client.post(
        "/pools/",
        {"snapshot": SNAPSHOT, "target_size": 2, "maximum": 3, "max_age_seconds": 3600},
    )
    assert answer.status_code == 302, answer.content.decode()[-2000:]
    pool = WarmPool.objects.get()
    page = client.get("/pools/").content.decode()
    assert SNAPSHOT in page
    assert "data-ready>2</td>" in page
    assert "none yet" in page  # no create has asked yet
    assert client.post(f"/pools/{pool.pk}/toggle/").status_code == 302
    pool.refresh_from_db()
    assert pool.enabled is False
    assert client.post(f"/pools/{pool.pk}/delete/", {"confirmed": "1"}).status_code == 302
    assert not WarmPool.objects.exists()
    assert SandboxEvent.objects.filter(action="pool_delete", actor_user=owner).exists()


def test_a_member_sees_pools_but_cannot_manage_them(memory_backend, team, member):
    client = signed_in(member)
    page = client.get("/pools/")
    assert page.status_code == 200
    assert "Only the team's owners and admins" in page.content.decode()
    answer = client.post(
        "/pools/", {"snapshot": SNAPSHOT, "target_size": 1, "maximum": 1, "max_age_seconds": 60}
    )
    assert answer.status_code == 400
    assert not WarmPool.objects.exists()
