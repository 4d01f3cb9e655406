"""Starting a sandbox: overlay mounts in a private mount namespace, then bubblewrap.

The process tree of a running sandbox, all inside its cgroups and its user namespace:

    bwrap (supervisor, host pid namespace)
      └─ sbx-init (pid 1 inside: reaps orphans, forks exec'd commands; see sbx-init.c)

Root inside is an unprivileged id range outside (``IdMap``): the user namespace is made
first (by sbx-init in its ``--userns`` role), its maps are written by the launcher, the
layers are mounted through that mapping (idmapped mounts, so layers on disk keep the ids
the sandbox sees), and bubblewrap then runs as the namespace's root, so every namespace it
makes is owned by the sandbox's user namespace.

Nothing of it is a Python process, and it does not depend on the process that started it:
that one may exit (web or worker restart) and the sandbox keeps running; it is found
again from its state file. The overlay mounts live only in the sandbox's own mount
namespace, so they disappear with it and never leak into the host's mount table.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from providers.errors import OperationFailed
from providers.local import network, sockets, syscalls
from providers.local.state import Runtime, boot_id, process_start_ticks

WORKDIR = "/workspace"
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Overlay options pinned so layers stay plain directories whatever the host's defaults.
OVERLAY_OPTIONS = "index=off,metacopy=off"
READY_TIMEOUT = 15.0

#: Supervisors this process started, by pid, so they can be reaped when they exit.
_children: dict[int, subprocess.Popen] = {}


def sandbox_env(sandbox_id: str) -> dict[str, str]:
    """The whole environment of processes in a sandbox: nothing comes from the host."""
    return {
        "PATH": SANDBOX_PATH,
        "HOME": "/root",
        "USER": "root",
        "LOGNAME": "root",
        "SHELL": "/bin/sh",
        "HOSTNAME": sandbox_id,
        "LANG": "C.UTF-8",
    }


@dataclass(frozen=True)
class Mount:
    """One overlay: ``target`` (relative to the sandbox root) from these directories."""

    target: str
    lowers: list[Path]
    upper: Path
    work: Path

    def options(self, base: Path) -> str:
        # Paths relative to the root keep the option string short (the kernel takes one
        # page) even for deep snapshot chains.
        def short(path: Path) -> str:
            with contextlib.suppress(ValueError):
                return str(path.relative_to(base))
            return str(path)

        lower = ":".join(short(p) for p in self.lowers)
        return (
            f"lowerdir={lower},upperdir={short(self.upper)},workdir={short(self.work)},"
            f"{OVERLAY_OPTIONS}"
        )


@dataclass(frozen=True)
class IdMap:
    """Where a sandbox's ids live on the host: root inside is ``uid`` (and ``gid``) outside,
    and the ``count`` ids after it belong to the sandbox alone."""

    uid: int
    gid: int
    count: int

    def lines(self) -> tuple[str, str]:
        return f"0 {self.uid} {self.count}", f"0 {self.gid} {self.count}"


@dataclass(frozen=True)
class LaunchSpec:
    sandbox_id: str
    bwrap: str
    root: Path
    merged: Path
    mounts: list[Mount]
    cgroup_procs: list[str]
    log: Path
    #: The compiled sbx-init: the sandbox's pid 1, and the maker of its user namespace.
    init_binary: Path
    #: Where sbx-init's exec socket is bound (host side, never visible inside).
    exec_socket: Path
    #: The compiled seccomp filter (sbx-init loads it; every process inherits it).
    seccomp: Path
    #: Root: the sandbox's user namespace maps its root to this host range.
    idmap: IdMap | None = None
    #: Directories seen through the sandbox's id mapping (layers, and the directory
    #: holding its writable layer and overlay work directories).
    idmapped: tuple[Path, ...] = ()
    #: Not root: the sandbox gets a user namespace mapping root inside to this user.
    rootless: bool = False
    #: An outbound network (pasta and the policy's rules); None: loopback only.
    network: network.NetworkSetup | None = None


INIT_PATH = "/dev/.sbx-init"
#: An empty directory of the host that only the launcher's private mount namespace covers
#: with a tmpfs holding the sandbox's finished root and init: the sandbox's root user (an
#: unprivileged host id) can reach it there, while LOCAL_SANDBOX_ROOT stays 0700.
STAGE = Path("/run/sandboxes-local")


def bwrap_argv(
    spec: LaunchSpec, ready_fd: int, info_fd: int, listen_fd: int, seccomp_fd: int
) -> list[str]:
    """bubblewrap's command line. The rest of the sandbox's hardening (read-only and
    covered /proc entries, dropping CAP_SYS_ADMIN, the seccomp filter) is sbx-init's
    first act, before anything runs inside: see sbx-init.c."""
    staged = spec.idmap is not None
    argv = [
        spec.bwrap,
        "--bind", str(STAGE / "root") if staged else str(spec.merged), "/",
        "--proc", "/proc",
        "--dev", "/dev",
        "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
        "--hostname", spec.sandbox_id,
        "--new-session",
        "--cap-drop", "ALL",
    ]  # fmt: skip
    # CAP_SYS_ADMIN only for sbx-init's own mounts: it drops it before it is ready.
    dropped = dropped_capabilities(spec)
    for name in (*syscalls.SANDBOX_CAPS, "CAP_SYS_ADMIN"):
        if name not in dropped:
            argv += ["--cap-add", name]
    if spec.network is not None and staged:
        # The resolver is pasta's DNS forwarder; read-only, so it stays the one in use.
        argv += ["--ro-bind", str(STAGE / "resolv.conf"), "/etc/resolv.conf"]
    argv.append("--clearenv")
    for key, value in sandbox_env(spec.sandbox_id).items():
        argv += ["--setenv", key, value]
    # "/": the init needs no working directory, and a sandbox may delete /workspace.
    # No cgroup namespace: sbx-init joins its cgroups only after bwrap cloned it (see
    # launch), and a namespace made at clone time would be rooted elsewhere.
    # /dev is bwrap's own tmpfs: the bind leaves no trace in the sandbox's layers.
    init = str(STAGE / "init") if staged else str(spec.init_binary)
    argv += ["--chdir", "/", "--info-fd", str(info_fd), "--as-pid-1"]
    argv += ["--ro-bind", init, INIT_PATH, "--", INIT_PATH]
    return [*argv, str(listen_fd), str(ready_fd), str(seccomp_fd)]


def dropped_capabilities(spec: LaunchSpec) -> set[str]:
    """Capabilities of the default set this sandbox does not get. With an outbound
    network, CAP_NET_RAW: a packet socket writes frames below the policy's rules
    (nftables never sees them), straight to pasta (see network.py)."""
    return {"CAP_NET_RAW"} if spec.network is not None else set()


def _mount_overlays(spec: LaunchSpec, extra: str) -> None:
    """Mount the sandbox's overlays (in the current, private mount namespace)."""
    os.chdir(spec.root)
    try:
        for mount in spec.mounts:
            target = spec.merged / mount.target.lstrip("/")
            syscalls.mount("overlay", str(target), "overlay", 0, mount.options(spec.root) + extra)
    finally:
        os.chdir("/")


