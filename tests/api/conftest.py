"""Fixtures for the API tests: clients that carry a Bearer token of a given team."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from sandboxes.services.actors import Actor
from sandboxes.services.tokens import create_api_token


def bearer_client(user, team, **token_options) -> APIClient:
    """A client authenticated with a new token of ``user`` in ``team``."""
    token, secret = create_api_token(user=user, team=team, actor=Actor.system(), **token_options)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    client.token = token
    client.secret = secret
    return client


@pytest.fixture
def api(member, team) -> APIClient:
    """alice (member of alpha) with a writing token."""
    return bearer_client(member, team)


@pytest.fixture
def outsider_api(outsider, other_team) -> APIClient:
    """mallory (owner of beta) with a writing token: must never see alpha's objects."""
    return bearer_client(outsider, other_team)


@pytest.fixture
def admin_api(team_admin, team) -> APIClient:
    return bearer_client(team_admin, team)


def error_of(response) -> dict:
    """The ``error`` object of a failure, after checking the one shape."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message", "fields"} <= set(body["error"]), body
    assert isinstance(body["error"]["fields"], dict)
    return body["error"]
