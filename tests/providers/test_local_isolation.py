"""A local sandbox cannot see or change the host's secrets, other sandboxes, or the host.

Each test plants something on the host (or in another sandbox) and proves the sandbox
cannot reach it; each fails if that piece of hiding breaks.
"""

from __future__ import annotations

import os
import secrets
import shlex
import socket
from pathlib import Path

import pytest
from django.conf import settings

from providers.local import disk
from tests.providers.conftest import sh, wait_for

#: Look everywhere a sandbox can write or read host-provided files, except /usr (the
#: host's /usr is shared read-only by design) and the kernel's virtual file systems.
SEARCH = "grep -rsl --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev --exclude-dir=usr"


def visible(instance, path: Path | str) -> bool:
    return instance.exec(["test", "-e", str(path)], timeout=30).exit_code == 0


def found(instance, needle: str) -> str:
    """Files inside the sandbox containing ``needle`` (empty when none)."""
    return instance.exec(f"{SEARCH} {shlex.quote(needle)} /", timeout=60).stdout


def connects(instance, port: int) -> bool:
    """Whether a TCP connection to 127.0.0.1:``port`` inside the sandbox succeeds."""
    probe = (
        "import socket\n"
        "s = socket.socket(); s.settimeout(3)\n"
        f"try:\n s.connect(('127.0.0.1', {port})); print('connected')\n"
        "except OSError as e: print('refused', e)\n"
    )
    result = instance.exec(["python3", "-c", probe], timeout=30)
    assert result.exit_code == 0, result
    return result.stdout.startswith("connected")


@pytest.fixture
def marker() -> str:
    return f"sbx-secret-{secrets.token_hex(8)}"


def test_the_control_plane_data_dir_and_database_are_invisible(local, sandboxes, marker):
    data_dir = Path(settings.DATA_DIR)
    planted = data_dir / f"{marker}.txt"
    planted.write_text(marker)
    try:
        box = sandboxes.running(local)
        assert not visible(box, data_dir)
        assert not visible(box, planted)
        database = settings.DATABASES["default"]
        if database["ENGINE"].endswith("sqlite3"):
            assert Path(database["NAME"]).parent.exists()
            assert not visible(box, database["NAME"])
        assert found(box, marker) == ""
    finally:
        planted.unlink()


def test_the_database_server_on_host_loopback_is_unreachable(local, sandboxes):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        box = sandboxes.running(local)
        assert not connects(box, port)
        interfaces = sh(box, "cat /proc/net/dev").splitlines()[2:]
        assert [line.split(":")[0].strip() for line in interfaces] == ["lo"]
    finally:
        server.close()


def test_the_control_plane_settings_and_code_are_invisible(local, sandboxes):
    box = sandboxes.running(local)
    settings_file = Path(settings.BASE_DIR) / "config" / "settings.py"
    assert settings_file.exists()
    assert not visible(box, settings_file)
    assert not visible(box, settings.BASE_DIR)
    assert found(box, settings.SECRET_KEY) == ""


def test_the_host_environment_does_not_leak(local, sandboxes, marker, monkeypatch):
    monkeypatch.setenv("SBX_HOST_SECRET", marker)
    assert os.environ["SBX_HOST_SECRET"] == marker
    box = sandboxes.running(local)
    seen = sh(box, "env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'")
    assert marker not in seen
    assert settings.SECRET_KEY not in seen
    assert "HOSTNAME=" + box.id in seen


def test_root_and_home_of_the_host_are_invisible(local, sandboxes, marker):
    in_root = Path("/root") / f".{marker}"
    home = Path("/home") / marker
    in_root.write_text(marker)
    home.mkdir()
    (home / "secret").write_text(marker)
    try:
        box = sandboxes.running(local)
        assert sh(box, "ls -A /root") == ""
        assert sh(box, "ls -A /home") == ""
        assert not visible(box, in_root)
        assert not visible(box, home / "secret")
        assert found(box, marker) == ""
    finally:
        in_root.unlink()
        (home / "secret").unlink()
        home.rmdir()


