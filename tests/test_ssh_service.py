"""The SSH gateway's rules at the service layer (services/ssh.py), on the in-memory
provider: who a key or a token lets in, and what ``ssh -L`` may reach. The OpenSSH client
drives the same paths end to end in test_ssh_gateway.py."""

from __future__ import annotations

import os
import stat

import pytest

from sandboxes.models import Membership, SandboxEvent
from sandboxes.services import lifecycle
from sandboxes.services import ssh as ssh_service
from sandboxes.services.actors import Actor
from sandboxes.services.errors import InvalidInput, NotAllowed

pytestmark = pytest.mark.django_db(transaction=True)
PUBLIC = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKfbCVBdc8ceDgiJdxE6mWZxJ3Eyy0GUnbhTIQ6xM8Fk me@x"


@pytest.fixture
def actor(member) -> Actor:
    return Actor.for_user(member)


@pytest.fixture
def sandbox(memory_backend, team, actor):
    created = lifecycle.create_sandbox(team=team, actor=actor, preset_id="1vcpu_1gb_8gb")
    created.refresh_from_db()
    return created


def test_leaving_the_writers_ends_keys_and_tokens(sandbox, actor, member, team):
    key = ssh_service.add_key(actor=actor, name="k", public_key=PUBLIC)
    issued = ssh_service.issue_token(sandbox=sandbox, actor=actor)
    assert ssh_service.login_with_key(login=sandbox.pk, fingerprint=key.fingerprint, client="t")
    assert ssh_service.login_with_token(login=issued.token, client="t")
    Membership.objects.filter(user=member, team=team).update(role="viewer")
    assert (
        ssh_service.login_with_key(login=sandbox.pk, fingerprint=key.fingerprint, client="t")
        is None
    )
    assert ssh_service.login_with_token(login=issued.token, client="t") is None
    refused = SandboxEvent.objects.filter(sandbox=sandbox, action="ssh_login")
    assert {e.data["method"] for e in refused} == {"key", "token"}


def test_a_removed_key_opens_nothing(sandbox, actor):
    key = ssh_service.add_key(actor=actor, name="k", public_key=PUBLIC)
    ssh_service.delete_key(actor=actor, key_id=key.pk)
    assert (
        ssh_service.login_with_key(login=sandbox.pk, fingerprint=key.fingerprint, client="t")
        is None
    )


def test_a_token_opens_only_its_sandbox(sandbox, actor, team):
    other = lifecycle.create_sandbox(team=team, actor=actor, preset_id="1vcpu_1gb_8gb")
    issued = ssh_service.issue_token(sandbox=sandbox, actor=actor)
    login = ssh_service.login_with_token(login=issued.token, client="t")
    assert login.sandbox.pk == sandbox.pk != other.pk
    # The token is its login name: no other user name carries it to another sandbox.
    assert ssh_service.login_with_key(login=other.pk, fingerprint="SHA256:x", client="t") is None


def test_a_deleted_sandbox_takes_no_logins(sandbox, actor):
    key = ssh_service.add_key(actor=actor, name="k", public_key=PUBLIC)
    lifecycle.delete_sandbox(sandbox=sandbox, actor=actor)
    assert (
        ssh_service.login_with_key(login=sandbox.pk, fingerprint=key.fingerprint, client="t")
        is None
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not a key",
        "ssh-ed25519 AAAAnope",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        PUBLIC + "\n" + PUBLIC,
    ],
)
def test_only_one_public_key_line_is_taken(actor, text):
    with pytest.raises(InvalidInput):
        ssh_service.add_key(actor=actor, name="k", public_key=text)


def test_a_read_only_token_registers_no_key(member, team):
    from sandboxes.services.tokens import create_api_token

    token, _ = create_api_token(user=member, team=team, actor=Actor.system(), can_write=False)
    with pytest.raises(NotAllowed):
        ssh_service.add_key(actor=Actor.for_token(token), name="k", public_key=PUBLIC)


@pytest.mark.parametrize(
    ("host", "port", "allowed"),
    [
        ("localhost", 8080, True),
        ("127.0.0.1", 8080, True),
        ("::1", 8080, True),
        ("LOCALHOST.", 8080, True),
        ("localhost", 8081, False),  # not an exposed service
        ("127.0.0.2", 8080, False),
        # Any other address is refused by name, never dialled: the names stay on loopback.
        ("0.0.0.0", 8080, False),
        ("::ffff:127.0.0.1", 8080, False),
        ("sbx-someoneelse", 8080, False),
        ("example.com", 443, False),
    ],
)
def test_forwarding_reaches_only_the_sandboxs_exposed_services(sandbox, host, port, allowed):
    sandbox.services = [{"name": "web", "port": 8080, "url": "http://127.0.0.1:1/"}]
    refusal = ssh_service.forward_refusal(sandbox=sandbox, host=host, port=port)
    assert (refusal == "") is allowed, refusal


def test_forwarding_to_the_sandbox_by_its_own_name(sandbox):
    sandbox.services = [{"name": "web", "port": 8080, "url": "http://127.0.0.1:1/"}]
    assert ssh_service.forward_refusal(sandbox=sandbox, host=sandbox.pk, port=8080) == ""


def test_the_host_key_is_made_once_and_private(tmp_path):
    from sandboxes import ssh_gateway

    path = tmp_path / "keys" / "host"
    first = ssh_gateway.host_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert ssh_gateway.host_key(path).public_data == first.public_data  # kept, not remade
    path.chmod(0o644)
    with pytest.raises(PermissionError):
        ssh_gateway.host_key(path)


def test_guessing_tokens_is_throttled_per_address(sandbox, actor, settings):
    settings.SANDBOX_API_AUTH_FAILURE_RATE = "3/min"
    issued = ssh_service.issue_token(sandbox=sandbox, actor=actor)
    forged = ssh_service.TOKEN_PREFIX + "z" * 40
    for _ in range(3):
        assert ssh_service.login_with_token(login=forged, client="127.0.0.7") is None
    # Blocked: even the real token is refused from there, not from elsewhere.
    assert ssh_service.login_with_token(login=issued.token, client="127.0.0.7") is None
    assert ssh_service.login_with_token(login=issued.token, client="127.0.0.8") is not None
