"""Workspaces: a repository cloned into a sandbox and a setup script, run once after its
first start (see docs/environments.md).

The clone runs *inside* the sandbox (git from its image), as the sandbox's user, into a
folder of its home. A private repository's credential is a team secret: it reaches the
clone only as an environment variable read by a ``GIT_ASKPASS`` helper (or, for SSH, a
key file of the clone's own), so it is never in a command line, a log line or an event.
The setup script then runs in the repository with the sandbox's variables and secrets.

Their output streams into the sandbox's timeline as ``setup_output`` events (capped at
``OUTPUT_CAP`` bytes a sandbox, secret values masked). The outcome is
``Sandbox.setup_status`` (pending, running, succeeded, failed) with the reason in
``setup_error``: a failed clone or setup leaves the sandbox running and says so.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from providers.base import ExecResult, Instance
from providers.errors import ProviderError
from sandboxes.models import Outcome, Sandbox, Team, TeamSecret
from sandboxes.services import interactive, team_secrets
from sandboxes.services.actors import Actor
from sandboxes.services.backends import capabilities, get_provider
from sandboxes.services.errors import InvalidInput, ServiceError
from sandboxes.services.events import record_event
from sandboxes.services.queue import enqueue_on_commit
from sandboxes.states import Status

logger = logging.getLogger(__name__)

PENDING, RUNNING, SUCCEEDED, FAILED = "pending", "running", "succeeded", "failed"
#: How long the clone and the setup script may run together (and within the worker's
#: task timeout, ``Q_TIMEOUT``, less a minute to record the outcome).
TIMEOUT_SECONDS = 1800
#: Output kept in the timeline per sandbox; the rest is counted, not stored.
OUTPUT_CAP = 256 * 1024
#: An event is written when this much output waits, or after FLUSH_SECONDS.
CHUNK_BYTES = 8 * 1024
FLUSH_SECONDS = 1.0
MAX_SETUP_BYTES = 64 * 1024
MAX_URL = 2000
DEFAULT_GIT_USERNAME = "x-access-token"

_SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[A-Za-z0-9._~/+-]+$")
_BRANCH = re.compile(r"^[A-Za-z0-9._/+-]+$")
_PATH_PART = re.compile(r"^[A-Za-z0-9._+-]+$")
_USERNAME = re.compile(r"^[A-Za-z0-9._@+-]{1,100}$")
#: Terminal control sequences (colours, erase-line) the timeline does not keep.
_ESCAPES = re.compile(
    r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()#][0-9A-Za-z]|\x1b[=>78]"
)

# Arguments: $1 url, $2 branch ("" for the default), $3 path (relative to $HOME).
CLONE_SCRIPT = r"""
command -v git >/dev/null 2>&1 || { echo "git is not installed in this image" >&2; exit 127; }
cd "$HOME" || exit 1
if [ -d "$3/.git" ]; then echo "$3 is already a repository: not cloned again"; exit 0; fi
helper_dir="$(mktemp -d)" || exit 1
trap 'rm -rf "$helper_dir"' EXIT
if [ -n "${SBX_GIT_PASSWORD+x}" ]; then
  cat > "$helper_dir/askpass" <<'HELPER'
#!/bin/sh
case "$1" in
  Username*) printf '%s\n' "$SBX_GIT_USERNAME" ;;
  *) printf '%s\n' "$SBX_GIT_PASSWORD" ;;
esac
HELPER
  chmod 700 "$helper_dir/askpass"
  export GIT_ASKPASS="$helper_dir/askpass"
fi
if [ -n "${SBX_GIT_SSH_KEY+x}" ]; then
  (umask 077; printf '%s\n' "$SBX_GIT_SSH_KEY" > "$helper_dir/key")
  export GIT_SSH_COMMAND="ssh -i $helper_dir/key -o IdentitiesOnly=yes \
    -o StrictHostKeyChecking=accept-new"
fi
export GIT_TERMINAL_PROMPT=0
echo "cloning $1${2:+ (branch $2)} into ~/$3"
if [ -n "$2" ]; then
  git clone --branch "$2" -- "$1" "$3"
else
  git clone -- "$1" "$3"
