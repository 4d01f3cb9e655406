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
