"""The provider contract: what every back end offers the control plane.

A provider hands out *instances*. The service layer (``sandboxes/services``) is the only
caller; it persists ``Instance.id`` (the provider reference) and calls ``provider.get(ref)``
whenever it needs the instance again, so instances are cheap handles, not caches.

Rules every implementation follows (the conformance suite in ``tests/conformance``
checks them):

* ``create`` makes an instance from a snapshot version; the caller then calls ``start``
  (a back end whose create also boots, like Morph, makes that ``start`` a no-op). The
  caller records ``Instance.id`` between the two, so a failed ``start`` can be rolled back
  by deleting exactly what was made.
* ``create`` is idempotent per ``metadata["sandbox_id"]``: if an instance carrying that
  sandbox id already exists, it is returned instead of a second one being made. A retried
  or duplicated provisioning task therefore resumes, never duplicates.
* ``create`` that fails removes whatever it made before raising.
* ``start`` on a running instance, ``stop`` on a stopped one and ``delete`` on a deleted
  one are no-ops; every other call on a deleted instance raises ``NotFound``.
* ``exec`` runs in the instance's working directory, which is writable and survives
  ``stop``/``start`` and ``snapshot``; on an instance that is not running it raises
  ``Conflict`` (preferably its non-retryable subclass ``InvalidState``).
* ``resume`` brings back a paused or a hibernated instance; ``start`` also boots a
  hibernated one.
* An operation the provider cannot do raises ``Unsupported`` naming the capability, and
  ``capabilities`` says so (with a reason) before anyone tries.
* ``open_terminal`` runs a process on a pseudo-terminal inside a running instance, with
  the same boundary as ``exec`` (namespaces, limits, filters, user); the terminal belongs
  to the instance (a sandbox can never reach a terminal of the host or of another
  instance through it), and ``close`` ends the process and everything in its terminal
  session. See ``TerminalSession``.
* ``open_process`` runs a command inside a running instance with the same boundary as
  ``exec``, its stdin, stdout and stderr streamed as pipes (no terminal, no translation):
  see ``ProcessSession``.
* Errors are typed (``providers.errors``) and never contain a secret.
"""

from __future__ import annotations

import enum
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import ClassVar, Protocol, runtime_checkable

from providers.addresses import AddressRule
from providers.errors import Unsupported
from providers.images import ImageSource
from providers.network import NetworkPolicy

#: Keys of the metadata the control plane stores on every instance it makes. Together
#: they are enough to rebuild a lost database row (docs/architecture.md, "Data model").
META_SANDBOX_ID = "sandbox_id"
META_TEAM = "team"
META_PRESET = "preset"
META_SNAPSHOT_ID = "snapshot_id"
MARKER_KEYS = (META_SANDBOX_ID, META_TEAM, META_PRESET, META_SNAPSHOT_ID)
#: On a warm pool's member only (docs/pools.md): the pool it belongs to. Its sandbox id is
#: then the member's id; a claim relabels the instance with the sandbox's own metadata.
META_POOL = "pool"

#: Output beyond this many bytes per stream is cut off and flagged as truncated.
EXEC_OUTPUT_LIMIT = 1024 * 1024


class InstanceStatus(enum.StrEnum):
    """What the back end says an instance is doing."""

    CREATING = "creating"
    RUNNING = "running"
    PAUSED = "paused"
    HIBERNATED = "hibernated"
    STOPPED = "stopped"
    ERROR = "error"


@dataclass(frozen=True)
class InstanceSpec:
    """Everything a provider needs to size and label a new instance."""

    sandbox_id: str
    preset_id: str
    vcpus: int
    memory_mb: int
    disk_gb: int
    #: The effective outbound policy (preset, team, sandbox: sandboxes/services/network.py).
    #: A provider enforces it from the first start on, or refuses a mode it cannot honour
    #: (``Capabilities.supports_network_<mode>`` false): see docs/network.md.
    network: NetworkPolicy = field(default_factory=NetworkPolicy)


