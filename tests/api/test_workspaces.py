"""Repositories, variables, secrets and setup scripts: a sandbox as a place to work.

The journey runs real `local` sandboxes whose outbound network is a test-built internet
(tests/netns_world.py): the git server and the package index (tests/git_server.py) run
on a public-range test host inside a network namespace this module makes, so the clone
and the pip install happen inside the sandbox, over its own network, and no packet
leaves the namespaces. Validation runs against the in-memory provider.
"""

from __future__ import annotations

import logging
import os

import pytest

from sandboxes.models import Sandbox, SandboxEvent, TeamSecret
from sandboxes.services import workspaces
from tests import netns_world as w
from tests.api.conftest import bearer_client, error_of
from tests.git_server import USER, GitServer, listening
from tests.system import require

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "gh-9Qz7-only-for-the-clone"
TOKEN = "api-key-5c1e-for-setup"
GIT_PORT = 8080
SMALL = "1vcpu_1gb_8gb"


@pytest.fixture
def api(member, team):
    return bearer_client(member, team)


# --- validation (in-memory provider) ---------------------------------------------------


@pytest.mark.parametrize(
    ("repo", "setup", "field"),
    [
        ({"url": "file:///etc"}, None, "repo.url"),
        ({"url": "https://robot:pw@example.invalid/x.git"}, None, "repo.url"),
        ({"url": "-uhttps://example.invalid/x.git"}, None, "repo.url"),
        ({"url": "https://example.invalid/x .git"}, None, "repo.url"),
        ({"url": "https://example.invalid/x.git", "branch": "a..b"}, None, "repo.branch"),
        ({"url": "https://example.invalid/x.git", "branch": "-x"}, None, "repo.branch"),
        ({"url": "https://example.invalid/x.git", "path": "../out"}, None, "repo.path"),
        ({"url": "https://example.invalid/x.git", "path": "/etc"}, None, "repo.path"),
        ({"url": "https://example.invalid/x.git", "credential": "NOPE"}, None, "repo.credential"),
        ({"url": "https://example.invalid/x.git", "token": "x"}, None, "repo"),
        (None, "echo \0", "setup"),
    ],
)
def test_bad_repositories_and_scripts_are_refused_and_change_nothing(
    memory_backend, api, repo, setup, field
):
    body = {"preset": SMALL, "provider": "memory"}
    if repo is not None:
        body["repo"] = repo
    if setup is not None:
        body["setup"] = setup
    response = api.post("/api/v1/sandboxes", body, format="json")
    assert response.status_code == 400, response.content
    assert any(name.startswith(field) for name in error_of(response)["fields"]), response.json()
    assert not Sandbox.objects.exists()


def test_paths_default_to_the_repository_name_inside_the_home():
    assert workspaces.check_path(None, "https://example.invalid/team/app.git") == "app"
    assert workspaces.check_path("", "git@example.invalid:team/tool") == "tool"
    assert workspaces.check_path("~/src/app", "https://example.invalid/app") == "src/app"


def test_a_sandbox_without_a_repository_has_nothing_to_set_up(memory_backend, api):
    created = api.post("/api/v1/sandboxes", {"preset": SMALL}, format="json").json()
    shown = api.get(f"/api/v1/sandboxes/{created['id']}").json()
    assert (shown["repo"], shown["setup_status"], shown["environment"]) == (None, "", None)


def test_without_terminals_each_step_runs_as_one_exec(memory_backend, api, tmp_path, monkeypatch):
    """Providers without terminals (PVE, Morph): the output is stored when a step ends."""
    memory_backend.disabled.add("supports_terminal")
    monkeypatch.setenv("HOME", str(tmp_path))  # the in-memory provider's exec inherits it
    server = GitServer(tmp_path / "git", password=PASSWORD)
    server.add_repo("app", {"README": "hello\n"})
    sock = listening("127.0.0.1")
    server.serve(sock)
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/public/app.git"
        created = api.post(
            "/api/v1/sandboxes",
            {"preset": SMALL, "repo": {"url": url}, "setup": "cat README; exit 3"},
            format="json",
        ).json()
    finally:
        server.close()
    shown = api.get(f"/api/v1/sandboxes/{created['id']}").json()
    assert (shown["status"], shown["setup_status"]) == ("running", "failed")
    assert shown["setup_error"] == "setup failed (exit code 3): hello"
    assert (tmp_path / "app" / "README").read_text() == "hello\n"
    steps = list(
        SandboxEvent.objects.filter(sandbox_id=created["id"], action="setup_output")
        .order_by("id")
        .values_list("data__step", flat=True)
    )
    assert steps == ["clone", "setup"]


