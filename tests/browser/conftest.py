"""Browser tests: Playwright (Python) driving Debian's Chromium, headless, against a live
server (pytest-django's ``live_server``), with a queue worker thread doing the provider
work as a ``qcluster`` would (so a starting sandbox is seen starting, then running).

Every page the tests visit is saved as a screenshot under ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system import require

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/lib/chromium/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
PASSWORD = "e2e-password-1"


# Per module, not per session: while Playwright's sync API runs, this thread looks as if
# an event loop ran in it, and asgiref's async_to_sync refuses to work here; tests after
# the browser tests in one run (tests/test_fair_sharing.py) need that to be over.
@pytest.fixture(scope="module")
def browser() -> Iterator:
    require("chromium", os.access(CHROMIUM, os.X_OK), "apt-get install -y chromium")
    playwright_api = pytest.importorskip("playwright.sync_api")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    # Playwright's sync API keeps an event loop on this thread; Django then refuses ORM
    # calls from it (the test's own set-up and checks) unless told the loop is not its.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


class Shots:
    """Saves full-page screenshots as ``<prefix>-NN-<name>.png``, numbered in visit order."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.count = 0
        for old in SCREENSHOTS.glob(f"{prefix}-*.png"):
            old.unlink()

    def __call__(self, page, name: str) -> Path:
        self.count += 1
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        path = SCREENSHOTS / f"{self.prefix}-{self.count:02d}-{slug}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def shots(request) -> Shots:
    return Shots(re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-"))


@pytest.fixture
def worker(monkeypatch, transactional_db) -> Iterator:
    """A queue worker thread beside the live server (tasks are queued, not run inline)."""
    from django_q.conf import Conf

    from tests.taskqueue import QueueWorker

    monkeypatch.setattr(Conf, "SYNC", False)
    thread = QueueWorker()
    thread.start()
    yield thread
    thread.stop()
    assert not thread.errors, thread.errors


def _local_available() -> bool:
    from providers.registry import BUILTIN_PROVIDERS

    return "local" in BUILTIN_PROVIDERS


@pytest.fixture(params=["local", "memory"])
def provider(request, settings, presets, tmp_path) -> Iterator[str]:
    """The provider the sandboxes run on, with a ready, active shared version.

    ``local`` (real sandboxes on this machine) once the local provider is part of the
    code base and bubblewrap is installed; the in-memory test provider always.
    """
    from sandboxes.services import backends
    from sandboxes.services.actors import Actor
    from sandboxes.services.snapshots import import_snapshot

    if request.param == "local":
        if not _local_available():
            pytest.skip("the local provider is not in this code base yet")
        require("bubblewrap", shutil.which("bwrap") is not None, "apt-get install -y bubblewrap")
        require("root", os.geteuid() == 0, "the local provider runs sandboxes as root")
        settings.SANDBOX_PROVIDER_CONFIG = {
            "SANDBOX_PROVIDERS": "local",
            "LOCAL_SANDBOX_ROOT": str(tmp_path / "local"),
            "LOCAL_SANDBOX_CGROUP_PARENT": f"sbx-e2e-{os.getpid()}",
            "LOCAL_SANDBOX_MIN_FREE_MB": "8",
        }
        name = "local"
    else:
        request.getfixturevalue("memory_backend")
        name = "memory"
    if not _has_version(name):
        import_snapshot(
            provider=name,
            preset_id="1vcpu_1gb_8gb",
            ref="base",
            actor=Actor.system(),
            label="base",
            activate=True,
        )
    yield name
    built = backends.get_provider(name)
    _remove_instances(built)
    if name == "local":
        _local_teardown(built)
    backends.reset()


def _local_teardown(provider) -> None:
    """The local provider's own test teardown (cgroups, port forwarder), when it has one."""
    try:
        from tests.local_support import teardown
    except ImportError:
        return
    teardown(provider)


def _has_version(provider: str) -> bool:
    from sandboxes.models import Snapshot

    return Snapshot.objects.filter(provider=provider, preset_id="1vcpu_1gb_8gb").exists()


def _remove_instances(provider) -> None:
    """Nothing is left running on the host when a test ends, whatever happened in it."""
    from providers.errors import ProviderError

    try:
        instances = provider.list()
    except ProviderError:
        return
    for instance in instances:
        with contextlib.suppress(ProviderError):
            instance.delete()


@pytest.fixture
def owner(django_user_model, team):
    from sandboxes.models import Membership

    user = django_user_model.objects.create_user(username="olivia", password=PASSWORD)
    Membership.objects.create(user=user, team=team, role="owner")
    return user


def sign_in(page, base_url: str, username: str, password: str = PASSWORD) -> None:
    page.goto(f"{base_url}/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base_url}/sandboxes/")


@pytest.fixture
def queued_worker(monkeypatch, transactional_db) -> None:
    """Tasks are queued and run by the test (``tests.taskqueue.drain``), not a thread."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", False)
