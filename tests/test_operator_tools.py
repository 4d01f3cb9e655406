"""Management commands, the admin, tokens and deploy settings: the operator's tools."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from sandboxes.models import (
    ActiveSnapshot,
    ApiToken,
    Membership,
    Sandbox,
    SandboxEvent,
    Snapshot,
    Team,
)
from sandboxes.services import lifecycle
from sandboxes.services.actors import Actor
from sandboxes.services.errors import NotAllowed
from sandboxes.services.tokens import authenticate_token, create_api_token, revoke_api_token
from sandboxes.states import Status

ROOT = Path(__file__).resolve().parent.parent


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_create_team_prints_the_slug_and_refuses_bad_or_taken_slugs(django_user_model):
    owner = django_user_model.objects.create_user("olga")
    assert run("create_team", "platform", "--owner", "olga").strip() == "platform"
    assert Membership.objects.get(team__slug="platform").user == owner
    with pytest.raises(CommandError, match="already exists"):
        run("create_team", "platform")
    with pytest.raises(CommandError, match="lowercase"):
        run("create_team", "Not A Slug")
    assert Team.objects.count() == 1


@pytest.mark.django_db
def test_create_api_token_prints_only_a_working_token():
    out = run("create_api_token", "ci-bot", "--team", "ci", "--create-missing", "--read-only")
    raw = out.strip()
    assert "\n" not in raw
    assert raw.startswith("sbt_")
    token = authenticate_token(raw)
    assert token is not None
    assert (token.user.username, token.team.slug, token.can_write) == ("ci-bot", "ci", False)
    assert token.digest != raw
    assert raw not in str(ApiToken.objects.values_list())  # only a digest is stored
    assert not token.user.has_usable_password()


@pytest.mark.django_db
def test_a_viewers_token_is_read_only_however_it_is_made(viewer, team):
    raw = run("create_api_token", viewer.username, "--team", team.slug).strip()
    assert authenticate_token(raw).can_write is False  # promoting them later changes nothing


@pytest.mark.django_db
def test_create_api_token_without_create_missing_changes_nothing():
    with pytest.raises(CommandError, match="--create-missing"):
        run("create_api_token", "nobody", "--team", "nowhere")
    assert not Team.objects.exists()
    assert not ApiToken.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_import_snapshot_registers_the_next_version(memory_backend):
    out = run(
        "import_snapshot",
        "--provider",
        "memory",
        "--preset",
        "1vcpu_1gb_8gb",
        "--ref",
        "base",
        "--label",
        "golden",
        "--activate",
    )
    assert out.strip() == "memory_1vcpu_1gb_8gb_v2"
    snapshot = Snapshot.objects.get(snapshot_id="memory_1vcpu_1gb_8gb_v2")
    assert (snapshot.provider_ref, snapshot.label, snapshot.status) == ("base", "golden", "ready")
    assert ActiveSnapshot.objects.get(team=None, provider="memory").snapshot == snapshot
    with pytest.raises(CommandError, match="not enabled"):
        run("import_snapshot", "--provider", "nope", "--preset", "1vcpu_1gb_8gb", "--ref", "x")
    with pytest.raises(CommandError, match="preset"):
        run("import_snapshot", "--provider", "memory", "--preset", "3vcpu", "--ref", "x")
    assert Snapshot.objects.filter(provider="memory").count() == 2  # nothing else was made


@pytest.mark.django_db
def test_ensure_admin_runs_once(monkeypatch, django_user_model):
    monkeypatch.setenv("ADMIN_PASSWORD", "correct horse battery staple")
    run("ensure_admin")
    admin = django_user_model.objects.get(username="admin")
    assert admin.is_superuser
    assert admin.check_password("correct horse battery staple")
    assert Membership.objects.get(user=admin).team.slug == "default"
    assert run("ensure_admin") == ""
    assert django_user_model.objects.count() == 1


@pytest.mark.django_db
def test_tokens_expire_and_revoke(member, team):
    actor = Actor.for_user(member)
    token, raw = create_api_token(user=member, team=team, actor=actor, name="laptop")
    assert authenticate_token(raw) == token
    assert authenticate_token(raw + "x") is None
    assert authenticate_token("not-a-token") is None
    revoke_api_token(token=token, actor=actor)
    assert authenticate_token(raw) is None
    soon = timezone.now() + timedelta(seconds=60)
    expiring, raw2 = create_api_token(user=member, team=team, actor=actor, expires_at=soon)
    assert authenticate_token(raw2) == expiring
    ApiToken.objects.filter(pk=expiring.pk).update(expires_at=timezone.now() - timedelta(1))
    assert authenticate_token(raw2) is None
    assert list(
        SandboxEvent.objects.filter(team=team).values_list("action", flat=True).order_by("id")
    ) == ["create_token", "revoke_token", "create_token"]


@pytest.mark.django_db
def test_an_authenticated_token_reads_as_the_orm_reads_it(member, team):
    """The API's token lookup is hand-composed SQL: every field must convert as usual."""
    soon = timezone.now() + timedelta(hours=1)
    made, raw = create_api_token(
        user=member, team=team, actor=Actor.for_user(member), expires_at=soon, can_write=False
    )
    found = authenticate_token(raw)
    fresh = ApiToken.objects.select_related("user", "team").get(pk=made.pk)
    for ours, orms in ((found, fresh), (found.user, fresh.user), (found.team, fresh.team)):
        for field in type(orms)._meta.concrete_fields:
            value = getattr(ours, field.attname)
            assert value == getattr(orms, field.attname), field.name
            assert type(value) is type(getattr(orms, field.attname)), field.name
    assert (found.member_role, found.can_write, found.expires_at) == ("member", False, soon)