def test_the_sweep_fails_a_setup_whose_worker_died_and_requeues_a_lost_one(
    memory_backend, api, settings
):
    from datetime import timedelta

    from django.utils import timezone

    from sandboxes.services.sweep import run_sweep

    made = [
        api.post("/api/v1/sandboxes", {"preset": SMALL, "setup": "true"}, format="json").json()
        for _ in range(2)
    ]
    long_ago = timezone.now() - timedelta(hours=2)
    # One whose worker died mid-setup, one whose setup task never ran.
    Sandbox.objects.filter(pk=made[0]["id"]).update(
        setup_status="running", setup_started_at=long_ago
    )
    Sandbox.objects.filter(pk=made[1]["id"]).update(setup_status="pending", started_at=long_ago)
    report = run_sweep()
    assert report.actions["setups"] == 2
    died, lost = (api.get(f"/api/v1/sandboxes/{m['id']}").json() for m in made)
    assert (died["status"], died["setup_status"]) == ("running", "failed")
    assert died["setup_error"].startswith("the worker running the setup stopped")
    assert lost["setup_status"] == "succeeded"  # enqueued again, and ran
    assert run_sweep().actions["setups"] == 0


# --- the journey: real sandboxes, a git server on a test host ---------------------------


@pytest.fixture(scope="module")
def world():
    require("root", os.geteuid() == 0, "network namespaces need root")
    require("git", bool(os.path.exists("/usr/bin/git")), "apt-get install -y git")
    from tests.providers.test_local_egress import require_network_tools

    require_network_tools()
    with w.World() as made:
        yield made


@pytest.fixture(scope="module")
def git_server(world, tmp_path_factory):
    server = GitServer(tmp_path_factory.mktemp("git"), password=PASSWORD)
    server.add_repo(
        "app",
        {"README": "main branch\n", "run.sh": "echo ran\n"},
        branches={"feature": {"README": "feature branch\n"}},
    )
    server.add_repo("secret-app", {"README": "private code\n"}, private=True)
    server.add_wheel("sbxdemo", "1.0", "VALUE = 42\n")
    sock = w.in_netns(world.world, lambda: listening(w.PUBLIC, GIT_PORT))
    server.serve(sock)
    yield server
    server.close()


@pytest.fixture
def networked_local(local_backend, world, settings):
    """The local provider whose sandboxes' traffic leaves into the test world."""
    from sandboxes.services import backends

    settings.SANDBOX_PROVIDER_CONFIG = {
        **settings.SANDBOX_PROVIDER_CONFIG,
        "LOCAL_SANDBOX_NET_NAMESPACE": world.upstream,
        "LOCAL_SANDBOX_DNS": w.GATEWAY,
        # Four small sandboxes at once (each asks for 1 GiB; they use a few MiB).
        "LOCAL_SANDBOX_TOTAL_MEMORY_MB": "4608",
    }
    backends.reset()
    yield backends.get_provider("local")
    backends.reset()


def base_url() -> str:
    return f"http://{w.PUBLIC}:{GIT_PORT}"


def create(api, **body):
    body = {"preset": SMALL, "provider": "local", "network_policy": "internet", **body}
    response = api.post("/api/v1/sandboxes", body, format="json")
    assert response.status_code == 202, response.content
    return response.json()["id"]