fi
"""

# $1 path of the repository (relative to $HOME, "" for the home itself); SBX_SETUP: the script.
SETUP_SCRIPT = r"""
cd "$HOME" || exit 1
if [ -n "$1" ]; then cd "$1" || exit 1; fi
if command -v bash >/dev/null 2>&1; then exec bash -e -c "$SBX_SETUP"; fi
exec sh -e -c "$SBX_SETUP"
"""


# --- validation --------------------------------------------------------------------------


def _bad(field: str, problem: str) -> InvalidInput:
    return InvalidInput(f"{field}: {problem}", fields={field: [problem]})


def check_url(url: Any, *, field: str = "repo.url") -> str:
    """A repository URL: http(s)://, ssh://, git:// or scp-like user@host:path; no
    credentials in it (they are a team secret, ``repo.credential``)."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise _bad(field, f"a URL of 1 to {MAX_URL} characters")
    if url.startswith("-") or any(c.isspace() or ord(c) < 32 or c == "\x7f" for c in url):
        raise _bad(field, "no spaces or control characters, not starting with -")
    if _SCP_LIKE.match(url):
        return url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise _bad(field, "not a URL") from None
    if parts.scheme not in ("https", "http", "ssh", "git") or not parts.hostname:
        raise _bad(field, "use https://, http://, ssh://, git:// or user@host:path")
    if parts.password is not None or (parts.username and parts.scheme in ("http", "https")):
        raise _bad(field, "no credentials in the URL: name a team secret in repo.credential")
    return url


def check_branch(branch: Any, *, field: str = "repo.branch") -> str:
    """A branch or tag name git accepts ("" for the repository's default)."""
    if branch in (None, ""):
        return ""
    if (
        not isinstance(branch, str)
        or len(branch) > 200
        or not _BRANCH.match(branch)
        or branch.startswith(("-", "/", "."))
        or branch.endswith(("/", ".", ".lock"))
        or ".." in branch
        or "//" in branch
        or "/." in branch
    ):
        raise _bad(field, "not a branch name (letters, digits, . _ - + /)")
    return branch


def default_path(url: str) -> str:
    name = re.split(r"[/:]", url.rstrip("/"))[-1]
    name = name.removesuffix(".git") or "repo"
    return name if _PATH_PART.match(name) and name not in (".", "..") else "repo"


def check_path(path: Any, url: str, *, field: str = "repo.path") -> str:
    """Where the clone goes, relative to the sandbox user's home, staying inside it."""
    if path in (None, ""):
        return default_path(url)
    if not isinstance(path, str) or len(path) > 200:
        raise _bad(field, "a folder inside the home, 200 characters at most")
    path = path.removeprefix("~/")
    parts = [part for part in path.split("/") if part]
    if (
        path.startswith("/")
        or not parts
        or any(part in (".", "..") or not _PATH_PART.match(part) for part in parts)
    ):
        raise _bad(field, "a folder inside the home (no /, .., or odd characters)")
    return "/".join(parts)


def check_repo(*, team: Team, repo: Any) -> dict[str, str]:
    """``{"url", "branch", "path", "credential"?, "username"?}`` checked; {} for none."""
    if repo in (None, {}):
        return {}
    if not isinstance(repo, dict):
        raise _bad("repo", "an object with url, and optionally branch, path, credential")
    unknown = sorted(set(repo) - {"url", "branch", "path", "credential", "username"})
    if unknown:
        raise _bad("repo", f"unknown field {', '.join(unknown)}")
    url = check_url(repo.get("url"))
    record = {
        "url": url,
        "branch": check_branch(repo.get("branch")),
        "path": check_path(repo.get("path"), url),
    }
    credential = repo.get("credential")
    if credential not in (None, ""):
        team_secrets.check_name(credential, field="repo.credential")
        if not TeamSecret.objects.filter(team=team, name=credential).exists():
            raise _bad("repo.credential", f"your team has no secret {credential}")
        record["credential"] = credential
    username = repo.get("username")
    if username not in (None, ""):
        if not isinstance(username, str) or not _USERNAME.match(username):
            raise _bad("repo.username", "letters, digits and . _ @ + - (100 at most)")
        record["username"] = username
    return record


def check_setup(setup: Any) -> str:
    if setup in (None, ""):
        return ""
    if not isinstance(setup, str) or "\0" in setup:
        raise _bad("setup", "a script: text without NUL bytes")
    if len(setup.encode()) > MAX_SETUP_BYTES:
        raise _bad("setup", f"{MAX_SETUP_BYTES} bytes at most")
    return setup


# --- running it ---------------------------------------------------------------------------


