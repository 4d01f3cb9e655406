"""Terminal sessions through the service layer: who may open one, and the audit trail.

The in-memory provider's terminal is a real pty on the host (a test double); the last
test opens one in a real ``local`` sandbox through the same service.
"""

from __future__ import annotations

import pytest

from providers.errors import Unavailable
from sandboxes.models import Outcome, Sandbox, SandboxEvent
from sandboxes.services import lifecycle
from sandboxes.services.actors import Actor
from sandboxes.services.errors import (
    CapabilityMissing,
    IllegalTransition,
    InvalidInput,
    NotAllowed,
    ProviderFailure,
)
from sandboxes.services.terminals import open_terminal
from sandboxes.services.tokens import create_api_token
from tests.conformance.test_terminal import read_to_end, read_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def actor(member) -> Actor:
    return Actor.for_user(member)


@pytest.fixture
def sandbox(memory_backend, team, actor) -> Sandbox:
    created = lifecycle.create_sandbox(team=team, actor=actor, preset_id="1vcpu_1gb_8gb")
    created.refresh_from_db()
    return created


def terminal_events(sandbox: Sandbox) -> list[SandboxEvent]:
    return list(
        SandboxEvent.objects.filter(sandbox=sandbox, action__startswith="terminal_").order_by("id")
    )


def test_a_session_is_audited_with_who_when_and_how_long(sandbox, actor, member):
    with open_terminal(sandbox=sandbox, actor=actor, cols=100, rows=30) as terminal:
        terminal.write(b"echo sbx-$((6*7))\n")
        read_until(terminal, rb"sbx-42")
        [opened] = terminal_events(sandbox)
        assert (opened.action, opened.outcome) == ("terminal_open", Outcome.SUCCEEDED)
        assert (opened.actor_user, opened.actor_label) == (member, member.username)
        assert opened.data["command"] == "(login shell)"
        assert (opened.data["cols"], opened.data["rows"]) == (100, 30)
        terminal.write(b"exit 5\n")
        assert terminal.wait(timeout=30) == 5
    opened, closed = terminal_events(sandbox)
    assert (closed.action, closed.outcome) == ("terminal_close", Outcome.SUCCEEDED)
    assert closed.actor_user == member
    assert closed.data["session"] == opened.data["session"]
    assert closed.data["opened_event"] == opened.pk
    assert closed.data["exit_code"] == 5
    # The duration is the session's: from opening to closing, as the two rows show.
    span = (closed.created_at - opened.created_at).total_seconds()
    assert 0 <= closed.data["duration_seconds"] <= span + 0.001
    assert closed.data["duration_seconds"] > 0


def test_closing_twice_records_the_end_once(sandbox, actor):
    terminal = open_terminal(sandbox=sandbox, actor=actor, command=["sleep", "300"])
    first = terminal.close()
    assert terminal.close() == first
    assert [e.action for e in terminal_events(sandbox)] == ["terminal_open", "terminal_close"]
    assert first.data["exit_code"] is not None  # the command was killed, not left running


def test_a_command_runs_instead_of_the_shell(sandbox, actor):
    with open_terminal(
        sandbox=sandbox, actor=actor, command="echo [$GREETING]", env={"GREETING": "hi"}
    ) as terminal:
        assert b"[hi]" in read_to_end(terminal)
    assert terminal_events(sandbox)[0].data["command"] == "echo [$GREETING]"


def test_a_terminal_gets_the_sandboxs_variables_and_secrets(sandbox, actor, team):
    from sandboxes.services import team_secrets

    team_secrets.set_secret(team=team, actor=actor, name="API_KEY", value="k-123")
    Sandbox.objects.filter(pk=sandbox.pk).update(env={"MODE": "dev"}, secret_names=["API_KEY"])
    sandbox.refresh_from_db()
    with open_terminal(sandbox=sandbox, actor=actor, command="echo [$MODE:$API_KEY]") as term:
        assert b"[dev:k-123]" in read_to_end(term)
    assert "k-123" not in str(terminal_events(sandbox)[0].data)