def run(api, sandbox_id: str, command: str) -> dict:
    response = api.post(f"/api/v1/sandboxes/{sandbox_id}/exec", {"command": command}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def test_a_workspace_journey(
    networked_local, git_server, api, client, member, team, caplog, settings
):
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "sync": True}
    caplog.set_level(logging.DEBUG)
    assert (
        api.put("/api/v1/secrets/GIT_TOKEN", {"value": PASSWORD}, format="json").status_code == 201
    )
    assert api.put("/api/v1/secrets/API_KEY", {"value": TOKEN}, format="json").status_code == 201

    # A public repository on a branch, a setup script that pip-installs from the index
    # the test serves, a plain variable and a secret.
    public = create(
        api,
        repo={"url": f"{base_url()}/public/app.git", "branch": "feature", "path": "src/app"},
        env={"GREETING": "hello"},
        secrets=["API_KEY"],
        setup=(
            f'test "${{#API_KEY}}" = {len(TOKEN)}\n'
            'echo "setting up in $(pwd) key=$API_KEY"\n'
            "python3 -m pip install --isolated --no-cache-dir --target deps "
            f"--index-url {base_url()}/simple/ --trusted-host {w.PUBLIC} sbxdemo\n"
            'echo "$GREETING" > greeting.txt\n'
        ),
    )
    shown = api.get(f"/api/v1/sandboxes/{public}").json()
    assert shown["status"] == "running", shown
    assert shown["setup_status"] == "succeeded", list(
        SandboxEvent.objects.filter(sandbox_id=public).values_list("action", "message", "data")
    )
    assert shown["repo"]["branch"] == "feature"
    out = run(api, public, "cd ~/src/app && cat README greeting.txt && git branch --show-current")
    assert out["stdout"] == "feature branch\nhello\nfeature\n"
    imported = run(
        api,
        public,
        "cd ~/src/app && PYTHONPATH=deps python3 -c 'import sbxdemo; print(sbxdemo.VALUE)'",
    )
    assert imported["stdout"] == "42\n"
    output = "".join(
        e.data["output"]
        for e in SandboxEvent.objects.filter(sandbox_id=public, action="setup_output").order_by(
            "id"
        )
    )
    assert "Successfully installed sbxdemo-1.0" in output
    assert "key=[secret]" in output  # the script echoed the secret: masked in the timeline

    # A private repository: refused without the credential, cloned with it.
    private_url = f"{base_url()}/private/secret-app.git"
    without = create(api, repo={"url": private_url})
    failed = api.get(f"/api/v1/sandboxes/{without}").json()
    assert (failed["status"], failed["setup_status"]) == ("running", "failed")
    assert failed["setup_error"].startswith("clone failed")
    private = create(api, repo={"url": private_url, "credential": "GIT_TOKEN", "username": USER})
    cloned = api.get(f"/api/v1/sandboxes/{private}").json()
    assert cloned["setup_status"] == "succeeded", cloned["setup_error"]
    assert run(api, private, "cat ~/secret-app/README")["stdout"] == "private code\n"
    # The credential stayed out of the repository's configuration and the sandbox's files.
    # (The command names it in two halves: an exec's command is kept in its event.)
    half = len(PASSWORD) // 2
    needle = f"\"$(printf %s%s '{PASSWORD[:half]}' '{PASSWORD[half:]}')\""
    leftover = run(api, private, f"grep -rlF {needle} ~ /tmp /etc/gitconfig 2>/dev/null; true")
    assert leftover["stdout"] == ""
    assert ("/private/secret-app.git/info/refs", True) in git_server.requests

    # A failing setup: the sandbox runs, the page and the API say what failed.
    broken = create(
        api,
        repo={"url": f"{base_url()}/public/app.git"},
        setup="echo about to fail\nfalse\necho never here\n",
    )
    shown = api.get(f"/api/v1/sandboxes/{broken}").json()
    assert (shown["status"], shown["setup_status"]) == ("running", "failed")
    assert shown["setup_error"] == "setup failed (exit code 1): about to fail"
    client.force_login(member)
    page = client.get(f"/sandboxes/{broken}/")
    assert page.status_code == 200
    assert b"setup failed (exit code 1): about to fail" in page.content
    assert b"never here" not in page.content

    # The secrets: in no response, event, log line or page.
    seen = [
        api.get("/api/v1/sandboxes").content,
        *(
            api.get(f"/api/v1/sandboxes/{sid}{tail}").content
            for sid in (public, without, private, broken)
            for tail in ("", "/events")
        ),
        api.get("/api/v1/secrets").content,
        *(client.get(f"/sandboxes/{sid}/").content for sid in (public, private, broken)),
        client.get("/audit/").content,
        client.get("/sandboxes/").content,
        str(list(SandboxEvent.objects.values())).encode(),
        str(list(Sandbox.objects.values())).encode(),
        caplog.text.encode(),
        str(list(TeamSecret.objects.values())).encode(),
    ]
    for text in seen:
        assert PASSWORD.encode() not in text
        assert TOKEN.encode() not in text