def test_host_usr_local_and_etc_secrets_are_invisible(local, sandboxes, marker):
    planted = Path("/usr/local/share") / f"{marker}.txt"
    planted.write_text(marker)
    try:
        box = sandboxes.running(local)
        assert not visible(box, planted)
        assert sh(box, "ls -A /usr/local/share") == ""
        # /etc is the base's own: no password hashes, no host configuration beyond a list.
        assert "$" not in sh(box, "cut -d: -f2 /etc/shadow")
        host_files = {p.name for p in Path("/etc").iterdir()}
        inside = set(sh(box, "ls -A /etc").split())
        assert inside < host_files | {"fstab", "hosts", "mtab", "profile", "resolv.conf"}
        assert {"ssh", "environment", "default"}.isdisjoint(inside)
    finally:
        planted.unlink()


def test_another_sandboxs_files_processes_and_ports_are_invisible(local, sandboxes, marker):
    first = sandboxes.running(local)
    second = sandboxes.running(local)
    sh(
        first,
        f"echo {marker} > /workspace/mine; echo {marker} > /root/mine; echo {marker} > /tmp/m",
    )
    sh(first, f"nohup sleep 300 {marker}-process >/dev/null 2>&1 &")
    sh(first, "nohup python3 -m http.server 8765 --bind 127.0.0.1 >/dev/null 2>&1 &")
    assert found(first, marker)  # the search itself works
    assert found(second, marker) == ""
    assert marker not in sh(second, "cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' '")
    assert wait_for(lambda: connects(first, 8765))
    assert not connects(second, 8765)
    # Each sandbox is its own pid namespace, with its init as pid 1.
    assert sh(second, "cat /proc/1/cmdline | tr '\\0' ' '").startswith("/dev/.sbx-init")


def test_writes_land_in_the_sandbox_layer_not_on_the_host(local, sandboxes, marker):
    box = sandboxes.running(local)
    target = Path("/usr/share") / f"{marker}.txt"
    sh(box, f"echo {marker} > {target}; echo 'intruder:x:0:0::/:/bin/sh' >> /etc/passwd")
    assert sh(box, f"cat {target}") == f"{marker}\n"
    assert not target.exists()
    assert "intruder" not in Path("/etc/passwd").read_text()
    upper = disk.layer_dir(local.store.sandbox_dir(box.id)) / "upper"
    assert (upper / "usr" / "share" / f"{marker}.txt").read_text() == f"{marker}\n"


def test_root_inside_cannot_mount_make_devices_or_keep_host_capabilities(local, sandboxes):
    box = sandboxes.running(local)
    assert box.exec("mount -t tmpfs none /mnt", timeout=30).exit_code != 0
    assert box.exec("mknod /tmp/disk b 8 0", timeout=30).exit_code != 0
    assert box.exec("echo 1 > /proc/sys/kernel/sysrq", timeout=30).exit_code != 0
    status = sh(box, "grep -E '^Cap(Bnd|Eff):' /proc/self/status")
    for line in status.splitlines():
        caps = int(line.split()[1], 16)
        for cap in (2, 16, 17, 19, 21, 27):  # DAC_READ_SEARCH, MODULE, RAWIO, PTRACE, ADMIN, MKNOD
            assert not caps & (1 << cap), (line, cap)


def test_hostname_is_the_sandbox_id(local, sandboxes):
    box = sandboxes.running(local)
    assert sh(box, "hostname") == f"{box.id}\n"
    assert sh(box, "pwd") == "/workspace\n"


def test_the_init_holds_nothing_a_sandbox_can_take(local, sandboxes):
    box = sandboxes.running(local)
    # sbx-init is not dumpable: its descriptors (exec socket, host log) stay out of reach.
    assert box.exec("ls -l /proc/1/fd/", timeout=30).exit_code != 0
    assert box.exec("cat /proc/1/environ", timeout=30).exit_code != 0
