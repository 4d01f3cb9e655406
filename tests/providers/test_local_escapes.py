"""Escapes from a local sandbox, tried as an attacker would: from inside, through exec.

Every attempt runs twice. Once inside a sandbox, where it must fail. And once as the
control: the same probe in a bare ``bwrap --bind / /`` as host root (or, where bubblewrap
itself would already stop it, straight on the host), where it must get past the point
the sandbox stops it. A probe that also fails in the control proves nothing, so the
control is asserted first: each test fails if the defence it covers is removed.

The probes only read, or write a value back unchanged, or act inside a namespace the
probe made: nothing here changes the host.
"""

from __future__ import annotations

import base64
import ctypes
import io
import os
import platform
import shlex
import shutil
import socket
import subprocess
import tempfile
import textwrap
import zipfile

import pytest

from providers.errors import QuotaExceeded
from providers.local import disk
from tests.local_support import local_provider, require_local_runtime
from tests.providers.conftest import Sandboxes, sh, wait_for

#: System call numbers the probes use, per architecture (Python's os lacks these calls).
SYSCALLS = {
    "x86_64": {
        "keyctl": 250,
        "bpf": 321,
        "perf_event_open": 298,
        "userfaultfd": 323,
        "name_to_handle_at": 303,
        "open_by_handle_at": 304,
        "finit_module": 313,
        "pivot_root": 155,
        "setns": 308,
        "unshare": 272,
        "mount": 165,
    },
    "aarch64": {
        "keyctl": 219,
        "bpf": 280,
        "perf_event_open": 241,
        "userfaultfd": 282,
        "name_to_handle_at": 264,
        "open_by_handle_at": 265,
        "finit_module": 273,
        "pivot_root": 41,
        "setns": 268,
        "unshare": 97,
        "mount": 40,
    },
}

#: Helpers every probe starts with: ``call`` prints "ok" or the errno's name.
PRELUDE = """
import ctypes, errno, os, sys
NR = {numbers!r}
libc = ctypes.CDLL(None, use_errno=True)
def call(name, *args):
    r = libc.syscall(ctypes.c_long(NR[name]), *args)
    return "ok" if r >= 0 else errno.errorcode.get(ctypes.get_errno(), "E?")
"""

BARE = [
    "bwrap",
    "--bind", "/", "/",
    "--dev-bind", "/dev", "/dev",
    "--proc", "/proc",
    "--tmpfs", "/tmp",
    "--unshare-pid",
    "--die-with-parent",
]  # fmt: skip


def probe(code: str) -> list[str]:
    numbers = SYSCALLS.get(platform.machine())
    if numbers is None:
        pytest.skip(f"no system call numbers for {platform.machine()} in this test")
    source = PRELUDE.format(numbers=numbers) + textwrap.dedent(code)
    return ["python3", "-c", source]


def inside(box, code: str) -> str:
    result = box.exec(probe(code), timeout=60)
    assert result.exit_code == 0, result
    return result.stdout.strip()


