"""Terminal sessions of local sandboxes: the sandbox's boundary holds, and attacks from a
terminal reach nothing outside it.

The shared behaviour (typing, resizing, exit status, streams, closing) is in
``tests/conformance/test_terminal.py``; these are the local provider's own promises: the
pseudo-terminal is made inside the sandbox's own devpts by its init, its process is
confined exactly like exec's, and its master never reaches another sandbox or a child
of the control plane.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import struct
import subprocess
import threading

import pytest

from providers.errors import Conflict
from providers.local import execute, sockets, terminal
from tests.conformance.test_terminal import read_to_end, read_until
from tests.providers.conftest import sh

#: Tries TIOCSTI ("type" into a terminal's input, the classic terminal escape) on every
#: terminal it can reach, first making fd 1 its controlling terminal when it has none
#: (which TIOCSTI needs without CAP_SYS_ADMIN). Prints the devices it injected into.
INJECTOR = """
import fcntl, glob, os, termios
try:
    fcntl.ioctl(1, termios.TIOCSCTTY, 0)
except OSError:
    pass
def inject(fd):
    try:
        for byte in b"INJECTED\\n":
            fcntl.ioctl(fd, termios.TIOCSTI, bytes([byte]))
        return True
    except OSError:
        return False
# /dev/tty stands for the controlling terminal, one of fds 0-2 when there is one; its own
# node lives in /dev's tmpfs, so only the pts entries tell which devpts a terminal is on.
try:
    inject(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
except OSError:
    pass
hit = set()
for fd in [0, 1, 2]:
    if inject(fd):
        hit.add(os.fstat(fd).st_dev)
for path in glob.glob("/dev/pts/[0-9]*"):
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    except OSError:
        continue
    if inject(fd):
        hit.add(os.fstat(fd).st_dev)
print("hit", sorted(hit), "own", os.stat("/dev/pts/ptmx").st_dev)
"""

STATUS = (
    "grep -E '^(Uid|Gid|CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; "
    "cat /proc/self/cgroup; for ns in pid net mnt user uts ipc; do readlink /proc/self/ns/$ns; "
    "done; echo sbx-done"
)


def pending_input(fd: int) -> bytes:
    """Everything waiting to be read from ``fd`` right now (b"" when nothing); a terminal
    in canonical mode hands out one line per read."""
    os.set_blocking(fd, False)
    waiting = b""
    while True:
        try:
            waiting += os.read(fd, 4096)
        except BlockingIOError:
            return waiting


def exec_on_host_tty(box, argv: list[str], tty: int) -> int:
    """Exec through the sandbox's init with a *host* terminal as stdout and stderr: the
    design a sandbox terminal must never have (the control of the injection test)."""
    conn = sockets.connect(box._provider.store.sandbox_dir(box.id) / "exec.sock")
    try:
        fields = ["/workspace", str(len(argv)), *argv, "PATH=/usr/bin:/bin"]
        payload = b"".join(f.encode() + b"\0" for f in fields)
        socket.send_fds(conn, [b"SBX1" + struct.pack("<I", len(payload))], [tty, tty])
        conn.sendall(payload)
        status = b""
        while not status.endswith(b"\n"):
            chunk = conn.recv(64)
            assert chunk, status
            status += chunk
    finally:
        conn.close()
    assert status.startswith(b"E"), status
    return os.waitstatus_to_exitcode(int(status[1:]))


@pytest.fixture
def host_tty():
    """A terminal of the host, as a person's shell would have: (master, slave)."""
    master, slave = os.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


def test_the_terminal_is_made_in_the_sandboxs_own_devpts(local, sandboxes):
    box = sandboxes.running(local)
    host_devpts = os.stat("/dev/pts/ptmx").st_dev
    with box.open_terminal(["python3", "-c", INJECTOR.replace("INJECTED", "own-input")]) as s:
        output = read_to_end(s).decode()
        master = os.fstat(s.fileno())
    hit, own = re.search(r"hit \[([\d, ]*)\] own (\d+)", output).groups()
    # The session's terminal, and everything it could inject into, is the sandbox's.
    assert [int(dev) for dev in hit.split(",")] == [int(own)]
    assert int(own) != host_devpts
    assert master.st_dev == int(own)
    # The injection stayed in the sandbox's own terminal: it came back as its input.
    assert "own-input" in output


def test_terminal_injection_never_reaches_a_host_terminal(local, sandboxes, host_tty):
    _master, slave = host_tty
    box = sandboxes.running(local)
    # The control: a host terminal handed into the sandbox (as a naive design would, the
    # terminal made on the host) lets the sandbox type into the host's shell.
    assert exec_on_host_tty(box, ["python3", "-c", INJECTOR], slave) == 0
    assert b"INJECTED" in pending_input(slave)
    # The sandbox's terminal session: the same attack, from a terminal made inside it.
    with box.open_terminal(["python3", "-c", INJECTOR]) as session:
        output = read_to_end(session)
        assert session.wait(timeout=30) == 0
    assert b"hit [" in output
    assert pending_input(slave) == b""


def test_another_sandbox_cannot_reach_the_terminal(local, sandboxes):
    mine, other = sandboxes.running(local), sandboxes.running(local)
    with mine.open_terminal("/bin/sh") as session:
        session.write(b"tty\n")
        name = re.search(rb"/dev/pts/\d+", read_until(session, rb"/dev/pts/\d+")).group()
        assert name.decode() in sh(mine, "ls /dev/pts/*")
        # The other sandbox has a devpts of its own with no terminal in it.
        assert sh(other, "ls /dev/pts").split() == ["ptmx"]
        opened = other.exec(["sh", "-c", f"exec 3<>{name.decode()}"], timeout=30)
        assert opened.exit_code != 0


def test_the_master_is_never_inherited_by_a_process_of_the_control_plane(local, sandboxes):
    box = sandboxes.running(local)
    with box.open_terminal("/bin/sh") as session:
        fd = session.fileno()
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        # Even a child started without closing descriptors (as a launcher could) gets none.
        listed = subprocess.run(
            ["ls", "/proc/self/fd"], capture_output=True, text=True, close_fds=False, check=True
        ).stdout.split()
        assert str(fd) not in listed


def test_the_session_is_confined_exactly_like_exec(local, sandboxes):
    box = sandboxes.running(local)
    by_exec = sh(box, STATUS)
    with box.open_terminal(["sh", "-c", STATUS]) as session:
        by_terminal = read_to_end(session).decode().replace("\r\n", "\n")
    assert by_terminal == by_exec
    assert "Seccomp:\t2" in by_terminal
    assert "NoNewPrivs:\t1" in by_terminal


def test_the_terminal_sees_the_window_size_from_the_start(local, sandboxes):
    box = sandboxes.running(local)
    with box.open_terminal(["stty", "size"], cols=123, rows=45) as session:
        assert read_to_end(session).strip() == b"45 123"
    with box.open_terminal("/bin/sh") as session:
        session.write(b"exit\n")
        session.wait(timeout=30)
        session.resize(90, 20)  # after the end: nothing to resize, nothing to fail


def test_a_stopped_sandbox_ends_its_sessions(local, sandboxes):
    box = sandboxes.running(local)
    session = box.open_terminal("/bin/sh")
    try:
        box.stop()
        read_to_end(session)  # the output ends: every holder of the terminal is gone
        assert session.wait(timeout=30) != 0
    finally:
        session.close()


def test_an_init_from_before_terminals_is_a_conflict_asking_for_a_restart(tmp_path):
    # What an older sbx-init answers to a request it does not know.
    path = tmp_path / "exec.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"Xbad request\n")

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        target = execute.Target(cwd="/workspace", env={}, socket=path)
        with pytest.raises(Conflict, match="stop and start it"):
            terminal.open_session(target, ["/bin/sh"], 80, 24, {})
    finally:
        thread.join()
        server.close()
