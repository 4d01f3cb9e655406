"""Fixtures for the dashboard tests: signed-in clients and sandboxes made by the services."""

from __future__ import annotations

import pytest
from django.test import Client

from sandboxes.models import Sandbox
from sandboxes.services import lifecycle
from sandboxes.services.actors import Actor
from tests import taskqueue


@pytest.fixture
def queued_tasks(monkeypatch):
    """Tasks wait in the queue (as with a busy or absent worker) until ``drain()``."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", False)


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def alice(member) -> Client:
    return signed_in(member)


@pytest.fixture
def htmx(member) -> Client:
    """alice's client, sending every request as HTMX does."""
    client = Client(headers={"HX-Request": "true"})
    client.force_login(member)
    return client


def make_sandbox(team, user, **kwargs) -> Sandbox:
    kwargs.setdefault("preset_id", "1vcpu_1gb_8gb")
    sandbox = lifecycle.create_sandbox(team=team, actor=Actor.for_user(user), **kwargs)
    sandbox.refresh_from_db()
    return sandbox


@pytest.fixture
def running(memory_backend, team, member) -> Sandbox:
    sandbox = make_sandbox(team, member, name="dev")
    taskqueue.drain()  # in case this test queues tasks instead of running them at once
    sandbox.refresh_from_db()
    assert sandbox.status == "running"
    return sandbox
