"""Morph terminals beyond the contract: where the SSH gateway is, and that the API key
(sent as part of the SSH user name) never shows in what goes wrong."""

from __future__ import annotations

import socket

import pytest

from providers.errors import Conflict, Unavailable
from providers.morph import MorphProvider
from providers.morph.terminal import open_session
from providers.registry import ProviderConfigError, build_providers
from tests.morph_fake import FakeMorph
from tests.providers.test_morph import KEY, started


@pytest.fixture
def fake():
    server = FakeMorph(KEY).start()
    yield server
    server.stop()


def _provider(fake, **overrides) -> MorphProvider:
    config = {
        "MORPH_API_KEY": KEY,
        "MORPH_BASE_URL": fake.base_url,
        "MORPH_SSH_HOSTNAME": fake.ssh.hostname,
        "MORPH_SSH_PORT": str(fake.ssh.port),
        **overrides,
    }
    return MorphProvider.from_config(config)


def test_the_ssh_gateway_comes_from_the_settings(fake):
    provider = _provider(fake)
    instance = started(provider, fake)
    info = instance.ssh_info()
    assert (info.host, info.port) == ("127.0.0.1", fake.ssh.port)
    assert info.command == f"ssh -p {fake.ssh.port} {instance.id}@127.0.0.1"
    with instance.open_terminal("echo through-$((40+2))") as session:
        seen = b""
        while chunk := session.read(timeout=30):
            seen += chunk
        assert b"through-42" in seen
        assert session.wait(timeout=30) == 0
    default = build_providers({"SANDBOX_PROVIDERS": "morph", "MORPH_API_KEY": "k"})["morph"]
    assert default.client.ssh_port == 22  # the SDK's gateway when nothing is set


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("MORPH_SSH_PORT", "0"),
        ("MORPH_SSH_PORT", "70000"),
        ("MORPH_SSH_PORT", "ssh"),
        ("MORPH_SSH_HOSTNAME", "-oProxyCommand=x"),
        ("MORPH_SSH_HOSTNAME", "host name"),
    ],
)
def test_bad_gateway_settings_are_refused(key, value):
    config = {"SANDBOX_PROVIDERS": "morph", "MORPH_API_KEY": "k", key: value}
    with pytest.raises(ProviderConfigError, match=key):
        build_providers(config)


def test_a_refused_or_unreachable_gateway_never_shows_the_key(fake):
    provider = _provider(fake)
    instance = started(provider, fake)
    wrong = "morph-wrong-key-5d1e"

    def attempt(port: int, api_key: str):
        return open_session(
            instance,
            hostname="127.0.0.1",
            port=port,
            api_key=api_key,
            argv=["true"],
            cols=80,
            rows=24,
            variables={},
            redact=provider.redact,
        )

    with pytest.raises(Conflict) as refused:
        attempt(fake.ssh.port, wrong)
    assert wrong not in str(refused.value)
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(Unavailable) as unreachable:
        attempt(port, KEY)
    assert KEY not in str(unreachable.value)
    assert KEY not in repr(instance)


def test_a_stopped_instance_gets_no_terminal_even_at_the_gateway(fake):
    provider = _provider(fake)
    instance = started(provider, fake)
    instance.stop()
    with pytest.raises(Conflict):
        instance.open_terminal()
    # The gateway itself refuses an instance that is not ready.
    with pytest.raises(Conflict):
        open_session(
            instance,
            hostname="127.0.0.1",
            port=fake.ssh.port,
            api_key=KEY,
            argv=["true"],
            cols=80,
            rows=24,
            variables={},
            redact=provider.redact,
        )
