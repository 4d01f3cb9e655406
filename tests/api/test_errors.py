"""One error shape everywhere, including routes and methods that do not exist."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.api.conftest import error_of

pytestmark = pytest.mark.django_db


def test_an_unknown_api_path_is_json_404(api):
    response = api.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert error_of(response)["code"] == "not_found"


def test_pages_outside_the_api_keep_html_404(db):
    response = APIClient().get("/no-such-page/")
    assert response.status_code == 404
    assert "application/json" not in response["Content-Type"]


def test_a_method_the_route_lacks_is_405(api):
    response = api.put("/api/v1/sandboxes", {}, format="json")
    assert response.status_code == 405
    assert error_of(response)["code"] == "method_not_allowed"
    assert api.options("/api/v1/sandboxes").status_code == 405


def test_the_schema_and_docs_are_served_without_a_cdn(db):
    client = APIClient()
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    assert schema.json()["openapi"].startswith("3.1")
    assert "/api/v1/sandboxes/{sandbox_id}/exec" in schema.json()["paths"]
    for page in ("/api/docs/", "/api/redoc/"):
        html = client.get(page).content.decode()
        assert "drf_spectacular_sidecar" in html, page
        assert "cdn" not in html.lower(), page
        assert "unpkg" not in html.lower(), page


def test_a_bug_answers_500_in_the_one_shape_and_is_logged(caplog):
    from django.test import RequestFactory

    from sandboxes.api.errors import exception_handler, server_error

    with caplog.at_level("ERROR", logger="sandboxes.api.errors"):
        response = exception_handler(RuntimeError("boom"), {"view": object()})
    assert response.status_code == 500
    assert response.data == {
        "error": {"code": "server_error", "message": "internal error; it was logged", "fields": {}}
    }
    assert "boom" in caplog.text  # the traceback is in the log, not in the answer
    page = server_error(RequestFactory().get("/api/v1/sandboxes"))
    assert page.status_code == 500
    assert page["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/sandboxes/sbx-a%00b",
        "/api/v1/sandboxes/sbx-a%00b/events",
        "/api/v1/snapshots/memory_1vcpu_1gb_8gb_v1%00",
        "/api/v1/snapshots/memory_1vcpu_1gb_8gb%00",
    ],
)
def test_an_id_with_a_nul_character_is_not_found(api, path):
    """Not a 500 on PostgreSQL, which cannot compare text with NUL in it."""
    response = api.get(path)
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


@pytest.fixture
def routes_with_a_body(memory_backend, team, team_admin, django_capture_on_commit_callbacks):
    """Every API operation that takes a body, its path filled with the team's real objects,
    and a client allowed to call them all."""
    from sandboxes.services import interactive, lifecycle
    from sandboxes.services.actors import Actor
    from sandboxes.services.environments import create_environment
    from sandboxes.services.pools import create_pool
    from sandboxes.services.snapshots import import_snapshot
    from tests.api.conftest import bearer_client

    actor = Actor.for_user(team_admin)
    with django_capture_on_commit_callbacks(execute=True):
        sandbox = lifecycle.create_sandbox(team=team, actor=actor, preset_id="1vcpu_1gb_8gb")
    sandbox.refresh_from_db()
    interactive.expose_service(sandbox=sandbox, actor=actor, name="web", port=8080)
    version = import_snapshot(
        provider="memory", preset_id="1vcpu_1gb_8gb", ref="base", actor=actor, team=team
    )
    environment = create_environment(
        team=team, actor=actor, data={"name": "web", "preset": "1vcpu_1gb_8gb"}
    )
    pool = create_pool(actor=actor, team=team, snapshot=version, target_size=0)
    client = bearer_client(team_admin, team)
    values = {
        "pool_id": pool.pk,
        "sandbox_id": sandbox.pk,
        "snapshot_id": version.snapshot_id,
        "name": "web",
        "token_id": client.token.pk,
        "environment_id": environment.pk,
    }
    schema = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    routes = [
        (method.upper(), path.format(**values))
        for path, operations in schema.json()["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    ]
    assert ("POST", "/api/v1/sandboxes") in routes
    assert ("POST", "/api/sandboxes/start") in routes
    return client, routes


def test_a_body_over_the_upload_limit_is_413_on_every_route(routes_with_a_body, settings):
    client, routes = routes_with_a_body
    body = b'{"name": "' + b"a" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE + b'"}'
    for method, path in routes:
        response = client.generic(method, path, body, content_type="application/json")
        assert response.status_code == 413, (method, path, response.content)
        error = error_of(response)
        assert error["code"] == "request_too_large", (method, path)
        assert str(settings.DATA_UPLOAD_MAX_MEMORY_SIZE) in error["message"]


def test_json_nested_too_deeply_to_parse_is_400_on_every_route(routes_with_a_body):
    client, routes = routes_with_a_body
    body = "[" * 5000 + "]" * 5000
    for method, path in routes:
        response = client.generic(method, path, body, content_type="application/json")
        assert response.status_code == 400, (method, path, response.content)
        assert error_of(response)["code"] == "malformed_request", (method, path)


def test_bad_bodies_to_the_dashboard_are_refused_not_500(member, settings):
    from django.test import Client

    client = Client()
    client.force_login(member)
    big = "a" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    response = client.post("/sandboxes/new/", {"name": big})
    assert response.status_code == 400
    deep = "[" * 5000 + "]" * 5000
    response = client.post("/sandboxes/new/", deep, content_type="application/json")
    assert response.status_code < 500
