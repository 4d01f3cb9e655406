"""The dashboard in a real browser: a team member's whole day with a sandbox.

Sign in; start a sandbox and watch it reach ``running`` without a reload; run a command
in the exec console; pause and resume; take a snapshot and find the new version in the
versions browser; start a sandbox from an older version; delete.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from sandboxes.models import Sandbox, Snapshot
from sandboxes.services.actors import Actor
from sandboxes.services.events import record_event
from tests.browser.conftest import sign_in

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

TIMEOUT = 30_000  # ms: a real provider on a busy machine


def status_badge(page, status: str):
    return page.locator(f'#sandbox-status [data-status="{status}"]')


def start_sandbox(page, base: str, provider: str, name: str, worker, shots) -> str:
    """Fill in the new-sandbox form; the sandbox is seen starting, then running."""
    page.get_by_role("link", name="New sandbox").first.click()
    page.wait_for_url(f"{base}/sandboxes/new/**")
    page.get_by_label("Provider").select_option(provider)
    page.get_by_label("Preset").select_option("1vcpu_1gb_8gb")
    page.get_by_label("Name").fill(name)
    shots(page, f"new {name}")
    worker.hold()  # the worker waits, so the page shows the start in progress
    page.get_by_role("button", name="Start sandbox").click()
    page.wait_for_url(re.compile(rf"{base}/sandboxes/sbx-[a-z0-9]+/$"))
    expect(status_badge(page, "starting")).to_be_visible()
    expect(page.get_by_role("progressbar")).to_be_visible()
    shots(page, f"{name} starting")
    page.evaluate("window.__noReload = true")
    worker.release()
    expect(status_badge(page, "running")).to_be_visible(timeout=TIMEOUT)
    assert page.evaluate("window.__noReload === true"), "the page was reloaded"
    shots(page, f"{name} running")
    return page.url.rstrip("/").rsplit("/", 1)[1]


def test_a_day_with_a_sandbox(browser, live_server, provider, owner, worker, shots):
    base = live_server.url
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("dialog", lambda dialog: dialog.accept())  # hx-confirm on destructive actions
    page.goto(f"{base}/login/")
    shots(page, "sign in")
    sign_in(page, base, "olivia")
    shots(page, "sandbox list empty")

    # Start, and see it reach running without a reload.
    sandbox_id = start_sandbox(page, base, provider, "e2e-first", worker, shots)
    first_version = Sandbox.objects.get(pk=sandbox_id).snapshot.snapshot_id

    # The exec console.
    page.get_by_label("Command", exact=True).fill(
        "echo hello-from-the-browser; echo to-stderr >&2; exit 7"
    )
    page.get_by_role("button", name="Run").click()
    expect(page.locator("#exec-stdout")).to_have_text("hello-from-the-browser\n", timeout=TIMEOUT)
    expect(page.locator("#exec-stderr")).to_have_text("to-stderr\n")
    expect(page.locator("#exec-exit-code")).to_have_text("7")
    shots(page, "exec output")

    # Pause and resume: the badge follows through pausing/resuming on its own.
    page.locator('#sandbox-status button[data-action="pause"]').click()
    expect(status_badge(page, "paused")).to_be_visible(timeout=TIMEOUT)
    expect(page.locator("#why-exec")).to_contain_text("the sandbox is paused")
    shots(page, "paused")
    page.locator('#sandbox-status button[data-action="resume"]').click()
    expect(status_badge(page, "running")).to_be_visible(timeout=TIMEOUT)
    expect(page.get_by_label("Command", exact=True)).to_be_enabled()
    shots(page, "resumed")

    # Snapshot: the new version appears in the sandbox's list, then in the browser.
    page.get_by_label("Snapshot label").fill("taken-in-the-browser")
    page.get_by_role("button", name="Take snapshot").click()
    taken = page.locator("#sandbox-taken")
    expect(taken.locator('[data-status="ready"]')).to_be_visible(timeout=TIMEOUT)
    new_version = Snapshot.objects.filter(source_sandbox_id=sandbox_id).get().snapshot_id
    expect(taken).to_contain_text(new_version)
    expect(taken).to_contain_text("taken-in-the-browser")
    shots(page, "snapshot taken")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Snapshots").click()
    row = page.locator(f'[id="version-{new_version}"]')
    expect(row).to_contain_text("taken-in-the-browser")
    expect(row).to_contain_text("olivia")
    expect(row.locator("td[data-label=Lineage]")).to_contain_text("from v1")
    shots(page, "versions browser")

    # Roll forward to the new version, then start a sandbox from the older one.
    row.get_by_role("button", name=f"Activate {new_version}").click()
    expect(page.locator(f'[id="version-{new_version}"] .badge', has_text="active")).to_be_visible()
    shots(page, "new version active")
    older = page.locator(f'[id="version-{first_version}"]')
    older.get_by_role("link", name="Start from").click()
    expect(page.get_by_label("Snapshot version")).to_have_value(first_version)
    page.get_by_label("Name").fill("e2e-older")
    worker.hold()
    page.get_by_role("button", name="Start sandbox").click()
    page.wait_for_url(re.compile(rf"{base}/sandboxes/sbx-[a-z0-9]+/$"))
    worker.release()
    expect(status_badge(page, "running")).to_be_visible(timeout=TIMEOUT)
    expect(page.locator("#sandbox-overview")).to_contain_text(first_version)
    second_id = page.url.rstrip("/").rsplit("/", 1)[1]
    shots(page, "started from the older version")

    # Compare the two versions.
    page.goto(f"{base}/snapshots/{new_version}/compare/{first_version}/")
    expect(page.locator("body")).to_contain_text(f"{new_version} descends from {first_version}.")
    shots(page, "compare versions")

    # Delete: one from its page, one from the list.
    page.goto(f"{base}/sandboxes/{second_id}/")
    page.locator('#sandbox-status button[data-action="delete"]').click()
    expect(status_badge(page, "deleted")).to_be_visible(timeout=TIMEOUT)
    shots(page, "deleted from its page")
    page.goto(f"{base}/sandboxes/")
    first_row = page.locator(f"#row-{sandbox_id}")
    first_row.get_by_role("button", name=re.compile("^Delete")).click()
    expect(first_row.locator('[data-status="deleted"]')).to_be_visible(timeout=TIMEOUT)
    shots(page, "deleted from the list")
    assert set(Sandbox.objects.values_list("status", flat=True)) == {"deleted"}
    assert Sandbox.objects.filter(pk__in=[sandbox_id, second_id]).count() == 2
    page.close()


def test_the_other_pages(browser, live_server, provider, owner, team, worker, shots):
    """Presets, tokens (the secret shown once), providers, audit log: each renders."""
    base = live_server.url
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    sign_in(page, base, "olivia")
    record_event(actor=Actor.for_user(owner), action="add_member", outcome="succeeded", team=team)
    nav = page.get_by_role("navigation", name="Main")
    nav.get_by_role("link", name="Presets").click()
    expect(page.locator("main")).to_contain_text(f"{provider}_1vcpu_1gb_8gb_v1")
    shots(page, "presets")
    nav.get_by_role("link", name="API tokens").click()
    page.get_by_label("Name").fill("from-the-browser")
    page.get_by_role("button", name="Create token").click()
    secret = page.get_by_label(re.compile("^Token")).input_value()
    assert secret.startswith("sbt_")
    shots(page, "token created")
    page.goto(f"{base}/tokens/")
    assert secret not in page.content()
    nav.get_by_role("link", name="Providers").click()
    expect(page.locator("main")).to_contain_text("reachable")
    expect(page.locator("main")).to_contain_text("latency")
    shots(page, "providers")
    nav.get_by_role("link", name="Audit log").click()
    expect(page.locator("#audit-results tbody tr")).to_have_count(2)  # the token, the team
    page.get_by_label("What").fill("create_token")
    expect(page.locator("#audit-results tbody tr")).to_have_count(1)
    expect(page).to_have_url(re.compile(r"action=create_token"))
    shots(page, "audit log filtered")
    page.close()