class _Timeline:
    """Output of one step, written as capped ``setup_output`` events with secrets masked."""

    def __init__(self, sandbox: Sandbox, step: str, secrets: list[str], used: int) -> None:
        self.sandbox, self.step, self.used = sandbox, step, used
        # Longest first, so a secret containing another is masked whole.
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
        self.pending = ""
        self.last_flush = time.monotonic()
        self.dropped = 0
        self.tail = ""

    def add(self, text: str) -> None:
        self.pending += text.replace("\r\n", "\n")
        waited = time.monotonic() - self.last_flush
        if len(self.pending) >= CHUNK_BYTES or waited >= FLUSH_SECONDS:
            self.flush()

    def mask(self, text: str) -> str:
        """Without control sequences, progress lines as they ended, secret values masked."""
        text = _ESCAPES.sub("", text)
        text = "\n".join(
            [part for part in line.split("\r") if part][-1] if "\r" in line else line
            for line in text.split("\n")
        )
        for value in self.secrets:
            text = text.replace(value, "[secret]")
        return text

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.pending:
            return
        # Keep a line that may hold half a secret until its end arrives (unless long).
        cut = len(self.pending)
        if cut < CHUNK_BYTES * 4:
            cut = self.pending.rfind("\n") + 1
            if not cut:
                return
        text, self.pending = self.pending[:cut], self.pending[cut:]
        self._write(self.mask(text))

    def close(self) -> None:
        self.last_flush = 0
        if self.pending:
            text, self.pending = self.pending, ""
            self._write(self.mask(text))
        if self.dropped:
            record_event(
                actor=Actor.system(),
                action="setup_output",
                outcome=Outcome.SUCCEEDED,
                sandbox=self.sandbox,
                message=f"{self.dropped} more bytes of output not kept",
                data={"step": self.step, "output": "", "dropped": self.dropped},
            )

    def _write(self, text: str) -> None:
        self.tail = (self.tail + text)[-1500:]
        room = OUTPUT_CAP - self.used
        if room <= 0:
            self.dropped += len(text.encode())
            return
        kept = text.encode()[:room].decode(errors="ignore")
        self.dropped += len(text.encode()) - len(kept.encode())
        self.used += len(kept.encode())
        record_event(
            actor=Actor.system(),
            action="setup_output",
            outcome=Outcome.SUCCEEDED,
            sandbox=self.sandbox,
            data={"step": self.step, "output": kept},
        )


def _run_step(
    instance: Instance,
    argv: list[str],
    env: dict[str, str],
    timeline: _Timeline,
    *,
    streamed: bool,
    deadline: float,
) -> tuple[int, bool]:
    """Run ``argv`` in the sandbox; its output goes to ``timeline``. (exit code, timed out)."""
    if deadline - time.monotonic() < 1:
        timeline.close()
        return -1, True
    if not streamed:
        left = deadline - time.monotonic()
        result: ExecResult = instance.exec(argv, timeout=left, env=env)
        timeline.add(result.stdout + result.stderr)
        timeline.close()
        return result.exit_code, result.timed_out
    session = instance.open_terminal(argv, cols=160, rows=48, env=env)
    timed_out = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            try:
                data = session.read(timeout=min(left, FLUSH_SECONDS))
            except TimeoutError:
                timeline.add("")
                continue
            if not data:
                break
            timeline.add(data.decode(errors="replace"))
    finally:
        if timed_out:
            session.close()
        timeline.close()
    code = -1 if timed_out else session.wait(timeout=30)
    session.close()
    return code, timed_out


def _finish(sandbox: Sandbox, status: str, error: str = "") -> None:
    Sandbox.objects.filter(pk=sandbox.pk, setup_status=RUNNING).update(
        setup_status=status, setup_error=error
    )
    record_event(
        actor=Actor.system(),
        action="setup",
        outcome=Outcome.SUCCEEDED if status == SUCCEEDED else Outcome.FAILED,
        sandbox=sandbox,
        message=error,
    )


def run_setup(*, sandbox_id: str) -> None:
    """Expose the environment's services and the image's declared ports, clone the
    repository and run the setup script of a sandbox that runs and has them pending. Does
    nothing otherwise (safe to repeat)."""
    claimed = Sandbox.objects.filter(
        pk=sandbox_id, setup_status=PENDING, status=Status.RUNNING
    ).update(setup_status=RUNNING, setup_error="", setup_started_at=timezone.now())
    if not claimed:
        return
    sandbox = Sandbox.objects.select_related("team", "environment", "snapshot").get(pk=sandbox_id)
    record_event(
        actor=Actor.system(),
        action="setup",
        outcome=Outcome.REQUESTED,
        sandbox=sandbox,
        data={"repo": sandbox.repo, "setup": bool(sandbox.setup)},
    )
    try:
        _expose_services(sandbox)
        _run(sandbox)
    except ServiceError as exc:
        _finish(sandbox, FAILED, exc.message)
    except ProviderError as exc:
        _finish(sandbox, FAILED, f"the sandbox could not run it: {exc.message}")
    except Exception:
        logger.exception("setup of %s failed", sandbox_id)
        _finish(sandbox, FAILED, "the setup failed unexpectedly (see the control plane's log)")