def _make_private() -> None:
    syscalls.mount("none", "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE, None)


def _prepare_rootless(spec: LaunchSpec, error_fd: int) -> None:
    """Runs in the forked child before bwrap (not root): a user namespace of our own."""
    try:
        _join_cgroups(spec, "0")
        _enter_user_namespace()
        _make_private()
        _mount_overlays(spec, ",userxattr")  # implies redirect_dir=nofollow
    except BaseException as exc:
        os.write(error_fd, str(exc).encode()[:2000])
        raise


def _stage_root(spec: LaunchSpec, userns_fd: int) -> None:
    """In this thread's private mount namespace: layers through the sandbox's id mapping,
    the overlays on them, and the finished root and init where bubblewrap can reach them.

    The overlays are mounted with the sandbox's root as the file-system id: overlayfs
    creates its work files (and copies up) with the mounter's ids, which must exist in
    the idmapped writable layer.
    """
    for path in spec.idmapped:
        syscalls.idmap_in_place(str(path), userns_fd)
    syscalls.set_thread_fs_ids(spec.idmap.uid, spec.idmap.gid)
    try:
        _mount_overlays(spec, ",redirect_dir=off")
    finally:
        syscalls.set_thread_fs_ids(0, 0)
    syscalls.mount("sandbox-stage", str(STAGE), "tmpfs", _STAGE_FLAGS, "mode=0755,size=16k")
    (STAGE / "root").mkdir()
    (STAGE / "init").touch()
    if spec.network is not None:
        (STAGE / "resolv.conf").write_text(network.RESOLV_CONF)
    syscalls.mount(
        str(spec.merged), str(STAGE / "root"), None, syscalls.MS_BIND | syscalls.MS_REC, None
    )
    syscalls.mount(str(spec.init_binary), str(STAGE / "init"), None, syscalls.MS_BIND, None)


_STAGE_FLAGS = syscalls.MS_NOSUID | syscalls.MS_NODEV


def _spawn_from_thread(spec: LaunchSpec, argv: list[str], **popen) -> subprocess.Popen:
    """Start the sandbox from a thread with its own mount namespace.

    A thread can have a mount namespace of its own (after unsharing its fs_struct), and a
    child spawned from it shares it. So the Python process is never forked (a fork copies
    its page tables: milliseconds for a large web process), and subprocess can use vfork.
    The child is sbx-init in its ``--userns`` role: it makes the sandbox's user namespace
    and waits while this thread writes the namespace's id maps, mounts the layers through
    them, and stages the root; then it becomes the namespace's root and execs bubblewrap.
    """
    STAGE.mkdir(mode=0o755, parents=True, exist_ok=True)
    outcome: dict = {}
    sync_r, sync_w = os.pipe()
    go_r, go_w = os.pipe()

    def work() -> None:
        process = None
        try:
            syscalls.unshare(syscalls.CLONE_FS | syscalls.CLONE_NEWNS)
            _make_private()
            # The namespace's owner is the sandbox's root id (see sbx-init.c).
            ids = [str(spec.idmap.uid), str(spec.idmap.gid)]
            holder = [str(spec.init_binary), "--userns", *ids, str(sync_w), str(go_r), "--"]
            passed = [*popen.pop("pass_fds"), sync_w, go_r]
            process = subprocess.Popen([*holder, *argv], pass_fds=passed, **popen)
            outcome["process"] = process
            os.close(sync_w)
            os.close(go_r)
            if os.read(sync_r, 1) != b"\n":
                raise OSError(f"the sandbox's user namespace was not made: {_tail(spec.log)}")
            userns_fd = _map_ids(process.pid, spec.idmap)
            try:
                _stage_root(spec, userns_fd)
            finally:
                os.close(userns_fd)
            os.write(go_w, b"g")
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            for fd in (sync_r, go_w):
                with contextlib.suppress(OSError):
                    os.close(fd)

    thread = threading.Thread(target=work, name=f"launch-{spec.sandbox_id}")
    thread.start()
    thread.join()
    if "error" in outcome:
        process = outcome.get("process")
        if process is not None:
            process.kill()
            process.wait()
        raise OperationFailed(f"could not set up sandbox {spec.sandbox_id}: {outcome['error']}")
    return outcome["process"]


def _map_ids(pid: int, idmap: IdMap) -> int:
    """Write the id maps of ``pid``'s new user namespace; return a descriptor of it."""
    uid_line, gid_line = idmap.lines()
    with open(f"/proc/{pid}/uid_map", "w") as handle:
        handle.write(uid_line)
    with open(f"/proc/{pid}/gid_map", "w") as handle:
        handle.write(gid_line)
    return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)


