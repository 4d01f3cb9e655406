"""Environments in the dashboard: create, edit, start in one click; the new-sandbox form
shows the team's lifecycle defaults and takes a repository and a setup script."""

from __future__ import annotations

import pytest

from sandboxes.models import Environment, Sandbox, SandboxEvent
from sandboxes.services import teams
from sandboxes.services.actors import Actor
from tests.dashboard.conftest import signed_in

pytestmark = pytest.mark.django_db(transaction=True)


def form(**extra):
    return {
        "name": "api",
        "description": "the API service",
        "preset": "1vcpu_1gb_8gb",
        "provider": "memory",
        "env": "MODE=dev",
        "setup": "echo ready\n",
        "services": "web=8080",
        "idle_timeout": "30m",
        **extra,
    }


def test_create_edit_and_start_an_environment(alice, memory_backend, team):
    page = alice.get("/environments/")
    assert page.status_code == 200
    assert b"No environments yet." in page.content
    created = alice.post("/environments/", form())
    assert created.status_code == 302, created.content.decode()[:2000]
    environment = Environment.objects.get(team=team, name="api")
    assert (environment.env, environment.services) == (
        {"MODE": "dev"},
        [{"name": "web", "port": 8080}],
    )
    assert environment.idle_timeout_seconds == 1800

    edit = alice.get(f"/environments/{environment.pk}/")
    assert b"MODE=dev" in edit.content
    assert b"web=8080" in edit.content
    saved = alice.post(f"/environments/{environment.pk}/", form(env="MODE=ci"))
    assert saved.status_code == 302
    environment.refresh_from_db()
    assert environment.env == {"MODE": "ci"}

    started = alice.post(f"/environments/{environment.pk}/start/")
    assert started.status_code == 302
    sandbox = Sandbox.objects.get(environment=environment)
    assert started["Location"] == f"/sandboxes/{sandbox.pk}/"
    assert (sandbox.status, sandbox.env, sandbox.setup_status) == (
        "running",
        {"MODE": "ci"},
        "succeeded",
    )
    detail = alice.get(started["Location"])
    assert b"api</a>" in detail.content  # the environment it came from
    assert b"succeeded" in detail.content
    assert SandboxEvent.objects.filter(action="environment_update").exists()


def test_a_bad_recipe_is_shown_on_the_form_and_nothing_is_saved(alice, memory_backend):
    response = alice.post("/environments/", form(repo_url="file:///etc", services="web"))
    assert response.status_code == 400
    assert b"write name=port" in response.content
    response = alice.post("/environments/", form(repo_url="file:///etc"))
    assert response.status_code == 400
    assert b"use https://" in response.content
    assert not Environment.objects.exists()


def test_viewers_see_environments_but_cannot_change_or_start_them(
    memory_backend, alice, viewer, team
):
    alice.post("/environments/", form())
    environment = Environment.objects.get()
    victor = signed_in(viewer)
    page = victor.get("/environments/")
    assert page.status_code == 200
    assert b"api" in page.content
    assert b"Start sandbox" not in page.content
    victor.post(f"/environments/{environment.pk}/start/")
    victor.post("/environments/", form(name="other"))
    assert not Sandbox.objects.exists()
    assert list(Environment.objects.values_list("name", flat=True)) == ["api"]


def test_the_new_sandbox_form_shows_the_team_defaults_and_takes_a_repository(
    alice, memory_backend, team
):
    teams.update_team(
        team=team,
        actor=Actor.system(),
        changes={"idle_timeout_seconds": 3600, "delete_parked_after_seconds": 86400},
    )
    page = alice.get("/sandboxes/new/")
    assert b"hibernate after 1h idle, delete after 1d stopped or paused" in page.content
    bad = alice.post(
        "/sandboxes/new/",
        {
            "preset": "1vcpu_1gb_8gb",
            "provider": "memory",
            "ttl_action": "stop",
            "repo_url": "https://robot:pw@example.invalid/x.git",
            "idempotency_key": "k" * 32,
        },
    )
    assert bad.status_code == 400
    assert b"no credentials in the URL" in bad.content
    assert not Sandbox.objects.exists()