def resolve_stuck_setups(*, now: datetime, limit: int) -> int:
    """The sweep's part: a setup whose worker died (running past its whole budget) is
    failed with the reason; a pending one whose task was lost (the sandbox has run for a
    while) is enqueued again. Returns how many were acted on."""
    lost_worker = now - timedelta(seconds=_budget() + 120)
    stuck = list(
        Sandbox.objects.filter(setup_status=RUNNING, setup_started_at__lt=lost_worker)
        .select_related("team")
        .order_by("setup_started_at")[:limit]
    )
    for sandbox in stuck:
        _finish(
            sandbox,
            FAILED,
            "the worker running the setup stopped before it ended (its output so far is in "
            "the timeline)",
        )
    lost_task = now - timedelta(seconds=settings.SANDBOX_STUCK_SECONDS)
    pending = list(
        Sandbox.objects.filter(
            setup_status=PENDING, status=Status.RUNNING, started_at__lt=lost_task
        ).values_list("pk", flat=True)[:limit]
    )
    for sandbox_id in pending:
        enqueue_setup(sandbox_id)
    return len(stuck) + len(pending)


def enqueue_setup(sandbox_id: str) -> None:
    """Run the sandbox's setup in a task of its own, once the caller's transaction commits."""
    with transaction.atomic():
        enqueue_on_commit(
            "sandboxes.tasks.run_workspace_setup", sandbox_id, name=f"setup-{sandbox_id}"
        )


def _expose_services(sandbox: Sandbox) -> None:
    """The environment's services, then each port the image declares that none of them
    already serves (as ``port-<n>``, private like every new service)."""
    wanted = list(sandbox.environment.services if sandbox.environment_id else [])
    taken = {service["port"] for service in wanted}
    declared = sandbox.snapshot.exposed_ports if sandbox.snapshot_id else []
    wanted += [{"name": f"port-{port}", "port": port} for port in declared if port not in taken]
    for service in wanted:
        interactive.expose_service(
            sandbox=sandbox, actor=Actor.system(), name=service["name"], port=service["port"]
        )


def _budget() -> float:
    task_timeout = (getattr(settings, "Q_CLUSTER", {}) or {}).get("timeout") or TIMEOUT_SECONDS
    return max(10.0, min(TIMEOUT_SECONDS, task_timeout - 60))


def _run(sandbox: Sandbox) -> None:
    deadline = time.monotonic() + _budget()
    env = team_secrets.environment_for(sandbox)  # never logged, never in an event
    secret_values = [env[name] for name in sandbox.secret_names or [] if name in env]
    instance = get_provider(sandbox.provider).get(sandbox.provider_ref)
    streamed = capabilities(sandbox.provider).supports("supports_terminal")
    used = 0
    repo = sandbox.repo or {}
    if repo:
        clone_env = dict(env)
        credential = repo.get("credential")
        if credential:
            value = team_secrets.secret_values(team_id=sandbox.team_id, names=[credential])[
                credential
            ]
            secret_values.append(value)
            if urlsplit(repo["url"]).scheme in ("http", "https"):
                clone_env["SBX_GIT_USERNAME"] = repo.get("username") or DEFAULT_GIT_USERNAME
                clone_env["SBX_GIT_PASSWORD"] = value
            else:
                clone_env["SBX_GIT_SSH_KEY"] = value
        timeline = _Timeline(sandbox, "clone", secret_values, used)
        argv = ["sh", "-c", CLONE_SCRIPT, "sbx-clone", repo["url"], repo["branch"], repo["path"]]
        code, timed_out = _run_step(
            instance, argv, clone_env, timeline, streamed=streamed, deadline=deadline
        )
        used = timeline.used
        if code != 0:
            why = "timed out" if timed_out else f"exit code {code}"
            _finish(sandbox, FAILED, f"clone failed ({why}): {_last_line(timeline.tail)}")
            return
    if sandbox.setup:
        timeline = _Timeline(sandbox, "setup", secret_values, used)
        argv = ["sh", "-c", SETUP_SCRIPT, "sbx-setup", repo.get("path", "")]
        setup_env = {**env, "SBX_SETUP": sandbox.setup}
        code, timed_out = _run_step(
            instance, argv, setup_env, timeline, streamed=streamed, deadline=deadline
        )
        if code != 0:
            why = "timed out" if timed_out else f"exit code {code}"
            _finish(sandbox, FAILED, f"setup failed ({why}): {_last_line(timeline.tail)}")
            return
    _finish(sandbox, SUCCEEDED)


def _last_line(tail: str) -> str:
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"
