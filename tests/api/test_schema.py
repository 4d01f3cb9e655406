"""The OpenAPI schema: valid, and the API keeps to it (schemathesis, in-process over WSGI).

schemathesis generates requests for every operation from ``/api/schema/`` and checks each
answer: no 5xx, a documented status code and content type, a body that matches the
schema, and invalid input refused. Path parameters are pointed at the caller's real
objects so the operations do their work instead of all answering 404. The number of
examples per operation is bounded so CI stays fast.
"""

from __future__ import annotations

import copy
import json

import pytest
import schemathesis
from django.core import signals
from django.core.management import call_command
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sandboxes.models import SandboxEvent
from sandboxes.services import interactive, lifecycle, ssh
from sandboxes.services.actors import Actor
from sandboxes.services.environments import create_environment
from sandboxes.services.pools import create_pool
from sandboxes.services.snapshots import import_snapshot
from tests.api.conftest import bearer_client

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
MAX_EXAMPLES = 12


def test_the_schema_validates_without_warnings(db, tmp_path):
    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))
    text = target.read_text()
    assert "/api/v1/sandboxes/{sandbox_id}/wake-on" in text
    assert "bearerAuth" in text


@pytest.fixture
def world(db, memory_backend, team, team_admin, django_capture_on_commit_callbacks):
    """A running sandbox with a service, the team's own version, an environment, and an
    admin's token."""
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
    key = ssh.add_key(
        actor=actor,
        name="laptop",
        public_key="ssh-ed25519 "
        "AAAAC3NzaC1lZDI1NTE5AAAAIKfbCVBdc8ceDgiJdxE6mWZxJ3Eyy0GUnbhTIQ6xM8Fk",
    )
    yield {
        "headers": {"Authorization": f"Bearer {client.secret}"},
        "path": {
            "sandbox_id": sandbox.pk,
            "snapshot_id": version.snapshot_id,
            "name": "web",
            "token_id": client.token.pk,
            "environment_id": str(environment.pk),
            "pool_id": pool.pk,
            "key_id": key.pk,
        },
    }
    # Generated creates carry generated repositories: none may be cloned. (Their
    # provisioning waits for a commit that this test's transaction never makes.)
    assert not SandboxEvent.objects.filter(action__in=["setup", "setup_output"]).exists()


def served_schema() -> dict:
    """The schema as ``/api/schema/`` serves it (generated without a request, as there)."""
    generator = SchemaGenerator()
    return json.loads(OpenApiJsonRenderer().render(generator.get_schema(request=None, public=True)))


SCHEMA = served_schema()
OPERATIONS = sorted(op["operationId"] for item in SCHEMA["paths"].values() for op in item.values())
#: Every operation that takes a body (each documents 413 and 400).
BODY_OPERATIONS = sorted(
    op["operationId"]
    for item in SCHEMA["paths"].values()
    for op in item.values()
    if "requestBody" in op
)


def test_the_served_schema_is_the_one_tested(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    assert json.loads(response.content) == SCHEMA


@pytest.fixture
def wsgi_app():
    """The project's WSGI app, keeping the test's database connection open between requests.

    Django closes "old" connections when a request starts and finishes; inside a test that
    would close the connection the test's transaction lives on, so (like Django's own test
    client) the signal handlers are off while schemathesis calls the app.
    """
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield get_wsgi_application()
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("operation_id", OPERATIONS)
def test_the_api_keeps_to_its_schema(world, wsgi_app, operation_id, mode):
    schema = schemathesis.openapi.from_dict(copy.deepcopy(SCHEMA))
    schema.app = wsgi_app
    operation = schema.find_operation_by_id(operation_id)
    names = [p.name for p in operation.path_parameters]
    strategy = operation.as_strategy(
        mode, path_parameters={name: world["path"][name] for name in names} or None
    )

    @given(strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def keeps_to_the_schema(case):
        case.call_and_validate(headers=world["headers"], checks=CHECKS)

    keeps_to_the_schema()


#: Beyond the limits (issue 13, item 5): a body larger than DATA_UPLOAD_MAX_MEMORY_SIZE
#: (2.5 MB), and JSON nested deeper than the parser goes. Both are well-formed JSON.
OVERSIZED_BYTES = 3 * 1024 * 1024
NESTING_DEPTH = 5000
BEYOND_THE_LIMITS = {
    "a 3 MB body": (413, "request_too_large"),
    "JSON nested 5,000 levels deep": (400, "malformed_request"),
}


def beyond_the_limits(kind: str, generated: object) -> bytes:
    """The raw body that replaces the one schemathesis generated for the operation."""
    if kind == "a 3 MB body":
        # The generated body, made too large: the operation's own fields, plus filler.
        body = dict(generated) if isinstance(generated, dict) else {}
        body["filler"] = "x" * OVERSIZED_BYTES
        return json.dumps(body).encode()
    return ('{"a": ' * NESTING_DEPTH + "1" + "}" * NESTING_DEPTH).encode()


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(BEYOND_THE_LIMITS))
@pytest.mark.parametrize("operation_id", BODY_OPERATIONS)
def test_bodies_beyond_the_limits_get_4xx_in_the_error_shape(world, wsgi_app, operation_id, kind):
    """Generated requests for every operation with a body, the body swapped for one beyond
    the limits: the documented 4xx in the error shape, never a 5xx, nothing done."""
    schema = schemathesis.openapi.from_dict(copy.deepcopy(SCHEMA))
    schema.app = wsgi_app
    operation = schema.find_operation_by_id(operation_id)
    names = [p.name for p in operation.path_parameters]
    strategy = operation.as_strategy(
        GenerationMode.POSITIVE,
        path_parameters={name: world["path"][name] for name in names} or None,
    )
    expected_status, expected_code = BEYOND_THE_LIMITS[kind]

    @given(strategy)
    @settings(
        max_examples=2,  # each sends megabytes; the body, not the generated fields, matters
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def refused(case):
        response = case.call(
            headers={**world["headers"], "Content-Type": "application/json"},
            data=beyond_the_limits(kind, case.body),
        )
        case.validate_response(
            response,
            checks=[
                not_a_server_error,
                status_code_conformance,
                content_type_conformance,
                response_schema_conformance,
            ],
        )
        assert response.status_code == expected_status, response.text[:500]
        error = response.json()["error"]
        assert error["code"] == expected_code
        assert error["message"]

    refused()
