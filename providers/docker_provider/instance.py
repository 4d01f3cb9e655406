"""A handle on one sandbox container."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from providers.base import (
    EXEC_OUTPUT_LIMIT,
    META_POOL,
    ExecResult,
    HttpService,
    Instance,
    InstanceStatus,
    Networking,
    ProcessSession,
    SnapshotResult,
    TerminalSession,
    as_argv,
    checked_env,
)
from providers.docker_provider import labels, process, services, terminal
from providers.docker_provider.base_image import WORKDIR
from providers.docker_provider.errors import docker_call
from providers.errors import (
    Conflict,
    InvalidState,
    NotFound,
    ProviderError,
    Timeout,
    Unsupported,
)

if TYPE_CHECKING:
    from docker.models.containers import Container

    from providers.docker_provider.engine import DockerEngine

#: PID 1's child (Docker's own init is PID 1): sleeps until the container is stopped.
KEEPALIVE = ["sleep", "2147483647"]
STOP_GRACE_SECONDS = 5

_STATUS = {
    "created": InstanceStatus.STOPPED,
    "exited": InstanceStatus.STOPPED,
    "running": InstanceStatus.RUNNING,
    "restarting": InstanceStatus.RUNNING,
    "paused": InstanceStatus.PAUSED,
}


def _text(data: bytes | None) -> tuple[str, bool]:
    data = data or b""
    return data[:EXEC_OUTPUT_LIMIT].decode("utf-8", "replace"), len(data) > EXEC_OUTPUT_LIMIT


class DockerInstance(Instance):
    def __init__(
        self,
        engine: DockerEngine,
        container: Container,
        http_services: Iterable[HttpService] | None = None,
        relabelled: Mapping[str, str] | None = None,
    ) -> None:
        #: The daemon's client and settings: all an instance needs of its provider.
        self._engine = engine
        self._relabelled = relabelled
        self._load(container, http_services)

    def __repr__(self) -> str:
        return f"DockerInstance(id={self.id!r}, status={self.status.value!r})"

    def _load(
        self, container: Container, http_services: Iterable[HttpService] | None = None
    ) -> None:
        self._container = container
        self.id = container.id
        self.status = _STATUS.get(container.status, InstanceStatus.ERROR)
        self.metadata = labels.metadata_of(container.labels)
        if META_POOL in self.metadata:
            # Made for a warm pool: a relabel record, when there is one, says who owns it.
            if self._relabelled is None:
                self._relabelled = self._engine.relabel_record(container.id) or {}
            self.metadata = dict(self._relabelled) or self.metadata
        if http_services is None:
            http_services = services.services_of(self._engine.client, container.id)
        self.networking = Networking(tuple(http_services))

    def _reload(self) -> Container:
        self._load(self._engine.container(self.id), self.networking.http_services)
        return self._container

    def _do(self, what: str, action) -> None:
        with docker_call(f"{what} container {self.id[:12]}", ref=self.id):
            action()

    # --- exec -------------------------------------------------------------------------

    def exec(
        self,
        command: str | Sequence[str],
        timeout: float = 60.0,
        *,
        env: Mapping[str, str] | None = None,
    ) -> ExecResult:
        argv = as_argv(command)
        extra = checked_env(env)
        self._reload()
        if self.status != InstanceStatus.RUNNING:
            raise Conflict(f"container {self.id[:12]} is {self.status}, not running", ref=self.id)
        seconds = max(1, math.ceil(timeout))
        # ``timeout`` inside the container: Docker cannot kill an exec'd process itself.
        wrapped = ["timeout", "-s", "KILL", str(seconds), *argv]
        api = self._engine.exec_api(seconds + 30)
        try:
            with docker_call(f"exec in container {self.id[:12]}", ref=self.id):
                exec_id = api.exec_create(
                    self.id, wrapped, workdir=WORKDIR, environment=extra or None
                )["Id"]
                started = time.monotonic()
                stdout, stderr = api.exec_start(exec_id, demux=True)
                elapsed = time.monotonic() - started
                code = api.exec_inspect(exec_id)["ExitCode"]
        except Timeout:
            raise Timeout(f"exec in {self.id[:12]} did not finish in {seconds + 30}s") from None
        finally:
            api.close()
        out, out_cut = _text(stdout)
        err, err_cut = _text(stderr)
        return ExecResult(
            exit_code=code if code is not None else -1,
            stdout=out,
            stderr=err,
            stdout_truncated=out_cut,
            stderr_truncated=err_cut,
            timed_out=code == 128 + 9 and elapsed >= seconds,
        )

    def open_terminal(
        self,
        command: str | Sequence[str] | None = None,
        *,
        cols: int = 80,
        rows: int = 24,
        env: Mapping[str, str] | None = None,
    ) -> TerminalSession:
        self._reload()
        if self.status != InstanceStatus.RUNNING:
            raise InvalidState(
                f"container {self.id[:12]} is {self.status}, not running", ref=self.id
            )
        return terminal.open_session(self._engine, self.id, command, cols, rows, env)

    def open_process(
        self, command: str | Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> ProcessSession:
        self._reload()
        if self.status != InstanceStatus.RUNNING:
            raise InvalidState(
                f"container {self.id[:12]} is {self.status}, not running", ref=self.id
            )
        return process.open_process(self._engine, self.id, command, env)

    # --- power ------------------------------------------------------------------------

    def start(self) -> None:
        container = self._reload()
        if self.status == InstanceStatus.RUNNING:
            return
        if self.status == InstanceStatus.PAUSED:
            self._do("unpause", container.unpause)
        else:
            self._do("start", container.start)
            if labels.network_of(container.labels):
                # A new network namespace: its rules before the start returns, so no
                # exec ever runs unfiltered.
                self._engine.enforce_network(self._reload())
        self._reload()

    def stop(self) -> None:
        container = self._reload()
        if self.status == InstanceStatus.STOPPED:
            return
        if self.status == InstanceStatus.PAUSED:
            self._do("unpause", container.unpause)
        self._do("stop", lambda: container.stop(timeout=STOP_GRACE_SECONDS))
        self._reload()

    def pause(self) -> None:
        container = self._reload()
        if self.status == InstanceStatus.PAUSED:
            return
        if self.status != InstanceStatus.RUNNING:
            raise Conflict(f"cannot pause container {self.id[:12]}: it is {self.status}")
        self._do("pause", container.pause)
        self._reload()

    def resume(self) -> None:
        container = self._reload()
        if self.status == InstanceStatus.RUNNING:
            return
        if self.status != InstanceStatus.PAUSED:
            raise Conflict(f"cannot resume container {self.id[:12]}: it is {self.status}")
        self._do("unpause", container.unpause)
        self._reload()

    def hibernate(self) -> None:
        raise Unsupported(
            "Docker's checkpoints (CRIU) are experimental; use pause or stop",
            capability="supports_hibernate",
        )

    def delete(self) -> None:
        client = self._engine.client
        services.remove_all(client, self.id)
        with contextlib.suppress(NotFound):
            self._do("remove", lambda: client.containers.get(self.id).remove(force=True, v=True))
        services.remove_network(client, self.id)
        self._engine.drop_relabel_record(self.id)

    def relabel(self, metadata: Mapping[str, str]) -> None:
        container = self._reload()
        if META_POOL not in labels.metadata_of(container.labels):
            # Only containers made for a warm pool look for a relabel record (one volume
            # lookup per ``get``); no other container is ever relabelled.
            raise Unsupported(
                "the docker provider relabels only containers made for a warm pool",
                capability="relabel",
            )
        self._engine.write_relabel_record(container, metadata)
        self._relabelled = {str(k): str(v) for k, v in metadata.items()}
        self.metadata = dict(self._relabelled)

    # --- services -----------------------------------------------------------------------

    def expose_http_service(self, name: str, port: int) -> str:
        container = self._reload()
        base = self._engine.ensure_base_image()
        service = services.expose(self._engine.client, container, base, name, int(port))
        self._load(container)
        return service.url

    def hide_http_service(self, name: str) -> None:
        container = self._reload()
        services.hide(self._engine.client, container.id, name)
        self._load(container)

    def set_wake_on(self, http: bool, ssh: bool) -> None:
        raise Unsupported(
            "nothing in front of a Docker sandbox wakes it on traffic",
            capability="supports_wake_on",
        )

    # --- snapshot -----------------------------------------------------------------------

    def snapshot(self) -> SnapshotResult:
        container = self._reload()
        tag = f"{self.id[:12]}-{time.time_ns() // 1_000_000}"
        with docker_call(f"commit container {self.id[:12]}", ref=self.id):
            image = container.commit(
                repository="sandboxes-snapshot",
                tag=tag,
                changes=labels.SNAPSHOT_CHANGES,
                pause=True,
            )
        with contextlib.suppress(ProviderError):
            self._reload()
        return SnapshotResult(ref=image.id, size_bytes=image.attrs.get("Size"))
