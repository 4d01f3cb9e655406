"""Terminal sessions for people: a shell (or a command) on a pseudo-terminal in a sandbox.

``open_terminal`` checks who asks (a writer of the sandbox's team: viewers and read-only
tokens get none, nor does anyone outside the team), opens the session through the
provider (``Instance.open_terminal``) and audits it: a ``terminal_open`` event says who
and when, and the ``terminal_close`` event written by ``AuditedTerminal.close`` says how
long it lasted and how it ended. A session that could not be opened is a ``failed``
``terminal_open``; a refused one a ``refused`` one (a terminal is a way in, so attempts
are worth a row).

The caller (the web terminal's websocket consumer, an SSH gateway) holds the returned
session, pumps bytes with ``read`` and ``write`` (from two threads if it likes), and must
``close`` it when its client goes away.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Mapping, Sequence

from django.utils import timezone

from providers.base import TerminalSession, terminal_argv, terminal_env, terminal_size
from providers.errors import ProviderError
from sandboxes.models import Outcome, Sandbox, SandboxEvent
from sandboxes.services import team_secrets
from sandboxes.services.actors import Actor
from sandboxes.services.errors import InvalidInput, NotAllowed
from sandboxes.services.events import record_event
from sandboxes.services.interactive import (
    ACTIVITY_GRANULARITY,
    MAX_COMMAND_LENGTH,
    _failure,
    _instance,
    _require,
    touch_activity,
)
from sandboxes.states import ACTION_STATUSES

#: Variables a caller may set, at most (a terminal's environment is small: TERM, LANG...).
MAX_ENV_VARIABLES = 64


class AuditedTerminal:
    """A provider's terminal session, with its audit trail and the sandbox's activity.

    ``read``, ``write``, ``resize``, ``wait`` and ``exit_code`` are the provider session's
    (see ``providers.base.TerminalSession``); ``close`` also records the session's end.
    """

    def __init__(
        self, session: TerminalSession, *, sandbox: Sandbox, actor: Actor, opened: SandboxEvent
    ) -> None:
        self.session = session
        self.sandbox = sandbox
        self.actor = actor
        #: The ``terminal_open`` event; its ``data["session"]`` names the session.
        self.opened = opened
        self.session_id: str = opened.data["session"]
        self._started = time.monotonic()
        self._touched = self._started
        self._close_lock = threading.Lock()
        self._closed_event: SandboxEvent | None = None

    def __repr__(self) -> str:
        return f"<AuditedTerminal {self.session_id} in {self.sandbox.pk}>"

    def read(self, timeout: float | None = None) -> bytes:
        return self.session.read(timeout)

    def write(self, data: bytes) -> None:
        self.session.write(data)
        # Typing is using the sandbox (the idle scheduler parks unused ones), noted at most
        # once per ACTIVITY_GRANULARITY so keystrokes cost no database write each.
        now = time.monotonic()
        if now - self._touched >= ACTIVITY_GRANULARITY.total_seconds():
            self._touched = now
            touch_activity(self.sandbox)

    def resize(self, cols: int, rows: int) -> None:
        try:
            self.session.resize(cols, rows)
        except ValueError as exc:
            raise InvalidInput(str(exc), fields={"size": [str(exc)]}) from None

    def wait(self, timeout: float | None = None) -> int:
        return self.session.wait(timeout)

    @property
    def exit_code(self) -> int | None:
        return self.session.exit_code

    @property
    def closed(self) -> bool:
        return self._closed_event is not None

    def close(self, reason: str = "") -> SandboxEvent:
        """End the session (its processes are killed) and record ``terminal_close`` with
        its duration and, when given, why it ended (``reason``: "detached for 300 s",
        "closed by the user"...); idempotent (returns the first event)."""
        with self._close_lock:
            if self._closed_event is not None:
                return self._closed_event
            problem = ""
            try:
                self.session.close()
            except ProviderError as exc:
                problem = exc.message
            duration = time.monotonic() - self._started
            data = {
                "session": self.session_id,
                "opened_event": self.opened.pk,
                "duration_seconds": round(duration, 3),
                "exit_code": self.session.exit_code,
            }
            if reason:
                data["reason"] = reason[:200]
            self._closed_event = record_event(
                actor=self.actor,
                action="terminal_close",
                outcome=Outcome.FAILED if problem else Outcome.SUCCEEDED,
                sandbox=self.sandbox,
                message=problem,
                data=data,
            )
            return self._closed_event

    def __enter__(self) -> AuditedTerminal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _checked(
    command: str | Sequence[str] | None, cols: int, rows: int, env: Mapping[str, str] | None
) -> tuple[str | list[str] | None, dict[str, str]]:
    if command is not None:
        if isinstance(command, str):
            valid = 0 < len(command) <= MAX_COMMAND_LENGTH
        else:
            command = list(command)
            valid = (
                0 < len(command) <= 1000
                and all(isinstance(p, str) for p in command)
                and sum(len(p) for p in command) <= MAX_COMMAND_LENGTH
            )
        if not valid:
            raise InvalidInput(
                "command: a non-empty string or list of strings (64 KiB at most), or none "
                "for a login shell",
                fields={"command": ["a non-empty string or list of strings"]},
            )
    try:
        terminal_size(cols, rows)
        if env is not None and (not isinstance(env, Mapping) or len(env) > MAX_ENV_VARIABLES):
            raise ValueError(f"env: at most {MAX_ENV_VARIABLES} variables, as a mapping")
        variables = terminal_env(env)
        if sum(len(k) + len(v) for k, v in variables.items()) > MAX_COMMAND_LENGTH:
            raise ValueError("env: 64 KiB at most")
        terminal_argv(command)
    except ValueError as exc:
        raise InvalidInput(str(exc), fields={"terminal": [str(exc)]}) from None
    return command, dict(env or {})


def open_terminal(
    *,
    sandbox: Sandbox,
    actor: Actor,
    command: str | Sequence[str] | None = None,
    cols: int = 80,
    rows: int = 24,
    env: Mapping[str, str] | None = None,
) -> AuditedTerminal:
    """Open a terminal in a running sandbox for ``actor``: ``command`` (default: a login
    shell) on a ``cols`` x ``rows`` terminal, with ``env`` added. The caller must close the
    session (see ``AuditedTerminal``)."""
    try:
        _require(
            sandbox,
            actor,
            "supports_terminal",
            statuses=ACTION_STATUSES["terminal"],
            action="open a terminal",
        )
    except NotAllowed as refused:
        record_event(
            actor=actor,
            action="terminal_open",
            outcome=Outcome.REFUSED,
            sandbox=sandbox,
            message=refused.message,
        )
        raise
    command, env = _checked(command, cols, rows, env)
    # The sandbox's variables and secrets first; what the caller adds (TERM, LANG) wins.
    env = {**team_secrets.environment_for(sandbox), **env}
    shown = "(login shell)" if command is None else command
    if not isinstance(shown, str):
        shown = " ".join(shown)
    session_id = secrets.token_hex(8)
    data = {"session": session_id, "command": shown[:200], "cols": cols, "rows": rows}
    try:
        session = _instance(sandbox).open_terminal(command, cols=cols, rows=rows, env=env)
    except ProviderError as exc:
        record_event(
            actor=actor,
            action="terminal_open",
            outcome=Outcome.FAILED,
            sandbox=sandbox,
            message=exc.message,
            data=data,
        )
        raise _failure(exc) from exc
    try:
        opened = record_event(
            actor=actor,
            action="terminal_open",
            outcome=Outcome.SUCCEEDED,
            sandbox=sandbox,
            data=data,
        )
        touch_activity(sandbox, at=timezone.now())
    except BaseException:
        session.close()  # no unaudited session: without its row, it must not exist
        raise
    return AuditedTerminal(session, sandbox=sandbox, actor=actor, opened=opened)
