"""The web terminal in Chromium, on a real ``local`` sandbox, served by uvicorn
(``config.asgi``, websockets included) rather than pytest-django's WSGI live server.

Type ``echo $((6*7))`` and see 42; reload the page and the same shell is there with its
scrollback; copy and paste; the terminal follows the window's size; a 360 px layout.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from sandboxes.models import SandboxEvent
from sandboxes.services import lifecycle
from sandboxes.services.actors import Actor
from tests.browser.conftest import sign_in

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

TIMEOUT = 30_000  # ms: a real provider on a busy machine
#: The terminal's screen as text, one string per row (xterm.js's buffer, not its pixels).
SCREEN = """() => {
  const term = document.querySelector('[data-terminal]').terminal();
  const buffer = term.buffer.active;
  const rows = [];
  for (let i = 0; i < buffer.length; i++) rows.push(buffer.getLine(i).translateToString(true));
  return rows.join('\\n');
}"""
OVERFLOW = "() => document.documentElement.scrollWidth - window.innerWidth"


def screen_shows(page, pattern: str) -> None:
    """Wait until a row of the terminal matches ``pattern`` (a regular expression)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            f"() => new RegExp({pattern!r}, 'm').test(({SCREEN})())", timeout=TIMEOUT
        )
    except PlaywrightTimeout:
        pytest.fail(f"the terminal never showed {pattern!r}; it shows:\n{page.evaluate(SCREEN)}")


def terminal_size(page) -> tuple[int, int]:
    size = page.evaluate(
        "() => { const t = document.querySelector('[data-terminal]').terminal();"
        " return [t.cols, t.rows]; }"
    )
    return size[0], size[1]


def type_line(page, text: str) -> None:
    page.locator(".xterm-helper-textarea").focus()
    page.keyboard.type(text)
    page.keyboard.press("Enter")


@pytest.fixture
def running(provider, owner, team, settings):
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "sync": True}
    sandbox = lifecycle.create_sandbox(
        team=team, actor=Actor.for_user(owner), provider=provider, preset_id="1vcpu_1gb_8gb"
    )
    sandbox.refresh_from_db()
    assert sandbox.status == "running", sandbox.last_error
    return sandbox


@pytest.mark.parametrize("provider", ["local"], indirect=True)
def test_the_web_terminal_survives_a_reload(browser, asgi_live_server, running, shots):
    base = asgi_live_server.url
    context = browser.new_context(
        viewport={"width": 1280, "height": 900},
        permissions=["clipboard-read", "clipboard-write"],
    )
    page = context.new_page()
    sign_in(page, base, "olivia")
    page.goto(f"{base}/sandboxes/{running.pk}/")
    shots(page, "terminal closed")
    expect(page.get_by_role("button", name="End session")).to_be_hidden()
    page.get_by_role("button", name="Open terminal").click()
    expect(page.locator("[data-terminal-state]")).to_have_text("Connected.", timeout=TIMEOUT)
    expect(page.get_by_role("button", name="Open terminal")).to_be_hidden()

    type_line(page, "MARK=still-here; echo $((6*7))")
    screen_shows(page, r"^42\s*$")
    shots(page, "terminal 42")

    # Reload: the page attaches to the same shell, and its scrollback is replayed.
    page.reload()
    expect(page.locator("[data-terminal-state]")).to_have_text(
        "Reattached to your session.", timeout=TIMEOUT
    )
    screen_shows(page, r"echo \$\(\(6\*7\)\)")
    screen_shows(page, r"^42\s*$")
    type_line(page, "echo mark-$MARK")
    screen_shows(page, r"^mark-still-here\s*$")
    shots(page, "terminal after reload")
    opened = SandboxEvent.objects.filter(sandbox=running, action="terminal_open")
    assert opened.count() == 1  # one session, not a second one per reload

    # Paste (the Paste button reads the clipboard) and copy (the selection to it).
    page.evaluate("() => navigator.clipboard.writeText('echo pasted-$((2+3))')")
    page.get_by_role("button", name="Paste").click()
    screen_shows(page, r"# echo pasted-\$\(\(2\+3\)\)$")  # pasted (once), not yet run
    page.keyboard.press("Enter")
    screen_shows(page, r"^pasted-5\s*$")
    page.evaluate("() => document.querySelector('[data-terminal]').terminal().selectAll()")
    page.get_by_role("button", name="Copy").click()
    assert "pasted-5" in page.evaluate("() => navigator.clipboard.readText()")

    # The terminal follows the window (another number of columns), and the shell is told.
    cols_before, _ = terminal_size(page)
    page.set_viewport_size({"width": 1000, "height": 700})
    page.wait_for_function(
        "c => document.querySelector('[data-terminal]').terminal().cols !== c", arg=cols_before
    )
    cols, rows = terminal_size(page)
    type_line(page, "stty size")
    screen_shows(page, rf"^{rows} {cols}\s*$")

    # Ending it from the page closes the shell and writes the audit row.
    page.get_by_role("button", name="End session").click()
    expect(page.locator("[data-terminal-state]")).to_contain_text(
        "The session ended", timeout=TIMEOUT
    )
    expect(page.get_by_role("button", name="Open terminal")).to_be_visible()
    closed = SandboxEvent.objects.get(sandbox=running, action="terminal_close")
    assert closed.data["reason"] == "closed by the user"
    context.close()