def test_viewers_read_only_tokens_and_other_teams_get_no_terminal(
    sandbox, viewer, member, outsider, team
):
    token, _ = create_api_token(
        user=member, team=team, actor=Actor.for_user(member), can_write=False
    )
    for refused in (Actor.for_user(viewer), Actor.for_token(token), Actor.for_user(outsider)):
        with pytest.raises(NotAllowed):
            open_terminal(sandbox=sandbox, actor=refused)
    events = terminal_events(sandbox)
    assert [(e.action, e.outcome) for e in events] == [("terminal_open", Outcome.REFUSED)] * 3
    assert [e.actor_label for e in events] == [
        viewer.username,
        f"{member.username} (token {token.prefix})",
        outsider.username,
    ]


def test_a_writing_token_of_the_team_gets_one(sandbox, member, team):
    token, _ = create_api_token(user=member, team=team, actor=Actor.for_user(member))
    with open_terminal(sandbox=sandbox, actor=Actor.for_token(token), command="true") as t:
        assert t.wait(timeout=30) == 0
    assert terminal_events(sandbox)[0].actor_token == token


def test_only_a_running_sandbox_with_the_capability(sandbox, actor, memory_backend):
    lifecycle.pause_sandbox(sandbox=sandbox, actor=actor)
    sandbox.refresh_from_db()
    with pytest.raises(IllegalTransition):
        open_terminal(sandbox=sandbox, actor=actor)
    memory_backend.disabled.add("supports_terminal")
    with pytest.raises(CapabilityMissing) as missing:
        open_terminal(sandbox=sandbox, actor=actor)
    assert missing.value.capability == "supports_terminal"
    assert terminal_events(sandbox) == []


@pytest.mark.parametrize(
    "arguments",
    [
        {"cols": 0},
        {"rows": 5000},
        {"cols": "80"},
        {"command": ""},
        {"command": []},
        {"command": "x" * 70000},
        {"env": {"NOT A NAME": "x"}},
        {"env": {f"V{i}": "x" for i in range(100)}},
    ],
)
def test_bad_requests_are_refused_before_anything_opens(sandbox, actor, arguments):
    with pytest.raises(InvalidInput):
        open_terminal(sandbox=sandbox, actor=actor, **arguments)
    assert terminal_events(sandbox) == []


def test_a_provider_failure_is_reported_and_audited(sandbox, actor, memory_backend):
    memory_backend.faults["terminal"] = [Unavailable("agent unreachable")]
    with pytest.raises(ProviderFailure) as failed:
        open_terminal(sandbox=sandbox, actor=actor)
    assert "agent unreachable" in failed.value.message
    [event] = terminal_events(sandbox)
    assert (event.action, event.outcome) == ("terminal_open", Outcome.FAILED)
    assert "agent unreachable" in event.message


def test_typing_counts_as_activity(sandbox, actor):
    Sandbox.objects.filter(pk=sandbox.pk).update(last_activity_at="2020-01-01T00:00:00Z")
    with open_terminal(sandbox=sandbox, actor=actor, command="cat") as terminal:
        sandbox.refresh_from_db()
        assert sandbox.last_activity_at.year > 2020  # opening is using it
        Sandbox.objects.filter(pk=sandbox.pk).update(last_activity_at="2020-01-01T00:00:00Z")
        terminal._touched -= 3600  # as if the last note was an hour ago
        terminal.write(b"typed\n")
        read_until(terminal, rb"typed")
    sandbox.refresh_from_db()
    assert sandbox.last_activity_at.year > 2020


def test_a_terminal_in_a_local_sandbox(local_backend, team, actor, settings):
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "sync": True}
    created = lifecycle.create_sandbox(team=team, actor=actor, preset_id="1vcpu_1gb_8gb")
    created.refresh_from_db()
    assert created.status == "running", created.last_error
    with open_terminal(sandbox=created, actor=actor, cols=91, rows=17) as terminal:
        terminal.write(b"stty size; hostname\n")
        read_until(terminal, rb"17 91\r\n" + created.provider_ref.encode())
        terminal.write(b"exit 4\n")
        assert terminal.wait(timeout=30) == 4
    assert [e.action for e in terminal_events(created)] == ["terminal_open", "terminal_close"]
