"""Image builds through the control plane: `manage.py build_image` (Debian with mmdebstrap)
and `manage.py import_snapshot --ref oci-archive:...` register real root filesystems as
versions (one stored image for several presets), the worker's build shows progress and
a capped log, and a sandbox starts from the result."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from sandboxes.models import ActiveSnapshot, ImageBuild, SandboxEvent, Snapshot
from sandboxes.services import images, lifecycle
from sandboxes.services.actors import Actor
from sandboxes.services.errors import InvalidInput, NotAllowed
from sandboxes.states import Status
from tests.images_support import busybox_base_layer, debian_rootfs, image_cache, oci_archive
from tests.local_support import require_local_runtime

SMALL, OTHER = "1vcpu_1gb_8gb", "2vcpu_2gb_8gb"


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.fixture
def image_settings(settings):
    settings.SANDBOX_IMAGE_CACHE_DIR = image_cache()
    settings.SANDBOX_IMAGE_LOG_BYTES = 2048
    return settings


@pytest.mark.django_db(transaction=True)
def test_build_image_registers_one_stored_image_for_several_presets(
    local_backend, image_settings, team, member
):
    require_local_runtime()
    debian_rootfs()  # built (or found) in the shared test cache first
    host_usr = ActiveSnapshot.objects.get(team=None, provider="local", preset_id=SMALL).snapshot
    out = run(
        "build_image", "--provider", "local", "--preset", SMALL, "--preset", OTHER,
        "--suite", "bookworm", "--packages", "git,python3,ca-certificates",
        "--activate", "--wait",
    )  # fmt: skip
    ids = out.split()
    assert [i.rpartition("_v")[0] for i in ids] == [f"local_{SMALL}", f"local_{OTHER}"]
    versions = [Snapshot.objects.get(snapshot_id=i) for i in ids]
    assert versions[0].provider_ref == versions[1].provider_ref  # stored once
    assert versions[0].provider_ref.startswith("snap-")
    active = ActiveSnapshot.objects.get(team=None, provider="local", preset_id=SMALL)
    assert active.snapshot == versions[0]
    build = ImageBuild.objects.get()
    assert (build.status, build.progress, build.snapshot_ids) == ("succeeded", "done", ids)
    assert len(build.log) <= 2048  # the tail only
    assert "registered" in build.log

    sandbox = lifecycle.create_sandbox(team=team, actor=Actor.for_user(member), preset_id=SMALL)
    sandbox.refresh_from_db()
    assert sandbox.status == Status.RUNNING, sandbox.last_error
    provider = local_backend
    box = provider.get(sandbox.provider_ref)
    assert box.exec("git --version", timeout=30).stdout.startswith("git version")
    assert "Debian GNU/Linux 12" in box.exec("cat /etc/os-release", timeout=30).stdout

    # Deleting one preset's version keeps the image the other still names.
    lifecycle.request_operation(sandbox=sandbox, operation="delete", actor=Actor.system())
    from sandboxes.services.snapshots import activate_snapshot, delete_snapshot

    activate_snapshot(snapshot=host_usr, actor=Actor.system(), team=None)
    delete_snapshot(snapshot=versions[0], actor=Actor.system())
    assert Snapshot.objects.get(pk=versions[0].pk).status == "deleted"
    assert provider.layers.chain(versions[1].provider_ref)  # still there


@pytest.mark.django_db(transaction=True)
def test_import_snapshot_copies_an_oci_archive_into_the_local_provider(
    local_backend, image_settings, tmp_path, team, member
):
    require_local_runtime()
    archive = oci_archive(
        tmp_path / "app.tar",
        [busybox_base_layer()],
        {
            "Env": ["APP_MODE=test"],
            "WorkingDir": "/srv",
            "User": "app",
            "ExposedPorts": {"8080/tcp": {}},
        },
    )
    out = run("import_snapshot", "--provider", "local", "--preset", SMALL,
              "--ref", f"oci-archive:{archive}", "--label", "app image")  # fmt: skip
    snapshot = Snapshot.objects.get(snapshot_id=out.strip())
    assert snapshot.label == "app image"
    assert snapshot.exposed_ports == [8080]
    sandbox = lifecycle.create_sandbox(
        team=team, actor=Actor.for_user(member), snapshot_id=snapshot.snapshot_id
    )
    sandbox.refresh_from_db()
    assert sandbox.status == Status.RUNNING, sandbox.last_error
    result = local_backend.get(sandbox.provider_ref).exec("echo $APP_MODE; pwd; id -u", timeout=30)
    assert result.stdout == "test\n/srv\n1000\n"
    sandbox.refresh_from_db()
    assert [(s["name"], s["port"]) for s in sandbox.services] == [("port-8080", 8080)]
    lifecycle.request_operation(sandbox=sandbox, operation="delete", actor=Actor.system())


@pytest.mark.django_db(transaction=True)
def test_bad_requests_change_nothing(
    local_backend, image_settings, team, member, tmp_path, monkeypatch
):
    with pytest.raises(CommandError, match="not Debian package names"):
        run("build_image", "--provider", "local", "--preset", SMALL, "--packages", "git;rm -rf /")
    with pytest.raises(CommandError, match="suite"):
        run("build_image", "--provider", "local", "--preset", SMALL, "--suite", "../x")
    with pytest.raises(CommandError, match="unknown preset"):
        run("build_image", "--provider", "local", "--preset", "8vcpu_16gb_64gb")
    with pytest.raises(CommandError, match="does not exist"):
        run("import_snapshot", "--provider", "local", "--preset", SMALL,
            "--ref", f"oci-archive:{tmp_path / 'missing.tar'}")  # fmt: skip
    with pytest.raises(NotAllowed):
        images.request_build(actor=Actor.for_user(member), provider="local", preset_ids=[SMALL])
    with pytest.raises(InvalidInput):
        images.request_import(
            actor=Actor.system(), provider="local", preset_ids=[SMALL], ref="docker://-x"
        )
    # A team's owner builds and imports for the team, but never from the host's files,
    # its Docker daemon or a mirror of their choosing.
    team.memberships.filter(user=member).update(role="owner")
    owner = Actor.for_user(member)
    for ref in (f"oci-archive:{tmp_path}/x.tar", "docker-daemon:postgres:16"):
        with pytest.raises(NotAllowed, match="only an operator"):
            images.request_import(
                actor=owner, provider="local", preset_ids=[SMALL], ref=ref, team=team
            )
    with pytest.raises(NotAllowed, match="only an operator"):
        images.request_build(actor=owner, provider="local", preset_ids=[SMALL], team=team,
                             mirror="file:///etc")  # fmt: skip
    assert not ImageBuild.objects.exists()
    assert not SandboxEvent.objects.filter(action="build_image").exists()

    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", False)  # queued only: nothing is fetched
    build = images.request_import(
        actor=owner, provider="local", preset_ids=[SMALL], ref="docker://127.0.0.1:9/app:1",
        team=team,
    )  # fmt: skip
    assert (build.team, build.status) == (team, "queued")


@pytest.mark.django_db(transaction=True)
def test_a_failed_build_keeps_its_error_and_log(local_backend, image_settings, tmp_path):
    archive = tmp_path / "broken.tar"
    archive.write_bytes(b"not a tar")
    with pytest.raises(CommandError, match="failed: skopeo could not copy"):
        run("import_snapshot", "--provider", "local", "--preset", SMALL,
            "--ref", f"oci-archive:{archive}")  # fmt: skip
    build = ImageBuild.objects.get()
    assert build.status == "failed"
    assert "skopeo could not copy" in build.log
    assert not Snapshot.objects.filter(provider="local", version__gt=1).exists()
    outcomes = SandboxEvent.objects.filter(action="build_image").values_list("outcome", flat=True)
    assert sorted(outcomes) == ["failed", "requested"]


@pytest.mark.django_db
def test_the_versions_page_shows_builds_with_progress_and_log(team, other_team, member):
    from django.test import Client

    shared = ImageBuild.objects.create(
        provider="local", kind="debian", suite="bookworm", packages=["git"], presets=[SMALL],
        status="running", progress="installing remaining packages inside the chroot",
        log="I: downloading packages with apt...\nI: extracting archives...\n",
    )  # fmt: skip
    ImageBuild.objects.create(
        team=other_team, provider="local", kind="oci", ref="docker://registry.test/secret:1",
        presets=[SMALL], status="failed", error="other team's failure",
    )  # fmt: skip
    client = Client()
    client.force_login(member)
    page = client.get("/snapshots/").content.decode()
    assert "installing remaining packages inside the chroot" in page
    assert "I: extracting archives..." in page
    assert "every 2s" in page  # polled while it runs
    assert "registry.test/secret" not in page  # another team's build stays its own
    assert "other team&#x27;s failure" not in page

    ImageBuild.objects.filter(pk=shared.pk).update(status="succeeded", progress="done",
                                                   snapshot_ids=[f"local_{SMALL}_v1"])  # fmt: skip
    part = client.get("/snapshots/?builds=1", headers={"HX-Request": "true"}).content.decode()
    assert f"local_{SMALL}_v1" in part
    assert "every 2s" not in part  # nothing left to follow


@pytest.fixture
def loopback_mirror(tmp_path):
    """A "mirror" on loopback answering for dists/bookworm/Release (nothing is built)."""
    import functools
    import http.server
    import threading

    (tmp_path / "debian/dists/bookworm").mkdir(parents=True)
    (tmp_path / "debian/dists/bookworm/Release").write_text("Suite: bookworm\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/debian"
    server.shutdown()


@pytest.mark.django_db(transaction=True)
def test_first_start_queues_one_default_debian_image(
    local_backend, image_settings, loopback_mirror, monkeypatch
):
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", False)  # queued for a worker, not run here
    image_settings.SANDBOX_DEFAULT_IMAGE = "off"
    assert images.queue_default_image() == (None, "SANDBOX_DEFAULT_IMAGE is off")
    image_settings.SANDBOX_DEFAULT_IMAGE = "debian"
    image_settings.SANDBOX_DEBIAN_MIRROR = "http://127.0.0.1:9/debian"  # nothing listens
    build, why = images.queue_default_image()
    assert build is None
    assert "cannot be reached" in why

    image_settings.SANDBOX_DEBIAN_MIRROR = loopback_mirror
    build, why = images.queue_default_image()
    assert build is not None, why
    assert (build.status, build.suite, build.activate, build.team) == (
        "queued",
        "bookworm",
        True,
        None,
    )
    assert set(build.presets) >= {SMALL, OTHER}
    assert "git" in build.packages
    assert images.queue_default_image() == (None, "the default image was queued before")
    ImageBuild.objects.filter(pk=build.pk).update(status="failed", error="mirror went away")
    again, _ = images.queue_default_image()  # a failed first build is tried at the next start
    assert again is not None
    assert again.pk != build.pk
    # The host-/usr version stays what local presets start from until the image is ready.
    active = ActiveSnapshot.objects.get(team=None, provider="local", preset_id=SMALL)
    assert active.snapshot.provider_ref == "base"


@pytest.mark.django_db
def test_the_sweep_fails_a_build_its_worker_abandoned(settings):
    from datetime import timedelta

    from django.utils import timezone

    from sandboxes.services.sweep import run_sweep

    now = timezone.now()
    timeout = int(settings.Q_CLUSTER["timeout"])
    abandoned = ImageBuild.objects.create(
        provider="local", presets=[SMALL], status="running",
        started_at=now - timedelta(seconds=timeout + 600),
    )  # fmt: skip
    running = ImageBuild.objects.create(
        provider="local", presets=[SMALL], status="running", started_at=now - timedelta(seconds=60)
    )
    queued = ImageBuild.objects.create(
        provider="local", presets=[SMALL], created_at=now - timedelta(days=1)
    )
    report = run_sweep(now=now)
    assert report.actions.get("images") == 1
    abandoned.refresh_from_db()
    assert abandoned.status == "failed"
    assert "worker" in abandoned.error
    assert ImageBuild.objects.get(pk=running.pk).status == "running"
    assert ImageBuild.objects.get(pk=queued.pk).status == "queued"  # a worker may come