@pytest.mark.django_db
def test_token_use_is_recorded_at_most_once_a_minute(member, team):
    token, raw = create_api_token(user=member, team=team, actor=Actor.for_user(member))
    first = authenticate_token(raw).last_used_at
    assert first is not None
    assert authenticate_token(raw).last_used_at == first
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=first - timedelta(minutes=2))
    assert authenticate_token(raw).last_used_at > first - timedelta(minutes=1)


@pytest.mark.django_db
def test_members_only_make_tokens_for_themselves_in_their_teams(member, viewer, team, outsider):
    with pytest.raises(NotAllowed):
        create_api_token(user=viewer, team=team, actor=Actor.for_user(member))
    with pytest.raises(NotAllowed):
        create_api_token(user=outsider, team=team, actor=Actor.for_user(outsider))
    assert not ApiToken.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_admin_actions_call_the_services(memory_backend, admin_client, team, member):
    sandbox = lifecycle.create_sandbox(
        team=team, actor=Actor.for_user(member), preset_id="1vcpu_1gb_8gb"
    )
    url = "/admin/sandboxes/sandbox/"
    response = admin_client.post(url, {"action": "pause", "_selected_action": [sandbox.pk]})
    assert response.status_code == 302
    sandbox.refresh_from_db()
    assert sandbox.status == Status.PAUSED
    event = SandboxEvent.objects.filter(sandbox=sandbox, action="pause").order_by("id").first()
    assert event.actor_label == "admin"
    # A refused action is reported, and changes nothing.
    admin_client.post(url, {"action": "pause", "_selected_action": [sandbox.pk]})
    sandbox.refresh_from_db()
    assert sandbox.status == Status.PAUSED
    page = admin_client.get(f"{url}{sandbox.pk}/change/")
    assert page.status_code == 200
    assert b"pause" in page.content  # the audit trail inline
    admin_client.post(url, {"action": "delete", "_selected_action": [sandbox.pk]})
    sandbox.refresh_from_db()
    assert sandbox.status == Status.DELETED
    assert memory_backend.instances == {}


@pytest.mark.django_db(transaction=True)
def test_admin_imports_a_snapshot_version(memory_backend, admin_client):
    response = admin_client.post(
        "/admin/sandboxes/snapshot/import/",
        {"provider": "memory", "preset": "1vcpu_1gb_8gb", "ref": "base", "label": "from admin"},
    )
    assert response.status_code == 302
    assert Snapshot.objects.get(snapshot_id="memory_1vcpu_1gb_8gb_v2").label == "from admin"


@pytest.mark.django_db
def test_every_admin_page_renders(admin_client, team, member):
    for model in ("team", "membership", "preset", "snapshot", "activesnapshot", "sandbox"):
        assert admin_client.get(f"/admin/sandboxes/{model}/").status_code == 200, model
    assert admin_client.get("/admin/sandboxes/sandboxevent/").status_code == 200
    assert admin_client.get("/admin/sandboxes/apitoken/").status_code == 200
    assert admin_client.get("/admin/sandboxes/preset/add/").status_code == 200


