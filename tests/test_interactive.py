"""exec, exposed services, wake-on and settings: answered in the request, audited."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from providers.errors import Unavailable
from sandboxes import selectors
from sandboxes.models import Outcome, Sandbox, SandboxEvent
from sandboxes.services import interactive, lifecycle
from sandboxes.services.actors import Actor
from sandboxes.services.errors import (
    IllegalTransition,
    InvalidInput,
    NotAllowed,
    ProviderFailure,
)
from sandboxes.services.interactive import (
    exec_command,
    expose_service,
    hide_service,
    set_wake_on,
    update_sandbox_settings,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def actor(member) -> Actor:
    return Actor.for_user(member)


@pytest.fixture
def sandbox(memory_backend, team, actor) -> Sandbox:
    created = lifecycle.create_sandbox(team=team, actor=actor, preset_id="1vcpu_1gb_8gb")
    created.refresh_from_db()
    return created


def last_event(sandbox: Sandbox) -> SandboxEvent:
    return SandboxEvent.objects.filter(sandbox=sandbox).order_by("-id").first()


def test_exec_returns_output_and_audits_the_command(sandbox, actor):
    result = exec_command(sandbox=sandbox, actor=actor, command="echo hi; exit 4")
    assert (result.exit_code, result.stdout) == (4, "hi\n")
    event = last_event(sandbox)
    assert (event.action, event.outcome) == ("exec", Outcome.SUCCEEDED)
    assert event.data == {"command": "echo hi; exit 4", "exit_code": 4, "timed_out": False}


def loaded(sandbox: Sandbox) -> Sandbox:
    """The sandbox as a request loads it (the API's exec: team, preset, snapshot joined)."""
    return selectors.get_sandbox(team=sandbox.team, sandbox_id=sandbox.pk)


def writes_to_sandboxes(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if 'UPDATE "sandboxes_sandbox"' in q["sql"]]


def test_exec_counts_as_activity(sandbox, actor):
    Sandbox.objects.filter(pk=sandbox.pk).update(last_activity_at="2020-01-01T00:00:00Z")
    with CaptureQueriesContext(connection) as queries:
        exec_command(sandbox=loaded(sandbox), actor=actor, command=["true"])
    assert len(writes_to_sandboxes(queries)) == 1
    sandbox.refresh_from_db()
    assert sandbox.last_activity_at.year > 2020


def test_exec_writes_no_activity_when_the_stored_one_is_recent(sandbox, actor):
    recent = timezone.now() - interactive.ACTIVITY_GRANULARITY / 2
    Sandbox.objects.filter(pk=sandbox.pk).update(last_activity_at=recent)
    with CaptureQueriesContext(connection) as queries:
        exec_command(sandbox=loaded(sandbox), actor=actor, command=["true"])
    assert writes_to_sandboxes(queries) == []
    sandbox.refresh_from_db()
    assert sandbox.last_activity_at == recent


def test_exec_on_a_running_sandbox_is_four_statements(
    sandbox, actor, settings, django_assert_num_queries
):
    """A team slot, a site slot, freeing both, the audit event: nothing else (the sandbox
    was just started, so its activity is recent). A new statement here is one more on
    every exec: count it in on purpose."""
    settings.SANDBOX_API_THROTTLE_STORE = "database"
    settings.SANDBOX_LONG_CALLS_PER_TEAM, settings.SANDBOX_LONG_CALLS_TOTAL = 4, 32
    running = loaded(sandbox)
    with django_assert_num_queries(4):
        exec_command(sandbox=running, actor=actor, command=["true"])


@pytest.mark.parametrize(
    ("command", "timeout"),
    [("", 10), ([], 10), ([1, 2], 10), ("x" * 70000, 10), ("true", 0), ("true", 4000)],
)
def test_exec_refuses_bad_input(sandbox, actor, command, timeout):
    with pytest.raises(InvalidInput):
        exec_command(sandbox=sandbox, actor=actor, command=command, timeout_seconds=timeout)


def test_exec_needs_a_running_sandbox_and_a_writer(sandbox, actor, viewer):
    with pytest.raises(NotAllowed):
        exec_command(sandbox=sandbox, actor=Actor.for_user(viewer), command="true")
    lifecycle.pause_sandbox(sandbox=sandbox, actor=actor)
    sandbox.refresh_from_db()
    with pytest.raises(IllegalTransition):
        exec_command(sandbox=sandbox, actor=actor, command="true")


def test_a_provider_failure_in_exec_is_reported_and_audited(sandbox, actor, memory_backend):
    memory_backend.faults["exec"] = [Unavailable("agent unreachable")]
    with pytest.raises(ProviderFailure) as failed:
        exec_command(sandbox=sandbox, actor=actor, command="true")
    assert failed.value.code == "provider_unavailable"
    assert (last_event(sandbox).action, last_event(sandbox).outcome) == ("exec", Outcome.FAILED)


def test_expose_and_hide_a_service(sandbox, actor, memory_backend):
    service = expose_service(sandbox=sandbox, actor=actor, name="web", port=8080)
    assert service["url"].startswith("http://")
    sandbox.refresh_from_db()
    assert sandbox.services == [service]
    assert memory_backend.instances[sandbox.provider_ref].services["web"].port == 8080
    again = expose_service(sandbox=sandbox, actor=actor, name="web", port=9090)
    sandbox.refresh_from_db()
    assert sandbox.services == [again]  # replaced by name, not duplicated
    hide_service(sandbox=sandbox, actor=actor, name="web")
    sandbox.refresh_from_db()
    assert sandbox.services == []
    assert memory_backend.instances[sandbox.provider_ref].services == {}
    assert [e.action for e in SandboxEvent.objects.filter(sandbox=sandbox).order_by("id")][-3:] == [
        "expose_service",
        "expose_service",
        "hide_service",
    ]


@pytest.mark.parametrize(("name", "port"), [("Web", 80), ("-x", 80), ("web", 0), ("web", 70000)])
def test_expose_refuses_bad_names_and_ports(sandbox, actor, name, port, memory_backend):
    with pytest.raises(InvalidInput):
        expose_service(sandbox=sandbox, actor=actor, name=name, port=port)
    assert memory_backend.instances[sandbox.provider_ref].services == {}


def test_hiding_an_unknown_service_is_refused(sandbox, actor):
    with pytest.raises(InvalidInput):
        hide_service(sandbox=sandbox, actor=actor, name="nope")


def test_a_provider_failure_exposing_changes_nothing(sandbox, actor, memory_backend):
    memory_backend.faults["expose"] = [Unavailable("proxy down")]
    with pytest.raises(ProviderFailure):
        expose_service(sandbox=sandbox, actor=actor, name="web", port=8080)
    sandbox.refresh_from_db()
    assert sandbox.services == []


def test_wake_on_is_stored_and_passed_to_the_provider(sandbox, actor, memory_backend):
    set_wake_on(sandbox=sandbox, actor=actor, http=True, ssh=False)
    sandbox.refresh_from_db()
    assert (sandbox.wake_on_http, sandbox.wake_on_ssh) == (True, False)
    assert memory_backend.instances[sandbox.provider_ref].wake_on == (True, False)
    assert last_event(sandbox).data == {"http": True, "ssh": False}


def test_wake_on_needs_no_provider_support(sandbox, actor, memory_backend):
    # The proxy (HTTP) and the SSH gateway wake the sandbox themselves.
    memory_backend.disabled.add("supports_wake_on")
    set_wake_on(sandbox=sandbox, actor=actor, http=True, ssh=True)
    sandbox.refresh_from_db()
    assert (sandbox.wake_on_http, sandbox.wake_on_ssh) == (True, True)
    assert memory_backend.instances[sandbox.provider_ref].wake_on == (False, False)


def test_settings_change_only_what_is_given(sandbox, actor):
    update_sandbox_settings(sandbox=sandbox, actor=actor, ttl_seconds=120, name="renamed")
    sandbox.refresh_from_db()
    assert sandbox.name == "renamed"
    assert (sandbox.expires_at - sandbox.started_at).total_seconds() == 120
    assert sandbox.ttl_action == "stop"
    update_sandbox_settings(sandbox=sandbox, actor=actor, ttl_seconds=None)
    sandbox.refresh_from_db()
    assert sandbox.expires_at is None
    assert sandbox.name == "renamed"
    idle = sandbox.idle_timeout_seconds
    with pytest.raises(InvalidInput):
        update_sandbox_settings(sandbox=sandbox, actor=actor, idle_timeout_seconds=-5)
    sandbox.refresh_from_db()
    assert sandbox.idle_timeout_seconds == idle
    assert last_event(sandbox).action == "update_settings"