@pytest.mark.parametrize("provider", ["local"], indirect=True)
def test_the_web_terminal_at_360_px(browser, asgi_live_server, running, shots):
    base = asgi_live_server.url
    page = browser.new_page(viewport={"width": 360, "height": 740})
    sign_in(page, base, "olivia")
    page.goto(f"{base}/sandboxes/{running.pk}/")
    page.get_by_role("button", name="Open terminal").click()
    expect(page.locator("[data-terminal-state]")).to_have_text("Connected.", timeout=TIMEOUT)
    type_line(page, "echo narrow-$((6*7))")
    screen_shows(page, r"^narrow-42\s*$")
    shots(page, "terminal at 360 px")
    assert page.evaluate(OVERFLOW) <= 0, "the page scrolls sideways at 360 px"
    box = page.locator("[data-terminal-screen]").bounding_box()
    assert box["x"] >= 0
    assert box["x"] + box["width"] <= 360
    cols, _ = terminal_size(page)
    assert cols >= 30  # usable: a shell prompt and a command fit on a line
    page.close()


def test_viewers_see_why_there_is_no_terminal(
    browser, asgi_live_server, memory_backend, team, owner, django_user_model
):
    from sandboxes.models import Membership
    from tests.browser.conftest import PASSWORD

    sandbox = lifecycle.create_sandbox(
        team=team, actor=Actor.for_user(owner), preset_id="1vcpu_1gb_8gb"
    )
    viewer = django_user_model.objects.create_user(username="vera", password=PASSWORD)
    Membership.objects.create(user=viewer, team=team, role="viewer")
    base = asgi_live_server.url
    page = browser.new_page()
    sign_in(page, base, "vera")
    page.goto(f"{base}/sandboxes/{sandbox.pk}/")
    expect(page.locator("#why-terminal")).to_contain_text(re.compile("read-only"))
    expect(page.get_by_role("button", name="Open terminal")).to_have_count(0)
    page.close()


@pytest.mark.parametrize("provider", ["local"], indirect=True)
def test_pausing_swaps_the_panel_and_resuming_reattaches(
    browser, asgi_live_server, running, worker, shots
):
    base = asgi_live_server.url
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    sign_in(page, base, "olivia")
    page.goto(f"{base}/sandboxes/{running.pk}/")
    page.get_by_role("button", name="Open terminal").click()
    # Typed at once, while the socket is still connecting: kept and sent once attached.
    type_line(page, "echo before-pause-$((6*7))")
    screen_shows(page, r"^before-pause-42\s*$")

    # The status change swaps the panel out (its socket closes, the session waits)...
    page.locator('#sandbox-status button[data-action="pause"]').click()
    expect(page.locator("#why-terminal")).to_contain_text("paused", timeout=TIMEOUT)
    shots(page, "terminal while paused")
    # ...and back: the new panel attaches to the same shell, scrollback and all.
    page.locator('#sandbox-status button[data-action="resume"]').click()
    expect(page.locator("[data-terminal-state]")).to_have_text(
        "Reattached to your session.", timeout=TIMEOUT
    )
    screen_shows(page, r"^before-pause-42\s*$")
    assert SandboxEvent.objects.filter(sandbox=running, action="terminal_open").count() == 1
    page.close()