@dataclass(frozen=True)
class HttpService:
    """An exposed service: ``port`` inside the instance, reached by the control plane at
    ``url``. The URL is ``http://`` or ``https://`` (a host and port), or
    ``http+unix://<socket path, percent-encoded>/`` for a service the control plane
    reaches through a unix socket on its own host (``local``: only the control plane's
    user may connect). Only the control plane's service proxy (``/s/<sandbox>/<name>/``)
    is meant to use it; ``providers.unix_http.session()`` sends requests to either form.

    Whether the proxy may trust the URL's host is the provider's to say
    (``Provider.service_address_rule``): a provider that builds the URL from an address it
    chose itself (``local``'s unix sockets, Docker's ports published on the host's
    loopback) returns None; one whose addresses come from outside (a PVE guest reports its
    own address, Morph's API names the host) returns the rule the address must pass, and
    the proxy checks the address it actually connects to against it.
    """

    name: str
    port: int
    url: str


@dataclass(frozen=True)
class Networking:
    http_services: tuple[HttpService, ...] = ()


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    #: The command was killed because it ran past its timeout (exit_code is then -1
    #: or the signal's code); the instance itself keeps running.
    timed_out: bool = False


@dataclass(frozen=True)
class SnapshotResult:
    """A new snapshot version made from an instance."""

    ref: str
    size_bytes: int | None = None


@dataclass(frozen=True)
class ImportResult(SnapshotResult):
    """An image imported as a snapshot version (``Provider.import_image``)."""

    #: Bytes the import wrote to the provider's storage (layers already held are free).
    bytes_written: int | None = None
    #: How many of the image's layers the provider already held.
    layers_reused: int = 0


@dataclass(frozen=True)
class Health:
    reachable: bool
    latency_ms: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class Capacity:
    """How much a provider can hold, and how much of it sandboxes have taken.

    ``memory_mb_used`` is what running and paused sandboxes are promised (their presets'
    memory), not what they touch: a create or start that would push it past
    ``memory_mb_total`` is refused.
    """

    memory_mb_total: int
    memory_mb_used: int
    #: Tasks all sandboxes together may have (None: not capped).
    pids_total: int | None = None
    #: Tasks they have now (None: not known).
    pids_used: int | None = None
    sandboxes_running: int = 0
    #: The setting that changes ``memory_mb_total``, for messages.
    memory_setting: str = ""

    @property
    def memory_mb_free(self) -> int:
        return max(0, self.memory_mb_total - self.memory_mb_used)

    def as_dict(self) -> dict[str, int | None]:
        return {
            "memory_mb_total": self.memory_mb_total,
            "memory_mb_used": self.memory_mb_used,
            "memory_mb_free": self.memory_mb_free,
            "pids_total": self.pids_total,
            "pids_used": self.pids_used,
            "sandboxes_running": self.sandboxes_running,
        }


@dataclass(frozen=True)
class MetricSample:
    time: datetime
    cpu_fraction: float | None = None  # 0..vcpus
    memory_bytes: int | None = None


@dataclass(frozen=True)
class SshInfo:
    host: str
    port: int
    username: str
    command: str


