"""Starting a sandbox: overlay mounts in a private mount namespace, then bubblewrap.

The process tree of a running sandbox, all inside its cgroups:

    bwrap (supervisor, host pid namespace)
      └─ sbx-init (pid 1 inside: reaps orphans, forks exec'd commands; see sbx-init.c)

or, where no C compiler could build sbx-init, bubblewrap's own init with a
``sleep infinity`` under it (exec then enters the namespaces from outside).

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
from providers.local import sockets, syscalls
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
class LaunchSpec:
    sandbox_id: str
    bwrap: str
    root: Path
    merged: Path
    mounts: list[Mount]
    cgroup_procs: list[str]
    log: Path
    #: The compiled sbx-init, or None to use bubblewrap's init.
    init_binary: Path | None = None
    #: Where sbx-init's exec socket is bound (host side, never visible inside).
    exec_socket: Path | None = None
    #: Not root: the sandbox gets a user namespace mapping root inside to this user.
    rootless: bool = False


INIT_PATH = "/dev/.sbx-init"


def bwrap_argv(
    spec: LaunchSpec, ready_fd: int, info_fd: int, listen_fd: int | None = None
) -> list[str]:
    argv = [
        spec.bwrap,
        "--bind", str(spec.merged), "/",
        "--proc", "/proc",
        "--dev", "/dev",
        "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
        "--hostname", spec.sandbox_id,
        "--new-session",
        "--cap-drop", "ALL",
    ]  # fmt: skip
    for name in syscalls.SANDBOX_CAPS:
        argv += ["--cap-add", name]
    argv.append("--clearenv")
    for key, value in sandbox_env(spec.sandbox_id).items():
        argv += ["--setenv", key, value]
    # "/": the init needs no working directory, and a sandbox may delete /workspace.
    argv += ["--chdir", "/", "--info-fd", str(info_fd)]
    if spec.init_binary is not None and listen_fd is not None:
        # No cgroup namespace here: sbx-init joins its cgroups only after bwrap cloned it
        # (see launch), and a namespace made at clone time would be rooted elsewhere.
        # /dev is bwrap's own tmpfs: the bind leaves no trace in the sandbox's layers.
        argv += ["--as-pid-1", "--ro-bind", str(spec.init_binary), INIT_PATH, "--"]
        return [*argv, INIT_PATH, str(listen_fd), str(ready_fd)]
    argv.insert(argv.index("--hostname"), "--unshare-cgroup")
    # The init tells us it runs inside the finished root, then becomes a long sleep.
    # (Through /proc: dash cannot name file descriptors above 9 in redirections.)
    # (stdout/stderr are the host's bwrap.log: the long-lived sleep must not keep them.)
    script = f"echo > /proc/self/fd/{ready_fd}; exec sleep infinity </dev/null >/dev/null 2>&1"
    argv += ["--", "/bin/sh", "-c", script]
    return argv


def _mount_overlays(spec: LaunchSpec, extra: str) -> None:
    """Make the current mount namespace private and mount the sandbox's overlays in it."""
    syscalls.mount("none", "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE, None)
    os.chdir(spec.root)
    for mount in spec.mounts:
        target = spec.merged / mount.target.lstrip("/")
        syscalls.mount("overlay", str(target), "overlay", 0, mount.options(spec.root) + extra)
    os.chdir("/")


def _prepare(spec: LaunchSpec, error_fd: int) -> None:
    """Runs in the forked child before bwrap: cgroups, private mounts, overlays."""
    try:
        _join_cgroups(spec, "0")
        if spec.rootless:
            _enter_user_namespace()
            _mount_overlays(spec, ",userxattr")  # implies redirect_dir=nofollow
        else:
            syscalls.unshare(syscalls.CLONE_NEWNS)
            _mount_overlays(spec, ",redirect_dir=off")
    except BaseException as exc:
        os.write(error_fd, str(exc).encode()[:2000])
        raise


def _spawn_from_thread(spec: LaunchSpec, **popen) -> subprocess.Popen:
    """Mount the overlays in a thread's own mount namespace and spawn bwrap from it.

    A thread can have a mount namespace of its own (after unsharing its fs_struct), and
    a child spawned from it inherits that namespace. So the Python process is never
    forked (a fork copies its page tables: milliseconds for a large web process), and
    subprocess can use vfork. Root only: a multi-threaded process cannot enter a new
    user namespace.
    """
    outcome: dict = {}

    def work() -> None:
        try:
            syscalls.unshare(syscalls.CLONE_FS | syscalls.CLONE_NEWNS)
            _mount_overlays(spec, ",redirect_dir=off")
            outcome["process"] = subprocess.Popen(**popen)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=work, name=f"launch-{spec.sandbox_id}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise OperationFailed(f"could not set up sandbox {spec.sandbox_id}: {outcome['error']}")
    return outcome["process"]


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
    init_fd = -1
    try:
        passed = [ready_w, info_w]
        if spec.init_binary is not None and spec.exec_socket is not None:
            server = sockets.listen(spec.exec_socket)
            passed.append(server.fileno())
        # sbx-init forks nothing before it is ready, so it can join its cgroups once bwrap
        # has cloned it, while bwrap builds its root: a cgroup v1 migration costs a few
        # milliseconds (an RCU grace period) that then overlap the setup. bubblewrap's own
        # init forks at once, so it must be in them from the start.
        join_late = server is not None
        with open(spec.log, "wb") as log:
            popen = {
                "args": bwrap_argv(spec, ready_w, info_w, server.fileno() if server else None),
                "stdin": subprocess.DEVNULL,
                "stdout": log,
                "stderr": log,
                "pass_fds": passed,
                "start_new_session": True,
            }
            try:
                if join_late and not spec.rootless:
                    process = _spawn_from_thread(spec, **popen)
                else:
                    process = subprocess.Popen(**popen, preexec_fn=lambda: _prepare(spec, error_w))
            except (subprocess.SubprocessError, OSError) as exc:
                os.close(error_w)
                error_w = -1
                detail = os.read(error_r, 4000).decode(errors="replace") or str(exc)
                raise OperationFailed(
                    f"could not set up sandbox {spec.sandbox_id}: {detail}"
                ) from exc
        for fd in (ready_w, info_w, error_w):
            if fd >= 0:
                os.close(fd)
        ready_w = info_w = error_w = -1
        _children[process.pid] = process
        info = _read_info(info_r, process)
        if "child-pid" not in info:
            raise OperationFailed(
                f"sandbox {spec.sandbox_id} did not start: {_tail(spec.log) or 'no output'}"
            )
        pid = int(info["child-pid"])
        init_fd = os.pidfd_open(pid)  # pins it: a failure below kills exactly this init
        if join_late and not spec.rootless:
            _join_cgroups(spec, str(pid))
            # The supervisor too (quick now: migrations right after another are cheap),
            # so the sandbox's cgroups hold and limit all of it, and a service manager
            # cleaning up the web process's cgroup leaves it alone.
            _join_cgroups(spec, str(process.pid))
        if not _wait_ready(ready_r, process):
            raise OperationFailed(
                f"sandbox {spec.sandbox_id} did not start: {_tail(spec.log) or 'no output'}"
            )
        ticks = process_start_ticks(pid)
        if ticks is None:
            raise OperationFailed(f"sandbox {spec.sandbox_id} exited while starting")
        return Runtime(
            pid=pid,
            start_ticks=ticks,
            boot_id=boot_id(),
            supervisor=process.pid,
            exec_socket=server is not None,
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
        for fd in (ready_r, ready_w, info_r, info_w, error_r, error_w):
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
