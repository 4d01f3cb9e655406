"""An IDE through its preview URL, in Chromium: JupyterLab (from PyPI) running inside a
real ``local`` sandbox, opened from the sandbox page's Open button, served by uvicorn
(``config.asgi``: the preview host, its websockets).

JupyterLab is installed once with ``pip --target`` into ``.data/test-cache/jupyterlab``
(reused by later runs) and copied into the sandbox through an exposed service (a tar
stream to a small receiver inside it). Its terminal is a websocket: typing into it writes
a file the test then reads with exec.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect

from providers import unix_http
from sandboxes.services import interactive, lifecycle, previews
from sandboxes.services.actors import Actor
from tests.browser.conftest import sign_in

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".data" / "test-cache"
LAB = CACHE / "jupyterlab"
ARCHIVE = CACHE / "jupyterlab.tar"
TIMEOUT = int(
    __import__("os").environ.get("PREVIEW_IDE_TIMEOUT", "120000")
)  # ms: JupyterLab's first load on a busy machine
LAB_PORT = 8888
RECEIVER = """
import http.server, subprocess
class H(http.server.BaseHTTPRequestHandler):
    def do_PUT(self):
        left = int(self.headers["Content-Length"])
        tar = subprocess.Popen(["tar", "-x", "-C", "/opt/jupyterlab"], stdin=subprocess.PIPE)
        while left:
            block = self.rfile.read(min(left, 1 << 20))
            if not block:
                break
            tar.stdin.write(block)
            left -= len(block)
        tar.stdin.close()
        self.send_response(200 if tar.wait() == 0 and not left else 500)
        self.send_header("Content-Length", "0")
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", 9000), H).serve_forever()
"""


def jupyterlab_archive() -> Path:
    """The cached JupyterLab tree as a tar (made once, reused between runs)."""
    if not (LAB / "jupyterlab" / "__main__.py").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        staging = CACHE / "jupyterlab.partial"
        shutil.rmtree(staging, ignore_errors=True)
        # The sandbox's python is the host's /usr/bin/python3 (local sandboxes see the
        # host's /usr): install for that one (its compiled wheels must match).
        python = "/usr/bin/python3"
        subprocess.run(
            [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--target", str(staging), "jupyterlab>=4.2,<5"],
            check=True,
            timeout=1800,
        )  # fmt: skip
        staging.rename(LAB)
        ARCHIVE.unlink(missing_ok=True)
    if not ARCHIVE.exists():
        partial = ARCHIVE.with_suffix(".partial")
        with tarfile.open(partial, "w") as archive:
            archive.add(LAB, arcname=".")
        partial.rename(ARCHIVE)
    return ARCHIVE


def sh(sandbox, owner, command: str, timeout: int = 120) -> str:
    result = interactive.exec_command(
        sandbox=sandbox, actor=Actor.for_user(owner), command=command, timeout_seconds=timeout
    )
    assert result.exit_code == 0, (command, result.stdout, result.stderr)
    return result.stdout.decode() if isinstance(result.stdout, bytes) else result.stdout


def wait_for(url: str, path: str, seconds: float) -> requests.Response:
    session = unix_http.session()
    deadline = time.monotonic() + seconds
    while True:
        try:
            response = session.get(url.rstrip("/") + path, timeout=10)
            if response.status_code != 502 or time.monotonic() > deadline:
                return response  # 502: the sandbox's port is not listening yet
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.3)


@pytest.fixture
def lab(provider, owner, team, settings):
    """A running local sandbox with JupyterLab on port 8888, exposed as ``lab``."""
    archive = jupyterlab_archive()
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "sync": True}
    actor = Actor.for_user(owner)
    sandbox = lifecycle.create_sandbox(
        team=team, actor=actor, provider=provider, preset_id="1vcpu_1gb_8gb"
    )
    sandbox.refresh_from_db()
    assert sandbox.status == "running", sandbox.last_error
    sh(
        sandbox,
        owner,
        "mkdir -p /opt/jupyterlab && nohup python3 -c "
        f"{shlex.quote(RECEIVER)} >/tmp/receiver.log 2>&1 &",
    )
    upload = interactive.expose_service(sandbox=sandbox, actor=actor, name="upload", port=9000)
    wait_for(upload["url"], "/", 30)
    with archive.open("rb") as body:
        sent = unix_http.session().put(
            upload["url"].rstrip("/") + "/",
            data=body,
            headers={"Content-Length": str(archive.stat().st_size)},
            timeout=600,
        )
    assert sent.status_code == 200
    sh(
        sandbox,
        owner,
        "cd /workspace && PYTHONPATH=/opt/jupyterlab JUPYTER_PATH=/opt/jupyterlab/share/jupyter "
        "JUPYTER_CONFIG_PATH=/opt/jupyterlab/etc/jupyter "
        "HOME=/root nohup python3 -m jupyterlab --app-dir=/opt/jupyterlab/share/jupyter/lab "
        f"--no-browser --allow-root --ServerApp.ip=127.0.0.1 --ServerApp.port={LAB_PORT} "
        "--ServerApp.token= --ServerApp.password= --ServerApp.allow_remote_access=True "
        "--ServerApp.root_dir=/workspace >/tmp/lab.log 2>&1 &",
    )
    service = interactive.expose_service(sandbox=sandbox, actor=actor, name="lab", port=LAB_PORT)
    ready = wait_for(service["url"], "/api", 120)
    assert ready.status_code == 200, sh(sandbox, owner, "cat /tmp/lab.log")
    sandbox.refresh_from_db()
    return sandbox


@pytest.mark.parametrize("provider", ["local"], indirect=True)
def test_jupyterlab_works_through_its_preview_url(browser, asgi_live_server, lab, owner, shots):
    # The dashboard at localhost (the preview domain's own host, as under `make run`).
    base = f"http://localhost:{asgi_live_server.port}"
    preview = f"http://{LAB_PORT}-{lab.pk}.localhost:{asgi_live_server.port}"
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sign_in(page, base, "olivia")
    page.goto(f"{base}/sandboxes/{lab.pk}/")
    expect(page.locator(f'[data-preview-url="{preview}"]')).to_be_visible()
    shots(page, "sandbox page with preview urls")
    problems: list[str] = []
    context.on(
        "response",
        lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
    )
    context.on("requestfailed", lambda r: problems.append(f"failed {r.url} {r.failure}"))
    with context.expect_page() as opened:
        page.get_by_role("link", name="Open service lab").click()
    ide = opened.value
    ide.on("console", lambda m: problems.append(f"console {m.type}: {m.text}"))
    ide.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    ide.wait_for_url(f"{preview}/lab**", timeout=TIMEOUT)
    card = ide.locator(".jp-LauncherCard", has_text="Terminal")
    try:
        expect(card).to_be_visible(timeout=TIMEOUT)
    except AssertionError:
        log = sh(lab, owner, "tail -40 /tmp/lab.log")
        pytest.fail("JupyterLab did not start in the browser:\n" + "\n".join(problems) + log)
    finally:
        shots(ide, "jupyterlab launcher")

    # The browser holds the preview's own cookie there, and none of the dashboard's.
    names = {cookie["name"] for cookie in context.cookies(preview)}
    assert previews.COOKIE_NAME in names
    assert not names & {"sessionid", "csrftoken"}

    # Its terminal runs over a websocket through the preview host.
    card.click()
    terminal = ide.locator(".jp-Terminal")
    expect(terminal).to_be_visible(timeout=TIMEOUT)
    terminal.click()
    deadline = time.monotonic() + 60
    answer = ""
    while time.monotonic() < deadline and answer != "42":
        ide.keyboard.type("echo $((6*7)) > /workspace/answer.txt\n")
        time.sleep(1)
        answer = interactive.exec_command(
            sandbox=lab,
            actor=Actor.for_user(owner),
            command="cat /workspace/answer.txt 2>/dev/null || true",
        ).stdout
        answer = (answer.decode() if isinstance(answer, bytes) else answer).strip()
    shots(ide, "jupyterlab terminal")
    assert answer == "42"
    context.close()