@dataclass(frozen=True)
class Capabilities:
    """What a provider can do, as data. Every unsupported capability has a reason."""

    supports_pause: bool = False
    supports_hibernate: bool = False
    supports_snapshots: bool = False
    supports_exec: bool = False
    supports_expose_http: bool = False
    supports_wake_on: bool = False
    supports_ssh: bool = False
    supports_resize: bool = False
    supports_metrics: bool = False
    #: Outbound network policies beyond ``none`` (which every provider honours).
    supports_network_internet: bool = False
    supports_network_allowlist: bool = False
    #: ``Instance.open_terminal``: an interactive process on a pseudo-terminal.
    supports_terminal: bool = False
    #: ``Instance.open_process``: a command with its standard streams as pipes, streamed
    #: both ways (binary-safe: the SSH gateway's ``ssh host cmd``, scp and sftp).
    supports_process: bool = False
    #: capability name -> why it is not available (for people, shown in the UI and API).
    reasons: Mapping[str, str] = field(default_factory=dict)
    #: The largest sandbox the provider can make (None: it does not say, nothing refused):
    #: every preset is offered on every provider unless its size is beyond these.
    max_vcpus: int | None = None
    max_memory_mb: int | None = None
    max_disk_gb: int | None = None
    #: Where the limits come from, for messages ("this host", "PVE_MAX_VCPUS", ...).
    limits_source: str = ""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name.startswith("supports_"))

    def supports(self, name: str) -> bool:
        if name not in self.names():
            raise KeyError(name)
        return bool(getattr(self, name))

    def reason(self, name: str) -> str:
        """Why ``name`` is unsupported ('' when it is supported)."""
        if self.supports(name):
            return ""
        return self.reasons.get(name) or "this provider does not offer it"

    def as_dict(self) -> dict[str, bool]:
        return {name: getattr(self, name) for name in self.names()}

    def size_refusal(self, *, vcpus: int, memory_mb: int, disk_gb: int) -> str:
        """Why a sandbox of this size cannot be made here; '' when it can. The service
        layer asks before it imports a version or creates a sandbox, and leaves the size
        out of what it offers (sandboxes.services.backends.preset_refusal)."""
        over = []
        for what, wanted, limit, unit in (
            ("vCPUs", vcpus, self.max_vcpus, ""),
            ("memory", memory_mb, self.max_memory_mb, " MB"),
            ("disk", disk_gb, self.max_disk_gb, " GB"),
        ):
            if limit is not None and wanted > limit:
                over.append(f"{wanted}{unit} {what} (at most {limit}{unit})")
        if not over:
            return ""
        source = f" ({self.limits_source})" if self.limits_source else ""
        return f"too large for this provider{source}: {', '.join(over)}"

    def network_refusal(self, policy: NetworkPolicy) -> str:
        """Why ``policy`` cannot be honoured here; '' when it can."""
        if not policy.networked:
            return ""
        name = f"supports_network_{policy.mode}"
        if self.supports(name):
            return ""
        return f"the {policy.mode} network policy is not available: {self.reason(name)}"

    def require_network(self, policy: NetworkPolicy, *, provider: str) -> None:
        """Raise Unsupported when ``policy`` cannot be enforced (providers' create)."""
        refusal = self.network_refusal(policy)
        if refusal:
            raise Unsupported(
                f"{provider}: {refusal}", capability=f"supports_network_{policy.mode}"
            )

    def require(self, name: str, *, provider: str) -> None:
        """Raise Unsupported when ``name`` is missing."""
        if not self.supports(name):
            raise Unsupported(f"{provider} cannot do this: {self.reason(name)}", capability=name)


def as_argv(command: str | Sequence[str]) -> list[str]:
    """A shell string runs under ``/bin/sh -c``; a list runs as it is."""
    if isinstance(command, str):
        return ["/bin/sh", "-c", command]
    argv = [str(part) for part in command]
    if not argv:
        raise ValueError("command is empty")
    return argv


def with_env(command: str | Sequence[str], env: Mapping[str, str] | None) -> list[str]:
    """``command`` run by ``env NAME=value ...`` where a back end cannot pass variables."""
    argv = as_argv(command)
    extra = checked_env(env)
    if not extra:
        return argv
    # "--" ends env's options: nothing after it is read as one.
    return ["env", "--", *(f"{name}={value}" for name, value in extra.items()), *argv]


#: What ``open_terminal`` runs when no command is given: the image's bash as a login shell
#: where there is one (prompt, history, line editing), else its POSIX sh.
DEFAULT_TERMINAL_COMMAND = (
    "/bin/sh",
    "-c",
    "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi",
)
#: The terminal type sessions announce unless the caller's ``env`` names another
#: (xterm.js and every common emulator speak it).
DEFAULT_TERM = "xterm-256color"
#: Columns and rows a terminal may have (a window far larger is a mistake or an attack on
#: the programs inside, which allocate per cell).
MAX_TERMINAL_CELLS = 1000


def terminal_size(cols: int, rows: int) -> tuple[int, int]:
    """``(cols, rows)`` checked: whole numbers from 1 to ``MAX_TERMINAL_CELLS``."""
    for value in (cols, rows):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("terminal columns and rows are whole numbers")
        if not 1 <= value <= MAX_TERMINAL_CELLS:
            raise ValueError(f"terminal columns and rows go from 1 to {MAX_TERMINAL_CELLS}")
    return cols, rows


