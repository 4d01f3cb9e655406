"""The exit status of a process started with ``docker exec`` (a terminal or a streamed
process): the daemon offers no wait for an exec, so it is polled with ``exec_inspect``."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from providers.docker_provider.errors import docker_call
from providers.terminal_marks import KILL_SCRIPT

if TYPE_CHECKING:
    from providers.docker_provider.engine import DockerEngine

_WAIT_POLL = 0.05


class ExecStatus:
    """Mixed into a session holding ``_engine``, ``_exec_id``, ``_container_id``, its
    marker ``_token`` and ``_exit_code`` (None while it runs; a session may set it
    itself, -9 when it kills)."""

    _engine: DockerEngine
    _exec_id: str
    _container_id: str
    _token: str
    _exit_code: int | None
    #: What ``wait`` says when the timeout passes first.
    _still_running = "the process is still running"

    def _inspect(self) -> int | None:
        with docker_call(f"inspect exec {self._exec_id[:12]}", ref=self._container_id):
            found = self._engine.client.api.exec_inspect(self._exec_id)
        code = found.get("ExitCode")
        # Not running and no exit code yet: the daemon has not started the process.
        if found.get("Running") or not isinstance(code, int):
            return None
        return code

    @property
    def exit_code(self) -> int | None:
        if self._exit_code is None:
            with contextlib.suppress(Exception):
                self._exit_code = self._inspect()
        return self._exit_code

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._exit_code is None:
            self._exit_code = self._inspect()
            if self._exit_code is not None:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(self._still_running)
            time.sleep(_WAIT_POLL)
        return self._exit_code

    def _kill_marked(self) -> None:
        """Kill every process carrying the session's marker (a fresh exec runs
        KILL_SCRIPT): what the session started goes with it."""
        api = self._engine.exec_api(60)
        try:
            with contextlib.suppress(Exception):
                killer = api.exec_create(
                    self._container_id, ["/bin/sh", "-c", KILL_SCRIPT, "sh", self._token]
                )["Id"]
                api.exec_start(killer)
        finally:
            api.close()

    def _settle_killed(self) -> None:
        """After the kill the daemon reports the end a moment later; -9 if it never does."""
        if self._exit_code is None:
            with contextlib.suppress(Exception):
                self.wait(5)
            if self._exit_code is None:
                self._exit_code = -9
