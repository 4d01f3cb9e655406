"""Every dashboard page at 360 px, by keyboard, and without JavaScript."""

from __future__ import annotations

import re

import pytest
from django.urls import URLPattern, reverse
from playwright.sync_api import expect

from sandboxes import urls
from sandboxes.services import (
    environments,
    interactive,
    lifecycle,
    pools,
    snapshots,
    ssh,
    team_secrets,
    tokens,
)
from sandboxes.services.actors import Actor
from tests.browser.conftest import sign_in
from tests.taskqueue import drain

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

#: Form controls without a label (visible ones): none may be left.
UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea')]
  .filter(el => el.type !== 'hidden' && el.offsetParent !== null)
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
  .map(el => el.outerHTML)"""
OVERFLOW = "() => document.documentElement.scrollWidth - window.innerWidth"


@pytest.fixture
def content(provider, owner, team):
    """A running sandbox with a service, a second version and a token, so pages have rows."""
    actor = Actor.for_user(owner)
    sandbox = lifecycle.create_sandbox(
        team=team, actor=actor, provider=provider, preset_id="1vcpu_1gb_8gb", name="narrow"
    )
    drain()
    sandbox.refresh_from_db()
    assert sandbox.status == "running"
    interactive.expose_service(sandbox=sandbox, actor=actor, name="web", port=8080)
    version = snapshots.take_snapshot(sandbox=sandbox, actor=actor, label="a long label " * 4)
    drain()
    token, _ = tokens.create_api_token(user=owner, team=team, actor=actor, name="narrow")
    team_secrets.set_secret(team=team, actor=actor, name="DEPLOY_TOKEN", value="not shown")
    environment = environments.create_environment(
        team=team,
        actor=actor,
        data={"name": "narrow-env", "preset": "1vcpu_1gb_8gb", "provider": provider},
    )
    first = f"{provider}_1vcpu_1gb_8gb_v1"
    pool = pools.create_pool(actor=actor, team=team, snapshot=sandbox.snapshot, target_size=1)
    key = ssh.add_key(
        actor=actor,
        name="laptop",
        public_key="ssh-ed25519 "
        "AAAAC3NzaC1lZDI1NTE5AAAAIKfbCVBdc8ceDgiJdxE6mWZxJ3Eyy0GUnbhTIQ6xM8Fk",
    )
    return {
        "key_id": key.pk,
        "pool_id": pool.pk,
        "sandbox_id": sandbox.pk,
        "snapshot_id": version.snapshot_id,
        "other_id": first,
        "action": "pause",
        "service": "web",
        "token_id": token.pk,
        "name": "DEPLOY_TOKEN",
        "environment_id": environment.pk,
    }


def get_pages(objects) -> list[str]:
    """Every dashboard URL, from the URL conf (a new page is covered by itself)."""
    found = []
    for pattern in urls.urlpatterns:
        if not isinstance(pattern, URLPattern) or pattern.name in (None, "home", "preview-open"):
            # preview-open: a redirect to the service's own origin, not a page; the
            # unnamed ones only redirect old /versions/ links to a named page.
            continue
        kwargs = {name: objects[name] for name in pattern.pattern.converters}
        found.append(reverse(pattern.name, kwargs=kwargs))
    return found


def test_every_page_fits_360_px_and_labels_every_control(
    browser, live_server, content, queued_worker, shots
):
    context = browser.new_context(viewport={"width": 360, "height": 740})
    page = context.new_page()
    sign_in(page, live_server.url, "olivia")
    visited = 0
    for path in get_pages(content):
        if context.request.get(live_server.url + path, max_redirects=0).status == 405:
            continue  # POST-only: its form is on one of the pages visited here
        response = page.goto(live_server.url + path)
        assert response.ok, (path, response.status)
        page.wait_for_load_state("load")
        assert page.evaluate(OVERFLOW) <= 0, f"{path} scrolls sideways at 360 px"
        assert page.evaluate(UNLABELLED) == [], path
        shots(page, path)
        visited += 1
    assert visited >= 12
    context.close()


def test_keyboard_order_and_skip_link(browser, live_server, content, queued_worker, shots):
    page = browser.new_page(viewport={"width": 1024, "height": 800})
    page.goto(f"{live_server.url}/login/")
    active = "document.activeElement.id || document.activeElement.textContent.trim()"
    assert page.evaluate(active) == "id_username"  # the form takes the focus on load
    page.keyboard.type("olivia")
    page.keyboard.press("Tab")
    assert page.evaluate(active) == "id_password"
    page.keyboard.type("e2e-password-1")
    page.keyboard.press("Tab")
    assert page.evaluate(active) == "Sign in"
    backwards = []
    for _ in range(4):
        page.keyboard.press("Shift+Tab")
        backwards.append(page.evaluate(active))
    # the order, read backwards: the form, the site's name, the skip link first of all
    assert backwards == ["id_password", "id_username", "Sandboxes", "Skip to content"]
    page.get_by_label("Password").focus()
    page.keyboard.press("Enter")
    page.wait_for_url(f"{live_server.url}/sandboxes/")
    # From the list to the exec console of a sandbox, keyboard only.
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("Skip to content")
    page.keyboard.press("Enter")
    page.get_by_role("link", name="narrow").focus()
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/sandboxes/sbx-"))
    page.get_by_label("Command", exact=True).focus()
    page.keyboard.type("echo typed")
    page.keyboard.press("Enter")
    expect(page.locator("#exec-stdout")).to_have_text("typed\n", timeout=30_000)
    shots(page, "keyboard exec")
    page.close()


def test_reads_and_actions_work_without_javascript(
    browser, live_server, content, queued_worker, shots
):
    context = browser.new_context(
        java_script_enabled=False, viewport={"width": 1024, "height": 900}
    )
    page = context.new_page()
    base = live_server.url
    sign_in(page, base, "olivia")
    expect(page.locator(f"#row-{content['sandbox_id']}")).to_contain_text("running")
    shots(page, "list without js")
    page.get_by_role("link", name="narrow").click()
    expect(page.locator("#sandbox-status [data-status=running]")).to_be_visible()
    expect(page.locator("#sandbox-timeline")).to_contain_text("start")
    expect(page.locator("#sandbox-services")).to_contain_text("web")
    shots(page, "detail without js")
    # The exec console posts a plain form and renders the page with the result.
    page.get_by_label("Command", exact=True).fill("echo no-js")
    page.get_by_role("button", name="Run").click()
    expect(page.locator("#exec-stdout")).to_have_text("no-js\n")
    shots(page, "exec without js")
    page.get_by_role("link", name="Show the charts").click()
    expect(page.locator("main")).to_contain_text("CPU and memory")
    shots(page, "charts without js")
    page.go_back()
    page.go_back()
    # Destructive actions ask on a page of their own.
    page.locator('#sandbox-status button[data-action="delete"]').click()
    expect(page.locator("main")).to_contain_text("Its files are gone for good")
    shots(page, "confirm without js")
    page.get_by_role("button", name="Delete").click()
    expect(page.locator(".message")).to_contain_text("Delete: requested")
    drain()
    page.reload()
    expect(page.locator("#sandbox-status [data-status=deleted]")).to_be_visible()
    page.get_by_role("link", name="Snapshots").click()
    expect(page.locator(f'[id="version-{content["snapshot_id"]}"]')).to_contain_text("a long label")
    shots(page, "versions without js")
    context.close()