def terminal_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """The variables a terminal session adds to the instance's environment: ``TERM`` and
    the caller's, checked (``checked_env``)."""
    return checked_env({"TERM": DEFAULT_TERM, **(env or {})})


def checked_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """Variables for a process in an instance: a name is a shell identifier, names and
    values are strings, and there is no NUL anywhere (``ValueError`` otherwise)."""
    merged = dict(env or {})
    for name, value in merged.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ValueError("environment names and values are strings")
        if not name or not (name[0].isalpha() or name[0] == "_"):
            raise ValueError(f"not an environment variable name: {name!r}")
        if not all(c.isascii() and (c.isalnum() or c == "_") for c in name) or "\0" in value:
            raise ValueError(f"not an environment variable name or value: {name!r}")
    return merged


def terminal_argv(command: str | Sequence[str] | None) -> list[str]:
    """What a terminal runs: ``command`` as ``as_argv`` reads it, or the default shell."""
    argv = list(DEFAULT_TERMINAL_COMMAND) if command is None else as_argv(command)
    if any("\0" in part for part in argv):
        raise ValueError("a command cannot contain NUL bytes")
    return argv


class TerminalSession(ABC):
    """An interactive process on a pseudo-terminal inside an instance.

    Made by ``Instance.open_terminal``. Bytes go both ways untouched (the terminal's line
    discipline inside the instance echoes, edits lines and turns Ctrl-C into SIGINT, as
    for a person at a console). One reader and one writer may use a session from two
    threads at once; ``close`` may be called from any thread. A session holds a file
    descriptor of the control plane's process until it is closed: use it as a context
    manager or call ``close``.

    The output is the sandbox's: untrusted bytes, escape sequences included. Render it in a
    terminal emulator made for that (xterm.js in a browser), never on a terminal of the
    host, where a sequence could retitle, reprogram or answer back into an operator's shell.
    """

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Send ``data`` as typed input (all of it; blocks while the terminal is full).
        Raises ``Conflict`` once the session is closed or its terminal is gone."""

    @abstractmethod
    def read(self, timeout: float | None = None) -> bytes:
        """The next output, as soon as any arrived (at most 64 KiB at a time): non-empty
        bytes; ``b""`` once the output has ended (everything holding the terminal is
        gone, or the session was closed). Raises ``TimeoutError`` when nothing came within
        ``timeout`` seconds (None: wait as long as it takes). Output nobody reads holds the
        process back (a terminal's buffer is small), it is never dropped."""

    @abstractmethod
    def resize(self, cols: int, rows: int) -> None:
        """Change the window size; the foreground process gets SIGWINCH."""

    @abstractmethod
    def wait(self, timeout: float | None = None) -> int:
        """The exit code of the process, once it ended (like ``ExecResult.exit_code``:
        negative when a signal killed it, ``-9`` when it went with its instance, stopped
        meanwhile). Raises ``TimeoutError`` when it is still running after ``timeout``
        seconds."""

    @property
    @abstractmethod
    def exit_code(self) -> int | None:
        """The exit code if the process ended, else None (never blocks)."""

    @abstractmethod
    def close(self) -> None:
        """End the session: kill the process and every process of its terminal session
        (those that left it with ``setsid`` stay, as after ``exec``), and release the
        terminal. Idempotent."""

    def __enter__(self) -> TerminalSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ProcessSession(ABC):
    """A command running inside an instance with its standard streams as pipes.

    Made by ``Instance.open_process``. Bytes go both ways untouched (no terminal: binary
    data such as an sftp-server's protocol passes as it is), stdout and stderr apart, and
    the end of the input is delivered (``close_stdin``). One reader and one writer may use
    a session from two threads at once; ``close`` may be called from any thread.
    """

    STDOUT: ClassVar[int] = 1
    STDERR: ClassVar[int] = 2

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Send ``data`` to the command's stdin (all of it; blocks while the pipe is full).
        Raises ``Conflict`` once stdin is closed or the command is gone."""

    @abstractmethod
    def close_stdin(self) -> None:
        """End the command's input (it reads end-of-file). Idempotent."""

    @abstractmethod
    def read(self, timeout: float | None = None) -> tuple[int, bytes]:
        """The next output: ``(STDOUT or STDERR, non-empty bytes)``, at most 64 KiB at a
        time, as soon as any arrived; ``(0, b"")`` once both streams ended. Raises
        ``TimeoutError`` when nothing came within ``timeout`` seconds."""

    @abstractmethod
    def wait(self, timeout: float | None = None) -> int:
        """The exit code once the command ended (negative: killed by that signal).
        ``TimeoutError`` when it still runs after ``timeout`` seconds."""

    @property
    @abstractmethod
    def exit_code(self) -> int | None:
        """The exit code if the command ended, else None (never blocks)."""

    @abstractmethod
    def close(self) -> None:
        """End the session: kill the command's process group if it still runs and release
        the pipes. Idempotent."""

    def __enter__(self) -> ProcessSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@runtime_checkable
class ReservationStore(Protocol):
    """Keys (e.g. PVE VMIDs) claimed atomically across every worker of the control plane.

    The service layer hands providers a database-backed store (``use_reservations``), so
    two workers never claim the same key; the default keeps claims in this process only.
    """

    def reserve(self, namespace: str, candidates: Iterable[str], owner: str) -> str | None:
        """Claim the first candidate nobody holds; return it, or None if all are taken."""
        ...

    def release(self, namespace: str, key: str) -> None:
        """Give a key back (no error if it was not held)."""
        ...

    def keys(self, namespace: str) -> set[str]:
        """Every key currently held in ``namespace``."""
        ...


class MemoryReservationStore:
    """A ``ReservationStore`` for one process (tests, and providers nobody gave a store)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], str] = {}

    def reserve(self, namespace: str, candidates: Iterable[str], owner: str) -> str | None:
        with self._lock:
            for key in candidates:
                if (namespace, key) not in self._held:
                    self._held[(namespace, key)] = owner
                    return key
        return None

    def release(self, namespace: str, key: str) -> None:
        with self._lock:
            self._held.pop((namespace, key), None)

    def keys(self, namespace: str) -> set[str]:
        with self._lock:
            return {key for (ns, key) in self._held if ns == namespace}


class Instance(ABC):
    """A handle on one instance. Reads are attributes; every method talks to the back end."""

    id: str
    status: InstanceStatus
    metadata: dict[str, str]
    networking: Networking
    #: When the back end last saw traffic or use (exposed-service requests, exec), if it
    #: observes that itself; the idle scheduler uses it beside the control plane's own.
    last_activity: datetime | None = None

    @abstractmethod
    def exec(
        self,
        command: str | Sequence[str],
        timeout: float = 60.0,
        *,
        env: Mapping[str, str] | None = None,
    ) -> ExecResult:
        """Run ``command`` to its end (or ``timeout``) with the instance's environment plus
        ``env`` (``checked_env``; a team's secrets arrive this way: never log it)."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def pause(self) -> None: ...

    @abstractmethod
    def resume(self) -> None: ...

    @abstractmethod
    def hibernate(self) -> None: ...

    @abstractmethod
    def delete(self) -> None: ...

    @abstractmethod
    def expose_http_service(self, name: str, port: int) -> str: ...

    @abstractmethod
    def hide_http_service(self, name: str) -> None: ...

    @abstractmethod
    def set_wake_on(self, http: bool, ssh: bool) -> None: ...

    @abstractmethod
    def snapshot(self) -> SnapshotResult: ...

    def relabel(self, metadata: Mapping[str, str]) -> None:
        """Replace the instance's metadata with ``metadata`` (a warm pool's member handed
        to a sandbox: docs/pools.md), where ``list`` and ``get`` read it, so orphan
        detection and rebuilding a lost row see the sandbox, not the pool. The instance's
        reference does not change."""
        raise Unsupported("this provider cannot relabel an instance", capability="relabel")

    def metrics(self) -> list[MetricSample]:
        """Recent CPU and memory samples, oldest first (empty when not reported)."""
        return []

    def ssh_info(self) -> SshInfo:
        raise Unsupported("this provider offers no SSH access", capability="supports_ssh")

    def open_terminal(
        self,
        command: str | Sequence[str] | None = None,
        *,
        cols: int = 80,
        rows: int = 24,
        env: Mapping[str, str] | None = None,
    ) -> TerminalSession:
        """Run ``command`` (default: a login shell, ``DEFAULT_TERMINAL_COMMAND``) on a new
        pseudo-terminal of ``cols`` x ``rows`` in the instance's working directory, with
        the instance's environment plus ``TERM`` and ``env``. ``InvalidState`` when the
        instance is not running; ``ValueError`` for a bad size, command or variable."""
        raise Unsupported("this provider offers no terminal", capability="supports_terminal")

    def open_process(
        self, command: str | Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> ProcessSession:
        """Run ``command`` (``as_argv``) in the instance's working directory with the
        instance's environment plus ``env``, its standard streams as pipes (see
        ``ProcessSession``). ``InvalidState`` when the instance is not running."""
        raise Unsupported(
            "this provider offers no streamed processes", capability="supports_process"
        )


class Provider(ABC):
    """One back end. Made from configuration by the registry; holds no per-request state."""

    #: The provider's name as users write it (``pve-lxc``); snapshot ids drop the dashes.
    name: ClassVar[str]

    #: Every environment variable ``from_config`` and ``configured`` read, by its exact
    #: name. The registry passes a provider these and nothing else of the environment
    #: (``providers.registry.config_keys``), so a key missing here never arrives. Keep the
    #: module defining the class importable without the provider's SDK (import the SDK
    #: where it is used): the keys are read for every known provider at start-up.
    config_keys: ClassVar[tuple[str, ...]] = ()

    @classmethod
    @abstractmethod
    def from_config(cls, config: Mapping[str, str]) -> Provider:
        """Build the provider from settings (the environment); raise ValueError if invalid."""

    @classmethod
    def configured(cls, config: Mapping[str, str]) -> bool:
        """True when the settings needed to switch this provider on are present."""
        return False

    @property
    @abstractmethod
    def capabilities(self) -> Capabilities: ...

    @abstractmethod
    def create(
        self, spec: InstanceSpec, snapshot_ref: str, metadata: Mapping[str, str]
    ) -> Instance:
        """Make an instance from ``snapshot_ref``, ready for ``start`` (see the module's rules)."""

    @abstractmethod
    def get(self, ref: str) -> Instance:
        """The instance with this reference; NotFound when it does not exist."""

    @abstractmethod
    def list(self) -> list[Instance]:
        """Every instance this control plane made (those carrying ``META_SANDBOX_ID``)."""

    @abstractmethod
    def delete_snapshot(self, ref: str) -> None:
        """Destroy a snapshot version's image; Conflict when something still depends on it."""

    @abstractmethod
    def health(self) -> Health: ...

    @property
    def service_address_rule(self) -> AddressRule | None:
        """What the host of a service URL (``HttpService.url``) must resolve to before the
        service proxy connects to it (see ``providers.addresses``).

        None (the default) means the provider chose the address itself and it is trusted
        as it is: ``http+unix://`` sockets of the control plane, a port the provider
        published on the control plane's own loopback. A provider whose addresses come
        from outside (the guest, or a remote API) returns a rule: unspecified, loopback,
        link-local, multicast and reserved addresses are then refused, also when a DNS
        name resolves to them at connect time. ``http+unix://`` URLs are never checked.
        """
        return None

    def import_image(self, source: ImageSource) -> ImportResult:
        """Make a snapshot version from an image (a root filesystem's layers and its
        configuration, see ``providers.images``): the image's Env, WorkingDir, User and
        ExposedPorts are honoured by the sandboxes made from it, as far as the provider
        can. Unsupported where the provider has no way to take one."""
        raise Unsupported(
            f"the {self.name} provider cannot import images", capability="import_image"
        )

    def capacity(self) -> Capacity | None:
        """What this provider can still hold (None: it does not say; nothing is refused)."""
        return None

    def use_reservations(self, store: ReservationStore) -> None:
        """Claim shared keys (PVE VMIDs) through ``store``; providers that need none ignore it."""
        return None
