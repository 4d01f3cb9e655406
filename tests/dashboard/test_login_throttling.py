"""Sign-in throttling (django-axes, sandboxes/lockout.py) at /login/ and /admin/login/."""

from __future__ import annotations

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

pytestmark = pytest.mark.django_db

LOGIN = "/login/"
ADMIN_LOGIN = "/admin/login/"


@pytest.fixture
def limits(settings):
    settings.LOGIN_FAILURE_LIMIT = settings.AXES_FAILURE_LIMIT = 10
    settings.LOGIN_IP_FAILURE_LIMIT = 50
    settings.AXES_COOLOFF_TIME = timedelta(minutes=15)
    return settings


@pytest.fixture
def root(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw-root")


def sign_in(path: str, username: str, password: str, address: str = "127.0.0.1"):
    client = Client(REMOTE_ADDR=address)
    data = {"username": username, "password": password}
    if path == ADMIN_LOGIN:
        data["next"] = "/admin/"
    response = client.post(path, data)
    response.client_ = client
    return response


def signed_in(response) -> bool:
    return response.status_code == 302 and "_auth_user_id" in response.client_.session


def hammer(path: str, username: str, times: int = 40, address: str = "127.0.0.1") -> list[int]:
    return [sign_in(path, username, "wrong", address).status_code for _ in range(times)]


def assert_locked_page(response) -> None:
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 15 * 60
    page = response.content.decode()
    assert "Too many sign-in attempts" in page
    assert "Try again in 15 minutes" in page
    assert "administrator can unlock" in page


def test_forty_wrong_passwords_lock_the_dashboard_sign_in(limits, member):
    codes = hammer(LOGIN, "alice")
    assert codes[:9] == [200] * 9  # the form again, with its error
    assert codes[9:] == [429] * 31  # the tenth failure locks
    right = sign_in(LOGIN, "alice", "pw-alice")
    assert_locked_page(right)  # even the right password
    assert not signed_in(right)
    # Attempts while locked out are not counted: the lockout still ends on time.
    assert AccessAttempt.objects.get(username="alice").failures_since_start == 10


def test_forty_wrong_passwords_lock_the_admin_sign_in(limits, root):
    codes = hammer(ADMIN_LOGIN, "root")
    assert codes[:9] == [200] * 9
    assert codes[9:] == [429] * 31
    right = sign_in(ADMIN_LOGIN, "root", "pw-root")
    assert_locked_page(right)
    assert not signed_in(right)
    assert reverse("admin:login") in right.content.decode()  # "back to sign-in" goes there


def test_failures_at_either_page_count_together(limits, root):
    hammer(LOGIN, "root", times=5)
    hammer(ADMIN_LOGIN, "root", times=5)
    assert sign_in(ADMIN_LOGIN, "root", "pw-root").status_code == 429


def test_the_lockout_ends_after_the_cool_off(limits, member):
    hammer(LOGIN, "alice", times=10)
    assert sign_in(LOGIN, "alice", "pw-alice").status_code == 429
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    assert signed_in(sign_in(LOGIN, "alice", "pw-alice"))


@pytest.mark.parametrize(
    "unlock",
    [
        ["axes_reset"],
        ["axes_reset_username", "alice"],
        ["axes_reset_ip_username", "127.0.0.1", "alice"],
    ],
)
def test_an_admin_unlocks_with_a_command(limits, member, unlock):
    hammer(LOGIN, "alice", times=10)
    assert sign_in(LOGIN, "alice", "pw-alice").status_code == 429
    call_command(*unlock, stdout=None)
    assert signed_in(sign_in(LOGIN, "alice", "pw-alice"))


def test_an_admin_unlocks_in_the_admin(limits, member, root):
    hammer(LOGIN, "alice", times=10)
    admin = Client()
    admin.force_login(root)
    changelist = reverse("admin:axes_accessattempt_changelist")
    page = admin.get(changelist)
    assert page.status_code == 200
    assert "alice" in page.content.decode()
    attempt = AccessAttempt.objects.get(username="alice")
    response = admin.post(
        changelist,
        {"action": "delete_selected", "_selected_action": [attempt.pk], "post": "yes"},
    )
    assert response.status_code == 302
    assert not AccessAttempt.objects.exists()
    assert signed_in(sign_in(LOGIN, "alice", "pw-alice"))


def test_the_lockout_is_per_username_and_address(limits, member, team_admin):
    hammer(LOGIN, "alice", times=10, address="127.0.0.51")
    assert sign_in(LOGIN, "alice", "pw-alice", "127.0.0.51").status_code == 429
    # Another user at the same address, another user elsewhere, alice elsewhere: all fine.
    assert signed_in(sign_in(LOGIN, "ada", "pw-ada", "127.0.0.51"))
    assert signed_in(sign_in(LOGIN, "ada", "pw-ada", "127.0.0.52"))
    assert signed_in(sign_in(LOGIN, "alice", "pw-alice", "127.0.0.52"))


def test_an_address_trying_many_usernames_is_locked_out(limits, member, team_admin):
    limits.LOGIN_IP_FAILURE_LIMIT = 12
    for name in ("eve1", "eve2", "eve3", "eve4"):
        hammer(LOGIN, name, times=3, address="127.0.0.59")  # never 10 for one username
    assert_locked_page(sign_in(LOGIN, "ada", "pw-ada", "127.0.0.59"))
    assert signed_in(sign_in(LOGIN, "ada", "pw-ada", "127.0.0.60"))
    call_command("axes_reset_ip", "127.0.0.59", stdout=None)
    assert signed_in(sign_in(LOGIN, "ada", "pw-ada", "127.0.0.59"))


def test_behind_a_proxy_the_configured_header_is_the_address(limits, member):
    limits.CLIENT_IP_HEADER = "HTTP_X_FORWARDED_FOR"
    proxy = "127.0.2.1"

    def attempt(password: str, forwarded: str):
        client = Client(REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR=forwarded)
        return client.post(LOGIN, {"username": "alice", "password": password})

    for _ in range(10):  # the left-most entry is the client's to forge; it changes nothing
        attempt("wrong", f"127.0.3.{_}, 127.0.4.5")
    assert attempt("pw-alice", "127.0.4.5").status_code == 429
    assert attempt("pw-alice", "127.0.4.6").status_code == 302
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"127.0.4.5"}


def test_a_correct_first_sign_in_is_not_slowed_down(limits, member):
    assert signed_in(sign_in(LOGIN, "alice", "pw-alice"))
    assert not AccessAttempt.objects.exists()
