"""The SSH keys page (add with CSRF, list, remove) and the SSH command on a sandbox's page."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from sandboxes.models import SshKey
from sandboxes.services import ssh as ssh_service
from sandboxes.services.actors import Actor
from tests.dashboard.conftest import signed_in

pytestmark = pytest.mark.django_db(transaction=True)
KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKfbCVBdc8ceDgiJdxE6mWZxJ3Eyy0GUnbhTIQ6xM8Fk alice@laptop"
)


def test_a_key_is_added_listed_and_removed(alice, member):
    response = alice.post(reverse("ssh-key-list"), {"name": "", "public_key": KEY})
    assert response.status_code == 302
    key = SshKey.objects.get()
    assert (key.user, key.name) == (member, "alice@laptop")  # the comment names it
    listing = alice.get(reverse("ssh-key-list")).content.decode()
    assert key.fingerprint in listing
    alice.post(reverse("ssh-key-delete", args=[key.pk]))
    assert not SshKey.objects.exists()


def test_a_bad_key_is_refused_on_the_form(alice):
    response = alice.post(reverse("ssh-key-list"), {"public_key": "not a key"})
    assert response.status_code == 400
    assert "not an OpenSSH public key" in response.content.decode()
    assert not SshKey.objects.exists()


def test_adding_needs_the_csrf_token(member):
    client = Client(enforce_csrf_checks=True)
    client.force_login(member)
    assert client.post(reverse("ssh-key-list"), {"public_key": KEY}).status_code == 403
    assert not SshKey.objects.exists()


def test_nobody_removes_anothers_key(alice, outsider):
    theirs = ssh_service.add_key(actor=Actor.for_user(outsider), name="m", public_key=KEY)
    alice.post(reverse("ssh-key-delete", args=[theirs.pk]))
    assert SshKey.objects.filter(pk=theirs.pk).exists()


def test_the_sandbox_page_shows_the_ssh_command(alice, running, settings, viewer):
    settings.SANDBOX_SSH_PUBLIC_HOST = "ssh.example.com"
    settings.SANDBOX_SSH_PUBLIC_PORT = 2222
    page = alice.get(reverse("sandbox-detail", args=[running.pk])).content.decode()
    assert f'value="ssh -p 2222 {running.pk}@ssh.example.com"' in page
    as_viewer = signed_in(viewer).get(reverse("sandbox-detail", args=[running.pk]))
    assert "ssh -p 2222" not in as_viewer.content.decode()