def in_bare_bwrap(code: str, *extra: str) -> str:
    """The control: the probe as host root in a bubblewrap with none of the defences."""
    done = subprocess.run(
        [*BARE, *extra, "--", *probe(code)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# --- system calls that reach the kernel's most exposed parts


SYSCALL_PROBES = {
    "bpf": 'print(call("bpf", 0, ctypes.create_string_buffer(128), 128))',
    "perf_event_open": (
        'print(call("perf_event_open", ctypes.create_string_buffer(128), 0, -1, -1, 0))'
    ),
    "userfaultfd": 'print(call("userfaultfd", 0))',
    "kernel module": ('print(call("finit_module", os.open("/dev/null", os.O_RDONLY), b"", 0))'),
    "open_by_handle_at": """
        handle = ctypes.create_string_buffer(136)
        handle[0:4] = (128).to_bytes(4, "little")
        mount_id = ctypes.c_int()
        got = call("name_to_handle_at", -100, b"/etc", handle, ctypes.byref(mount_id), 0)
        print(call("open_by_handle_at", os.open("/", os.O_RDONLY), handle, 0))
    """,
    "unshare a user namespace": 'print(call("unshare", 0x10000000))',
    "mount": 'print(call("mount", b"none", b"/mnt", b"tmpfs", 0, None))',
    "pivot_root": 'os.chdir("/"); print(call("pivot_root", b".", b"."))',
    "setns": 'print(call("setns", os.open("/proc/self/ns/net", os.O_RDONLY), 0))',
    "keyctl": 'print(call("keyctl", 0, -3, 0))',  # KEYCTL_GET_KEYRING_ID of the session's
}


@pytest.mark.parametrize("name", SYSCALL_PROBES)
def test_system_calls_a_sandbox_never_needs_are_refused(local, sandboxes, name):
    code = SYSCALL_PROBES[name]
    assert in_bare_bwrap(code) != "EPERM"
    box = sandboxes.running(local)
    assert inside(box, code) == "EPERM"


def test_the_seccomp_filter_and_no_new_privs_hold_for_every_process(local, sandboxes):
    box = sandboxes.running(local)
    status = sh(box, "sh -c 'grep -E \"^(Seccomp|NoNewPrivs):\" /proc/self/status'")
    assert "Seccomp:\t2" in status
    assert "NoNewPrivs:\t1" in status


# --- /proc/sys and the rest of /proc


@pytest.mark.parametrize(
    "entry", ["kernel/core_pattern", "kernel/printk", "fs/inotify/max_user_instances"]
)
def test_proc_sys_cannot_be_written(local, sandboxes, entry):
    # kernel.core_pattern is the classic escape: '|/path/in/the/upper/layer' runs that
    # program as host root on the next crash. The probe writes the value back unchanged.
    code = f"""
        path = "/proc/sys/{entry}"
        value = open(path).read()
        try:
            with open(path, "w") as handle:
                handle.write(value)
            print("written")
        except OSError as exc:
            print(errno.errorcode[exc.errno])
    """
    assert in_bare_bwrap(code) == "written"
    box = sandboxes.running(local)
    assert inside(box, code) == "EROFS"


def test_kernel_information_in_proc_is_hidden(local, sandboxes):
    box = sandboxes.running(local)
    # Covered (as OCI runtimes do), or readable by host root alone, which root inside is
    # not: the control reads each of them.
    names = [
        n
        for n in ("keys", "timer_list", "sched_debug", "slabinfo", "vmallocinfo", "kpagecount")
        if os.path.exists(f"/proc/{n}")
    ]
    assert names
    for name in names:
        code = f"""
            try:
                print(len(open("/proc/{name}", "rb").read(64)))
            except OSError as exc:
                print(errno.errorcode[exc.errno])
        """
        assert in_bare_bwrap(code) not in ("0", "EACCES", "EPERM"), name
        assert inside(box, code) in ("0", "EACCES", "EPERM"), name


# --- the host's keyring and per-user limits belong to host root, not to the sandbox


@pytest.fixture
def host_key():
    """A key in this process's session keyring (sandboxes start from this process)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    numbers = SYSCALLS.get(platform.machine())
    if numbers is None:
        pytest.skip(f"no system call numbers for {platform.machine()}")
    # KEYCTL_JOIN_SESSION_KEYRING: a fresh session keyring, so no other test sees the key.
    assert libc.syscall(ctypes.c_long(numbers["keyctl"]), 1, None) >= 0
    payload = b"sbx-host-secret"
    add_key = {"x86_64": 248, "aarch64": 217}[platform.machine()]
    key = libc.syscall(ctypes.c_long(add_key), b"user", b"sbx-test", payload, len(payload), -3)
    assert key > 0, os.strerror(ctypes.get_errno())
    return key, payload.decode()


def test_a_key_in_the_hosts_keyring_cannot_be_read(local, sandboxes, host_key):
    key, payload = host_key
    code = f"""
        buf = ctypes.create_string_buffer(256)
        r = libc.syscall(ctypes.c_long(NR["keyctl"]), 11, {key}, buf, 256)
        print(buf.value.decode() if r >= 0 else errno.errorcode[ctypes.get_errno()])
    """
    assert in_bare_bwrap(code) == payload
    box = sandboxes.running(local)
    assert inside(box, code) == "EPERM"
    assert payload not in sh(box, "cat /proc/keys; true")


INOTIFY_HOG = """
    held = []
    while True:
        fd = libc.inotify_init1(0)
        if fd < 0:
            break
        held.append(fd)
    print(len(held), flush=True)
    import time; time.sleep(20)
"""


def _host_can_watch() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(0)
    if fd >= 0:
        os.close(fd)
    return fd >= 0


def test_host_roots_inotify_instances_cannot_be_exhausted(local, sandboxes):
    # The control: host root's own instances run out while the hog holds them.
    hog = subprocess.Popen(
        [*BARE, "--", *probe(INOTIFY_HOG)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert int(hog.stdout.readline()) > 0
        assert not _host_can_watch()
    finally:
        hog.kill()
        hog.wait()
    assert wait_for(_host_can_watch)
    box = sandboxes.running(local)
    sh(box, f"nohup {shlex.join(probe(INOTIFY_HOG))} > /tmp/hog.out 2>&1 &")
    assert int(wait_for(lambda: sh(box, "cat /tmp/hog.out").strip())) > 0
    assert _host_can_watch()


# --- devices, host processes, setuid binaries


def test_a_block_device_of_the_host_disk_cannot_be_made(local, sandboxes):
    device = os.stat("/").st_dev
    code = f"""
        try:
            os.mknod("/tmp/disk", 0o600 | 0o060000, {device})
            print("made")
        except OSError as exc:
            print(errno.errorcode[exc.errno])
    """
    # The control's /tmp must allow device nodes (bubblewrap's tmpfs does not). Reading
    # the node is not tried: some hosts refuse even root that (this project's CI VMs do).
    where = tempfile.mkdtemp(dir="/var/tmp")
    try:
        assert in_bare_bwrap(code, "--dev-bind", where, "/tmp") == "made"
    finally:
        shutil.rmtree(where)
    box = sandboxes.running(local)
    assert inside(box, code) == "EPERM"


def test_host_processes_cannot_be_signalled_or_traced(local, sandboxes):
    victim = subprocess.Popen(["sleep", "60"])
    code = f"""
        try:
            os.kill({victim.pid}, 0)
            print("reached")
        except OSError as exc:
            print(errno.errorcode[exc.errno])
        print(os.path.exists("/proc/{victim.pid}/mem"))
    """
    try:
        # Without a pid namespace of its own (bubblewrap's --unshare-pid), host root
        # reaches any host process.
        control = subprocess.run(
            [*BARE[: BARE.index("--unshare-pid")], "--", *probe(code)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert control.stdout.split() == ["reached", "True"]
        box = sandboxes.running(local)
        assert inside(box, code).split() == ["ESRCH", "False"]
    finally:
        victim.kill()
        victim.wait()


def test_a_setuid_binary_gives_no_privileges(local, sandboxes):
    steps = (
        "cp /usr/bin/id {dir}/id && chmod 4755 {dir}/id && "
        "setpriv --reuid=1000 --regid=1000 --clear-groups {dir}/id -u"
    )
    # The control runs on the host itself: bubblewrap sets no_new_privs in any case.
    # (In a directory uid 1000 can reach, so not under pytest's private tmp_path.)
    where = tempfile.mkdtemp(dir="/var/tmp")
    try:
        os.chmod(where, 0o755)  # noqa: S103 - uid 1000 runs the copied binary from here
        control = subprocess.run(
            ["sh", "-c", steps.format(dir=where)], capture_output=True, text=True, timeout=30
        )
    finally:
        shutil.rmtree(where)
    assert control.stdout.strip() == "0"
    box = sandboxes.running(local)
    assert sh(box, steps.format(dir="/tmp")).strip() == "1000"


# --- other sandboxes and the host's network


def test_another_sandboxs_abstract_sockets_are_unreachable(local, sandboxes):
    name = f"sbx-escape-{os.getpid()}"
    server = f"""
        import socket, time
        s = socket.socket(socket.AF_UNIX)
        s.bind("\\0{name}")
        s.listen()
        print("listening", flush=True)
        time.sleep(30)
    """
    client = f"""
        import socket
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect("\\0{name}")
            print("connected")
        except OSError as exc:
            print(errno.errorcode[exc.errno])
    """
    first = sandboxes.running(local)
    second = sandboxes.running(local)
    sh(first, f"nohup {shlex.join(probe(server))} > /tmp/server.out 2>&1 &")
    wait_for(lambda: "listening" in sh(first, "cat /tmp/server.out"))
    assert inside(first, client) == "connected"
    assert inside(second, client) == "ECONNREFUSED"


def test_services_on_host_loopback_are_unreachable(local, sandboxes):
    # PostgreSQL listens there with trust authentication on a typical host; so does this.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    code = f"""
        import socket
        s = socket.socket()
        s.settimeout(3)
        try:
            s.connect(("127.0.0.1", {port}))
            print("connected")
        except OSError as exc:
            print(errno.errorcode.get(exc.errno, "timeout"))
    """
    try:
        assert in_bare_bwrap(code) == "connected"
        box = sandboxes.running(local)
        assert inside(box, code) == "ECONNREFUSED"
    finally:
        server.close()


# --- root inside is nobody outside


def host_uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("Uid:"):
                return int(line.split()[2])  # effective
    raise AssertionError("no Uid line")


def test_root_inside_is_an_unprivileged_host_id_of_its_own(local, sandboxes):
    first = sandboxes.running(local)
    second = sandboxes.running(local)
    assert sh(first, "id -u") == "0\n"
    ids = set()
    for box in (first, second):
        state = local.store.load(box.id)
        uids = {host_uid(state.runtime.pid), host_uid(state.runtime.supervisor)}
        sh(box, "nohup sleep 60 >/dev/null 2>&1 &")
        uids |= {host_uid(pid) for pid in local.cgroups.pids(box.id)}
        assert len(uids) == 1
        (uid,) = uids
        assert uid >= 100000
        ids.add(uid)
    assert len(ids) == 2  # never shared between sandboxes


def test_files_root_writes_are_owned_by_root_inside_and_survive_a_new_mapping(local, sandboxes):
    box = sandboxes.running(local)
    sh(box, "echo mine > /root/file && chown 1000:1000 /workspace && touch /workspace/x")
    upper = disk.layer_dir(local.store.sandbox_dir(box.id)) / "upper" / "root"
    # On disk, layers keep the ids the sandbox sees, whatever host range it runs in.
    assert (upper / "root" / "file").stat().st_uid == 0
    assert (upper / "workspace").stat().st_uid == 1000
    box.stop()
    state = local.store.load(box.id)
    state.id_slot = state.id_slot + 7
    local.store.save(state)
    box.start()
    assert sh(box, "stat -c %u:%g /root/file /workspace") == "0:0\n1000:1000\n"


def test_bare_bubblewrap_is_what_the_controls_use():
    # The controls above are only meaningful if the bare run really is host root.
    require_local_runtime()
    out = in_bare_bwrap('print(os.getuid(), open("/proc/self/uid_map").read().split())')
    assert out == "0 ['0', '0', '4294967295']"


# --- what root inside a sandbox can still do


def _tiny_wheel() -> bytes:
    """A pure-Python wheel made here (no index, no network), for pip inside a sandbox."""
    files = {
        "sbxdemo/__init__.py": "ANSWER = 42\n",
        "sbxdemo-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: sbxdemo\nVersion: 1.0\n",
        "sbxdemo-1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "".join(f"{name},,\n" for name in [*files, "sbxdemo-1.0.dist-info/RECORD"])
    files["sbxdemo-1.0.dist-info/RECORD"] = record
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return buffer.getvalue()


def test_root_inside_still_administers_its_own_sandbox(local, sandboxes):
    box = sandboxes.running(local)
    wheel = base64.b64encode(_tiny_wheel()).decode()
    sh(box, f"echo {wheel} | base64 -d > /tmp/sbxdemo-1.0-py3-none-any.whl")
    sh(
        box,
        "python3 -m pip install --no-index --break-system-packages --quiet "
        "/tmp/sbxdemo-1.0-py3-none-any.whl",
    )
    assert sh(box, "python3 -c 'import sbxdemo; print(sbxdemo.ANSWER)'") == "42\n"
    # Accounts, ownership and privileged ports are root's inside its own namespaces.
    sh(box, "echo 'dev:x:1000:1000::/home/dev:/bin/sh' >> /etc/passwd && mkdir /home/dev")
    sh(box, "chown dev /home/dev && setpriv --reuid=dev --regid=1000 --clear-groups touch ~dev/x")
    assert sh(box, "stat -c %U /home/dev/x") == "dev\n"
    sh(box, "nohup python3 -m http.server 80 --bind 127.0.0.1 >/dev/null 2>&1 &")
    assert wait_for(lambda: "200" in sh(box, _FETCH_80))
    snapshot = box.snapshot()
    child = sandboxes.running(local, snapshot.ref)
    assert sh(child, "python3 -c 'import sbxdemo; print(sbxdemo.ANSWER)'") == "42\n"
    assert sh(child, "stat -c %U:%u /home/dev/x") == "dev:1000\n"


_FETCH_80 = (
    "python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1/').status)\""
    " 2>/dev/null; true"
)


def test_host_id_ranges_are_never_shared_and_come_back_on_delete(tmp_path):
    # Room for two sandboxes only: a third is refused rather than given a used range.
    with local_provider(tmp_path, LOCAL_SANDBOX_ID_RANGE="300000:131072") as provider:
        made = Sandboxes()
        try:
            first, second = made.create(provider), made.create(provider)
            slots = {provider.store.load(b.id).id_slot for b in (first, second)}
            assert slots == {0, 1}
            with pytest.raises(QuotaExceeded, match="LOCAL_SANDBOX_ID_RANGE"):
                made.create(provider)
            first.start()
            assert sh(first, "cat /proc/self/uid_map").split() in (
                ["0", "300000", "65536"],
                ["0", "365536", "65536"],
            )
            first.delete()
            third = made.create(provider)  # the freed range is used again
            assert provider.store.load(third.id).id_slot in slots
        finally:
            made.cleanup()