@pytest.mark.django_db
def test_admin_preset_id_is_derived_from_the_size(admin_client):
    response = admin_client.post(
        "/admin/sandboxes/preset/add/",
        {"vcpus": 3, "memory_mb": 1536, "disk_gb": 20, "providers": '["local"]', "enabled": "on"},
    )
    assert response.status_code == 302
    from sandboxes.models import Preset

    assert Preset.objects.get(pk="3vcpu_1536mb_20gb").providers == ["local"]


@pytest.mark.django_db
def test_audit_events_cannot_be_changed(team):
    event = SandboxEvent.objects.create(
        team=team, actor_kind="system", actor_label="system", action="x", outcome="succeeded"
    )
    with pytest.raises(TypeError):
        event.save()
    with pytest.raises(TypeError):
        event.delete()
    with pytest.raises(TypeError):
        SandboxEvent.objects.filter(pk=event.pk).update(action="y")
    with pytest.raises(TypeError):
        SandboxEvent.objects.all().delete()


def test_check_deploy_passes_with_production_settings(tmp_path):
    env = {
        "PATH": os.environ["PATH"],
        "SECRET_KEY": "a-long-random-production-secret-key-" + "x" * 40,
        "ALLOWED_HOSTS": "sandboxes.example.com",
        "SANDBOXES_DATA_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_settings_refuse_to_start_without_a_secret_key(tmp_path):
    env = {"PATH": os.environ["PATH"], "SANDBOXES_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", "import config.settings"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "SECRET_KEY must be set unless DEBUG=1" in done.stderr


@pytest.mark.django_db
def test_sandbox_rows_are_not_deleted_from_the_admin(admin_client):
    assert admin_client.get("/admin/sandboxes/sandbox/add/").status_code == 403
    assert Sandbox.objects.count() == 0


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_stops_the_web_server_and_the_worker_on_sigterm(tmp_path):
    """`make run` behind a service manager or a script: SIGTERM to it alone stops every
    process it started, quickly, and frees the port."""
    port, ssh_port = _free_port(), _free_port()
    env = {
        "SANDBOX_SSH_PORT": str(ssh_port),
        "PATH": os.environ["PATH"],
        "DEBUG": "1",
        "SANDBOXES_DATA_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
        "ADMIN_PASSWORD": "correct horse battery staple",
        "SANDBOX_DEFAULT_IMAGE": "off",  # no Debian build in the background here
    }
    serve = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--addr", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # As when a script starts it with `&`: SIGINT ignored, inherited by the children.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    groups: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                answer = urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/login/", timeout=2)
                break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail("the dashboard did not answer within 90 s")
        assert answer.status == 200
        # uvicorn, qcluster and the SSH gateway lead their own groups
        groups = _children_of(serve.pid)
        assert len(groups) == 3
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=9) == 0  # before the 10 s grace ends in SIGKILL
        assert [pgid for pgid in groups if _group_alive(pgid)] == []
        for freed in (port, ssh_port):  # the ports are free again
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", freed), timeout=2).close()
    finally:
        if serve.poll() is None:
            serve.kill()
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)


def test_admin_preset_network_policy_is_validated(admin_client):
    from sandboxes.models import Preset

    bad = admin_client.post(
        "/admin/sandboxes/preset/add/",
        {
            "vcpus": 3,
            "memory_mb": 2048,
            "disk_gb": 20,
            "providers": '["local"]',
            "network_policy": "allowlist",
            "network_allow": '["10.0.0.0/8"]',
        },
    )
    assert bad.status_code == 200
    assert "public addresses only" in bad.content.decode()
    good = admin_client.post(
        "/admin/sandboxes/preset/add/",
        {
            "vcpus": 3,
            "memory_mb": 2048,
            "disk_gb": 20,
            "providers": '["local"]',
            "network_policy": "allowlist",
            "network_allow": '["PyPI.org"]',
        },
    )
    assert good.status_code == 302
    preset = Preset.objects.get(pk="3vcpu_2gb_20gb")
    assert (preset.network_policy, preset.network_allow) == ("allowlist", ["pypi.org"])