def _join_cgroups(spec: LaunchSpec, pid: str) -> None:
    for procs in spec.cgroup_procs:
        with open(procs, "w") as handle:
            handle.write(pid)


def _read_info(info_fd: int, process: subprocess.Popen) -> dict:
    """bwrap's --info-fd JSON: it arrives right after bwrap cloned the sandbox's init."""
    data = b""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        readable, _, _ = select.select([info_fd], [], [], 0.5)
        if readable:
            chunk = os.read(info_fd, 65536)
            data += chunk
            with contextlib.suppress(ValueError):
                return json.loads(data)
            if not chunk:
                break
        elif process.poll() is not None:
            break
    return {}


def _enter_user_namespace() -> None:
    """Become root of a new user namespace (mapped to the calling user) with its own mounts."""
    uid, gid = os.geteuid(), os.getegid()
    syscalls.unshare(syscalls.CLONE_NEWUSER | syscalls.CLONE_NEWNS)
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as handle:
            handle.write(text)


def launch(spec: LaunchSpec) -> Runtime:
    """Start the sandbox's init and wait until it runs in its finished root."""
    reap_finished()
    ready_r, ready_w = os.pipe()
    info_r, info_w = os.pipe()
    error_r, error_w = os.pipe()
    process = None
    server = None
    seccomp_fd = -1
    init_fd = -1
    try:
        server = sockets.listen(spec.exec_socket)
        seccomp_fd = os.open(spec.seccomp, os.O_RDONLY | os.O_CLOEXEC)
        passed = [ready_w, info_w, server.fileno(), seccomp_fd]
        argv = bwrap_argv(spec, ready_w, info_w, server.fileno(), seccomp_fd)
        with open(spec.log, "wb") as log:
            popen = {
                "stdin": subprocess.DEVNULL,
                "stdout": log,
                "stderr": log,
                "pass_fds": passed,
                "start_new_session": True,
            }
            try:
                if spec.rootless:
                    process = subprocess.Popen(
                        argv, **popen, preexec_fn=lambda: _prepare_rootless(spec, error_w)
                    )
                else:
                    process = _spawn_from_thread(spec, argv, **popen)
            except (subprocess.SubprocessError, OSError) as exc:
                os.close(error_w)
                error_w = -1
                detail = os.read(error_r, 4000).decode(errors="replace") or str(exc)
                raise OperationFailed(
                    f"could not set up sandbox {spec.sandbox_id}: {detail}"
                ) from exc
        for fd in (ready_w, info_w, error_w, seccomp_fd):
            if fd >= 0:
                os.close(fd)
        ready_w = info_w = error_w = seccomp_fd = -1
        _children[process.pid] = process
        info = _read_info(info_r, process)
        if "child-pid" not in info:
            raise OperationFailed(
                f"sandbox {spec.sandbox_id} did not start: {_tail(spec.log) or 'no output'}"
            )
        pid = int(info["child-pid"])
        init_fd = os.pidfd_open(pid)  # pins it: a failure below kills exactly this init
        if not spec.rootless:
            # sbx-init forks nothing before it is ready, so it joins its cgroups now, while
            # bwrap builds its root: a cgroup v1 migration costs a few milliseconds (an RCU
            # grace period) that then overlap the setup.
            _join_cgroups(spec, str(pid))
            # The supervisor too (quick now: migrations right after another are cheap),
            # so the sandbox's cgroups hold and limit all of it, and a service manager
            # cleaning up the web process's cgroup leaves it alone.
            _join_cgroups(spec, str(process.pid))
        if not _wait_ready(ready_r, process):
            raise OperationFailed(
                f"sandbox {spec.sandbox_id} did not start: {_tail(spec.log) or 'no output'}"
            )
        helper = None
        if spec.network is not None and spec.idmap is not None:
            # Before the start returns, so nothing but the init ever runs unfiltered.
            helper = network.attach(
                spec.network, pid, spec.idmap.uid, spec.idmap.gid, spec.cgroup_procs
            )
        ticks = process_start_ticks(pid)
        if ticks is None:
            raise OperationFailed(f"sandbox {spec.sandbox_id} exited while starting")
        return Runtime(
            pid=pid,
            start_ticks=ticks,
            boot_id=boot_id(),
            supervisor=process.pid,
            exec_socket=True,
            network_pid=helper,
        )
    except BaseException:
        # The init runs in its own session: killing bwrap's group would orphan it.
        if init_fd >= 0:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(init_fd, signal.SIGKILL)
        if process is not None:
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
            reap(process.pid, timeout=2)
        raise
    finally:
        if init_fd >= 0:
            os.close(init_fd)
        if server is not None:
            server.close()
        for fd in (ready_r, ready_w, info_r, info_w, error_r, error_w, seccomp_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _wait_ready(ready_fd: int, process: subprocess.Popen) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        readable, _, _ = select.select([ready_fd], [], [], 0.5)
        if readable:
            return os.read(ready_fd, 1) == b"\n"
        if process.poll() is not None:
            return False
    return False


def _tail(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace").strip()[-1000:]
    return ""


def reap_finished() -> None:
    """Collect supervisors that exited (their sandbox was stopped, maybe by another
    process), so a long-running web or worker process keeps no zombies."""
    for pid, process in list(_children.items()):
        if process.poll() is not None:
            _children.pop(pid, None)


def reap(supervisor: int, *, timeout: float = 0.0) -> None:
    """Collect the exit status of a supervisor this process started (no zombie left)."""
    process = _children.get(supervisor)
    if process is None:
        return
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return
    _children.pop(supervisor, None)
