"""Token guessing: refused tokens counted per client address, then 429 whatever the token."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from tests.api.conftest import error_of

pytestmark = pytest.mark.django_db

GUESSER = "127.0.1.1"
OTHER = "127.0.1.2"


@pytest.fixture
def guess_limit(settings):
    settings.SANDBOX_API_AUTH_FAILURE_RATE = "3/min"


def with_token(secret: str, address: str, **headers) -> int:
    client = APIClient()
    return client.get(
        "/api/v1/config", HTTP_AUTHORIZATION=f"Bearer {secret}", REMOTE_ADDR=address, **headers
    )


def test_wrong_tokens_lock_out_the_address(guess_limit, api):
    codes = [with_token(f"sbt_guess{n}", GUESSER).status_code for n in range(3)]
    assert codes == [401, 401, 401]
    refused = with_token("sbt_guess4", GUESSER)
    assert refused.status_code == 429
    wait = int(refused["Retry-After"])
    assert 1 <= wait <= 60
    error = error_of(refused)
    assert (error["code"], error["retry_after"]) == ("throttled", wait)
    assert "failed authentications from your address" in error["message"]
    # The right token from that address is refused too: a correct guess shows nothing.
    assert with_token(api.secret, GUESSER).status_code == 429
    # From another address, the valid token works, and a wrong one is just wrong.
    assert with_token(api.secret, OTHER).status_code == 200
    assert with_token("sbt_nope", OTHER).status_code == 401


def test_malformed_headers_count_as_failures(guess_limit, api):
    client = APIClient()
    for _ in range(3):
        response = client.get(
            "/api/v1/config", HTTP_AUTHORIZATION="Bearer a b", REMOTE_ADDR=GUESSER
        )
        assert response.status_code == 401
    assert with_token(api.secret, GUESSER).status_code == 429


def test_valid_tokens_do_not_count(guess_limit, api):
    assert {with_token(api.secret, GUESSER).status_code for _ in range(10)} == {200}


def test_an_operator_resets_an_address(guess_limit, api):
    for n in range(3):
        with_token(f"sbt_guess{n}", GUESSER)
    assert with_token(api.secret, GUESSER).status_code == 429
    call_command("reset_api_auth_failures", GUESSER, stdout=None)
    assert with_token(api.secret, GUESSER).status_code == 200


def test_an_empty_rate_switches_the_guard_off(settings, api):
    settings.SANDBOX_API_AUTH_FAILURE_RATE = ""
    assert {with_token("sbt_guess", GUESSER).status_code for _ in range(10)} == {401}
    assert with_token(api.secret, GUESSER).status_code == 200


def test_the_service_proxy_counts_and_refuses_like_the_api(guess_limit, api):
    # Guessing through /s/<id>/<service>/ counts against the same address...
    client = APIClient()
    for n in range(3):
        response = client.get(
            "/s/sbx-none/web/", HTTP_AUTHORIZATION=f"Bearer sbt_guess{n}", REMOTE_ADDR=GUESSER
        )
        assert response.status_code == 401
    # ...so the API refuses that address, and so does the proxy.
    assert with_token(api.secret, GUESSER).status_code == 429
    refused = client.get(
        "/s/sbx-none/web/", HTTP_AUTHORIZATION=f"Bearer {api.secret}", REMOTE_ADDR=GUESSER
    )
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) >= 1
