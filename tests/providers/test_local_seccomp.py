"""The local sandboxes' seccomp filter refuses what container runtimes refuse, and no more.

Every refusal is proven with a probe (seccomp_probe.c) run as root under a bare
bubblewrap twice: without the filter the call works (or fails for a reason of its own,
never EPERM), with ``--seccomp FD`` it fails with EPERM. Ordinary programs keep working.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from providers.local import seccompbin
from tests.local_support import require_local_runtime
from tests.system import require

PROBE_SOURCE = Path(__file__).with_name("seccomp_probe.c")
#: A bare sandbox as root: every capability, so only the filter stands in the way.
BWRAP = ["bwrap", "--bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid"]

#: Attacks that work as root without the filter (each must succeed there).
ATTACKS = [
    "keyctl",  # reads the secret the host put in the session keyring the sandbox inherits
    "add_key",
    "request_key",
    "unshare_user",
    "unshare_mount",
    "mount_tmpfs",
    "clone_newnet",
    "clone_newuser",
    "clone_newpid",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "open_by_handle_at",  # opens /etc/hostname from a handle made outside: no path needed
    "name_to_handle_at",
]
#: Refused calls tried with harmless arguments (bad magic, missing paths, no such module):
#: without the filter the kernel answers for itself, never with EPERM.
HARMLESS = [
    "setns",
    "umount2",
    "pivot_root",
    "open_tree",
    "move_mount",
    "mount_setattr",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "io_uring_setup",
    "io_uring_enter",
    "fanotify_init",
    "swapon",
    "swapoff",
    "reboot",
    "syslog",
    "acct",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "ioperm",
    "sysfs",
    "move_pages",
    "set_mempolicy",
    "personality_no_aslr",
]
#: Allowed under the filter, as in Docker's profile.
ALLOWED = [
    "personality_query",
    "personality_linux32",
    "clone_plain",
    "fork",
    "ptrace_traceme",
    "process_vm_readv",
]


@pytest.fixture(scope="module")
def bpf_filter(tmp_path_factory) -> Path:
    require_local_runtime()
    require("a C compiler", shutil.which("cc") is not None, "apt-get install -y gcc libc6-dev")
    require(
        "libseccomp-dev",
        Path("/usr/include/seccomp.h").exists(),
        "apt-get install -y libseccomp-dev",
    )
    return seccompbin.ensure_filter(tmp_path_factory.mktemp("seccomp-root"))


@pytest.fixture(scope="module")
def probe(bpf_filter, tmp_path_factory) -> Path:
    binary = tmp_path_factory.mktemp("seccomp-probe") / "probe"
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(binary), str(PROBE_SOURCE)], check=True)
    return binary


def sandboxed(command: list[str], bpf: Path | None, *, probe: Path | None = None):
    """Run ``command`` under a bare bwrap as root, with the filter when ``bpf`` is given.

    With ``probe``, it first sets up a session keyring holding a secret and a file handle
    (outside the sandbox, as the host would have them).
    """
    fds: list[int] = []
    argv = list(BWRAP)
    if bpf is not None:
        fds.append(os.open(bpf, os.O_RDONLY))  # a fresh descriptor: bwrap reads it to EOF
        argv += ["--seccomp", str(fds[0])]
    argv = [*argv, "--", *command]
    if probe is not None:
        argv = [str(probe), "setup-exec", *argv]
    try:
        return subprocess.run(argv, pass_fds=fds, capture_output=True, text=True, timeout=60)
    finally:
        for fd in fds:
            os.close(fd)


def run_table(probe: Path, bpf: Path | None) -> dict[str, int]:
    done = sandboxed([str(probe), "table"], bpf, probe=probe)
    assert done.returncode == 0, done.stderr
    return {name: int(code) for name, code in (line.split() for line in done.stdout.splitlines())}


@pytest.fixture(scope="module")
def without(probe) -> dict[str, int]:
    return run_table(probe, None)


@pytest.fixture(scope="module")
def with_filter(probe, bpf_filter) -> dict[str, int]:
    return run_table(probe, bpf_filter)


@pytest.mark.parametrize("call", ATTACKS)
def test_an_attack_that_works_without_the_filter_gets_eperm(call, without, with_filter):
    assert without[call] == 0, f"{call} fails even without the filter: {os.strerror(without[call])}"
    assert with_filter[call] == errno.EPERM


@pytest.mark.parametrize("call", HARMLESS)
def test_a_refused_call_gets_eperm_from_the_filter_only(call, without, with_filter):
    assert without[call] != errno.EPERM, f"the kernel itself refuses {call}"
    assert with_filter[call] == errno.EPERM


@pytest.mark.parametrize("call", ALLOWED)
def test_what_docker_allows_still_works(call, without, with_filter):
    assert without[call] == 0
    assert with_filter[call] == 0


def test_clone3_gets_enosys_so_glibc_falls_back_to_clone(without, with_filter):
    assert without["clone3"] == 0
    assert with_filter["clone3"] == errno.ENOSYS


def test_ordinary_programs_work_under_the_filter(bpf_filter):
    # Threads and posix_spawn go through glibc's clone3 (ENOSYS) then clone; os.fork
    # through clone; the pipeline forks and execs.
    script = (
        "import os, subprocess, threading\n"
        "out = []\n"
        "t = threading.Thread(target=out.append, args=('thread',)); t.start(); t.join()\n"
        "pid = os.fork()\n"
        "if pid == 0: os._exit(7)\n"
        "assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7\n"
        "out.append(subprocess.run(['echo', 'spawned'], capture_output=True, text=True)"
        ".stdout.strip())\n"
        "out.append(os.popen('echo popen').read().strip())\n"
        "print(' '.join(out))\n"
    )
    done = sandboxed(
        [
            "/bin/sh",
            "-c",
            'grep "^Seccomp:" /proc/self/status; python3 -c "$0"; '
            "printf 'b\\na\\n' | sort | tr a-z A-Z | head -1",
            script,
        ],
        bpf_filter,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n") == ["Seccomp:\t2", "thread spawned popen", "A", ""]


def test_the_filter_is_built_once_and_cached(bpf_filter):
    root = bpf_filter.parent.parent
    assert bpf_filter == seccompbin.filter_path(root)
    assert bpf_filter.stat().st_size % seccompbin.INSTRUCTION_BYTES == 0
    before = bpf_filter.stat().st_mtime_ns
    assert seccompbin.ensure_filter(root) == bpf_filter
    assert bpf_filter.stat().st_mtime_ns == before
    assert sorted(p.name for p in bpf_filter.parent.iterdir()) == ["build.lock", bpf_filter.name]


@pytest.fixture
def broken_source(tmp_path, monkeypatch) -> Path:
    source = tmp_path / "seccomp.c"
    source.write_text("#include <no-such-seccomp-header.h>\nint main(void) { return 0; }\n")
    monkeypatch.setattr(seccompbin, "SOURCE", source)
    return tmp_path / "root"


def test_a_failed_build_names_libseccomp_dev(broken_source):
    require("a C compiler", shutil.which("cc") is not None, "apt-get install -y gcc libc6-dev")
    with pytest.raises(seccompbin.SeccompUnavailable, match="libseccomp-dev"):
        seccompbin.ensure_filter(broken_source)
    assert not any(broken_source.glob("bin/*.bpf"))


def test_no_compiler_is_said_plainly(broken_source, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda _name: None)
    with pytest.raises(seccompbin.SeccompUnavailable, match="no C compiler"):
        seccompbin.ensure_filter(broken_source)
