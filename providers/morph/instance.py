"""A handle on one Morph instance (see ``providers.morph.provider`` for the mapping)."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from providers.base import (
    EXEC_OUTPUT_LIMIT,
    META_SANDBOX_ID,
    ExecResult,
    HttpService,
    Instance,
    InstanceStatus,
    Networking,
    SnapshotResult,
    SshInfo,
    TerminalSession,
    terminal_argv,
    terminal_env,
    terminal_size,
    with_env,
)
from providers.errors import (
    Conflict,
    InvalidState,
    NotFound,
    OperationFailed,
    ProviderError,
    Timeout,
    Unsupported,
)
from providers.morph.session import SdkSnapshotStatus, SdkStatus

if TYPE_CHECKING:
    from morphcloud.api import Instance as SdkInstance

    from providers.morph.session import MorphSession

#: Our own bookkeeping in the instance's metadata, hidden from ``Instance.metadata``.
POWER_KEY = "sbx_power"  # "off" while stopped (paused by ``stop``)
WAKE_KEY = "sbx_wake"  # wake-on flags parked while stopped: "", "http", "ssh", "http,ssh"
INTERNAL_KEYS = (POWER_KEY, WAKE_KEY)

#: Exit codes of ``timeout`` when it killed the command (TERM, KILL; -9 when the agent
#: reports the signal itself rather than as a shell would).
_TIMEOUT_CODES = (124, 137, -9)

#: Runs the command in the home directory under ``timeout``: Morph's exec has no timeout
#: of its own, and a command must die when its time is up, not only our HTTP request.
_EXEC_WRAPPER = 'cd "${HOME:-/root}" || exit 126; exec timeout -s KILL "$0" "$@"'


def _status(sdk: SdkInstance) -> InstanceStatus:
    if sdk.status == SdkStatus.PENDING:
        return InstanceStatus.CREATING
    if sdk.status in (SdkStatus.READY, SdkStatus.SAVING):
        return InstanceStatus.RUNNING
    if sdk.status == SdkStatus.PAUSED:
        stopped = sdk.metadata.get(POWER_KEY) == "off"
        return InstanceStatus.STOPPED if stopped else InstanceStatus.PAUSED
    return InstanceStatus.ERROR


def _cut(text: str) -> tuple[str, bool]:
    data = text.encode("utf-8", "replace")
    if len(data) <= EXEC_OUTPUT_LIMIT:
        return text, False
    return data[:EXEC_OUTPUT_LIMIT].decode("utf-8", "ignore"), True


class MorphInstance(Instance):
    def __init__(self, session: MorphSession, sdk: SdkInstance) -> None:
        #: The SDK client, the key to redact and the timings: all it needs of its provider.
        self._session = session
        self._load(sdk)

    def __repr__(self) -> str:
        return f"MorphInstance(id={self.id!r}, status={self.status.value!r})"

    def _load(self, sdk: SdkInstance) -> None:
        self._sdk = sdk
        self.id = sdk.id
        self.status = _status(sdk)
        self.metadata = {
            k: v for k, v in sdk.metadata.items() if k not in INTERNAL_KEYS and v != ""
        }
        self.networking = Networking(
            tuple(HttpService(s.name, s.port, s.url) for s in sdk.networking.http_services)
        )

    def _refresh(self) -> SdkInstance:
        self._load(self._session.fetch(self.id))
        return self._sdk

    def _call(self, what: str, fn) -> object:
        return self._session.call(f"{what} instance {self.id}", fn, ref=self.id)

    def _set_internal(self, **values: str) -> None:
        # The whole dict goes back: correct whether the API merges or replaces metadata.
        merged = {**self._sdk.metadata, **values}
        self._call("set metadata on", lambda: self._sdk.set_metadata(merged))
        self._load(self._sdk)

    def relabel(self, metadata: Mapping[str, str]) -> None:
        # Our bookkeeping keys stay; everything else is the new owner's metadata. A key
        # the new metadata drops is sent empty, in case the API merges (as _set_internal).
        kept = {k: v for k, v in self._sdk.metadata.items() if k in INTERNAL_KEYS}
        dropped = {k: "" for k in self._sdk.metadata if k not in INTERNAL_KEYS}
        merged = {**dropped, **{str(k): str(v) for k, v in metadata.items()}, **kept}
        self._call("relabel", lambda: self._sdk.set_metadata(merged))
        self._refresh()

    def _wait(self, wanted: set[str], what: str) -> None:
        self._load(self._session.wait_for(self.id, wanted, what=what))

    # --- exec ---------------------------------------------------------------------------

    def exec(
        self,
        command: str | Sequence[str],
        timeout: float = 60.0,
        *,
        env: Mapping[str, str] | None = None,
    ) -> ExecResult:
        # Morph's exec carries no variables: ``env`` inside the instance sets them (in
        # that process's command line, visible inside the instance only).
        argv = with_env(command, env)
        self._refresh()
        if self.status != InstanceStatus.RUNNING:
            raise Conflict(f"Morph instance {self.id} is {self.status}, not running", ref=self.id)
        wrapped = ["/bin/sh", "-c", _EXEC_WRAPPER, f"{max(timeout, 0.1):g}", *argv]
        started = time.monotonic()
        try:
            answer = self._call("exec on", lambda: self._sdk.exec(wrapped, timeout=timeout + 30))
        except Timeout:
            raise Timeout(
                f"Morph exec on {self.id} did not answer within {timeout + 30:g}s", ref=self.id
            ) from None
        elapsed = time.monotonic() - started
        stdout, out_cut = _cut(answer.stdout)
        stderr, err_cut = _cut(answer.stderr)
        timed_out = answer.exit_code in _TIMEOUT_CODES and elapsed >= timeout
        return ExecResult(
            exit_code=answer.exit_code,
            stdout=stdout,
            stderr=stderr,
            stdout_truncated=out_cut,
            stderr_truncated=err_cut,
            timed_out=timed_out,
        )

    # --- power --------------------------------------------------------------------------

    def start(self) -> None:
        self._refresh()
        if self.status == InstanceStatus.CREATING:
            self._wait({SdkStatus.READY}, "booting")
            return
        if self.status == InstanceStatus.ERROR:
            raise OperationFailed(f"Morph instance {self.id} is in error", ref=self.id)
        if self.status != InstanceStatus.RUNNING:
            self._call("resume", self._sdk.resume)
            self._wait({SdkStatus.READY}, "resuming")
        self._unpark()

    def _unpark(self) -> None:
        """Power back on: the wake-on flags ``stop`` parked come back (also after a stop
        whose pause failed, which left the instance running with them off)."""
        if self._sdk.metadata.get(POWER_KEY, "on") == "on":
            return
        parked = self._sdk.metadata.get(WAKE_KEY, "").split(",")
        self._apply_wake_on(http="http" in parked, ssh="ssh" in parked)
        self._set_internal(**{POWER_KEY: "on", WAKE_KEY: ""})

    def stop(self) -> None:
        self._refresh()
        if self.status == InstanceStatus.STOPPED:
            return
        if self.status == InstanceStatus.CREATING:
            self._wait({SdkStatus.READY}, "booting")
        if self._sdk.metadata.get(POWER_KEY, "on") == "off":  # a stop that failed before
            parked = self._sdk.metadata.get(WAKE_KEY, "")  # has the flags parked already
        else:
            wake = self._sdk.wake_on
            parked = ",".join(
                n for n, on in (("http", wake.wake_on_http), ("ssh", wake.wake_on_ssh)) if on
            )
        # Marker first: if the pause then fails, the instance still reads as running.
        self._set_internal(**{POWER_KEY: "off", WAKE_KEY: parked})
        if parked:
            self._apply_wake_on(http=False, ssh=False)
        if self._sdk.status != SdkStatus.PAUSED:
            self._call("pause", self._sdk.pause)
            self._wait({SdkStatus.PAUSED}, "stopping")

    def pause(self) -> None:
        self._refresh()
        if self.status == InstanceStatus.PAUSED:
            return
        if self.status != InstanceStatus.RUNNING:
            raise Conflict(
                f"cannot pause Morph instance {self.id}: it is {self.status}", ref=self.id
            )
        self._unpark()
        self._call("pause", self._sdk.pause)
        self._wait({SdkStatus.PAUSED}, "pausing")

    def resume(self) -> None:
        self._refresh()
        if self.status == InstanceStatus.RUNNING:
            return
        if self.status != InstanceStatus.PAUSED:
            raise Conflict(
                f"cannot resume Morph instance {self.id}: it is {self.status} (start it)",
                ref=self.id,
            )
        self._call("resume", self._sdk.resume)
        self._wait({SdkStatus.READY}, "resuming")

    def hibernate(self) -> None:
        raise Unsupported(
            "Morph's pause already saves memory; there is no separate hibernate",
            capability="supports_hibernate",
        )

    def delete(self) -> None:
        self._session.destroy(self.id)

    # --- services, wake-on, TTL -----------------------------------------------------------

    def expose_http_service(self, name: str, port: int) -> str:
        self._refresh()
        self._call("expose a service on", lambda: self._sdk.expose_http_service(name, int(port)))
        self._load(self._sdk)
        for service in self.networking.http_services:
            if service.name == name:
                return service.url
        raise OperationFailed(f"Morph did not list service {name} on {self.id}", ref=self.id)

    def hide_http_service(self, name: str) -> None:
        self._refresh()
        if all(s.name != name for s in self.networking.http_services):
            return
        try:
            self._call("hide a service on", lambda: self._sdk.hide_http_service(name))
        except NotFound:
            self._refresh()  # raises NotFound itself if the instance went away
        self._load(self._sdk)

    def _apply_wake_on(self, *, http: bool, ssh: bool) -> None:
        self._call(
            "set wake-on on", lambda: self._sdk.set_wake_on(wake_on_ssh=ssh, wake_on_http=http)
        )

    def set_wake_on(self, http: bool, ssh: bool) -> None:
        self._refresh()
        if self.status == InstanceStatus.STOPPED:
            parked = ",".join(n for n, on in (("http", http), ("ssh", ssh)) if on)
            self._set_internal(**{WAKE_KEY: parked})  # applied by the next start
            return
        self._apply_wake_on(http=bool(http), ssh=bool(ssh))

    def wake_on(self) -> tuple[bool, bool]:
        """(http, ssh) as Morph has them now (both off while stopped)."""
        wake = self._refresh().wake_on
        return wake.wake_on_http, wake.wake_on_ssh

    def set_ttl(self, seconds: int | None, action: Literal["stop", "pause"] = "pause") -> None:
        """Morph-side time to live, a backstop beside the control plane's own TTL.

        Morph's ``stop`` action destroys the instance; ``pause`` keeps it. ``None`` clears.
        """
        if seconds is not None and seconds <= 0:
            raise ValueError("ttl seconds must be greater than zero")
        if action not in ("stop", "pause"):
            raise ValueError("ttl action must be 'stop' or 'pause'")
        self._refresh()
        self._call("set the TTL of", lambda: self._sdk.set_ttl(seconds, ttl_action=action))

    # --- snapshot, ssh --------------------------------------------------------------------

    def snapshot(self) -> SnapshotResult:
        self._refresh()
        if self.status != InstanceStatus.RUNNING:
            raise Conflict(f"Morph instance {self.id} is {self.status}, not running", ref=self.id)
        # A token per request: a snapshot made though its answer was lost can be found.
        marker = {"source_instance": self.id, "snapshot_request": secrets.token_hex(8)}
        if META_SANDBOX_ID in self.metadata:
            marker["source_sandbox"] = self.metadata[META_SANDBOX_ID]
        try:
            made = self._call("snapshot", lambda: self._sdk.snapshot(metadata=marker))
        except ProviderError:
            self._remove_snapshots(marker)
            raise
        try:
            self._wait_snapshot(made.id)
        except ProviderError:
            with contextlib.suppress(ProviderError):
                self._session.call("delete snapshot", made.delete, ref=made.id)
            raise
        self._wait({SdkStatus.READY}, "snapshotting")
        return SnapshotResult(ref=made.id)

    def _remove_snapshots(self, marker: dict[str, str]) -> None:
        """Best effort: delete the snapshots carrying ``marker`` (a failed request's)."""
        session = self._session
        try:
            listed = session.call(
                "list snapshots", lambda: session.client.snapshots.list(metadata=marker)
            )
        except ProviderError:
            return
        for snap in listed:
            if all(snap.metadata.get(k) == v for k, v in marker.items()):
                with contextlib.suppress(ProviderError):
                    session.call("delete snapshot", snap.delete, ref=snap.id)

    def _wait_snapshot(self, ref: str) -> None:
        session = self._session
        deadline = time.monotonic() + session.boot_timeout
        delay = session.poll_interval
        while True:
            snap = session.call(
                f"get snapshot {ref}", lambda: session.client.snapshots.get(ref), ref=ref
            )
            if snap.status == SdkSnapshotStatus.READY:
                return
            if snap.status != SdkSnapshotStatus.PENDING:
                raise OperationFailed(f"Morph snapshot {ref} is {snap.status}", ref=ref)
            if time.monotonic() > deadline:
                raise Timeout(f"Morph snapshot {ref} is still pending", ref=ref)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def open_terminal(
        self,
        command: str | Sequence[str] | None = None,
        *,
        cols: int = 80,
        rows: int = 24,
        env: Mapping[str, str] | None = None,
    ) -> TerminalSession:
        argv = terminal_argv(command)
        cols, rows = terminal_size(cols, rows)
        variables = terminal_env(env)
        self._refresh()
        if self.status != InstanceStatus.RUNNING:
            raise InvalidState(
                f"Morph instance {self.id} is {self.status}; a terminal needs it running",
                ref=self.id,
            )
        # paramiko (the SSH client) is imported with the terminal module, only when a
        # terminal is opened: reading the provider's config_keys needs no SDK.
        from providers.morph.terminal import open_session

        client = self._session.client
        return open_session(
            self,
            hostname=client.ssh_hostname,
            port=int(client.ssh_port),
            api_key=client.api_key,
            argv=argv,
            cols=cols,
            rows=rows,
            variables=variables,
            redact=self._session.redact,
        )

    def ssh_info(self) -> SshInfo:
        client = self._session.client
        host, port = client.ssh_hostname, int(client.ssh_port)
        port_part = f" -p {port}" if port != 22 else ""
        return SshInfo(
            host=host,
            port=port,
            username=self.id,
            command=f"ssh{port_part} {self.id}@{host}",
        )
