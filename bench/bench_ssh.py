"""The SSH gateway against OpenSSH's own sshd: ``ssh ... true``, a whole connection each.

Both sides on this host's loopback, with the same client (``/usr/bin/ssh``, a new
connection per run: key exchange (curve25519-sha256 on both), public-key authentication,
one session channel running ``true``, its exit status, the close) and the same ed25519
client key:

* the gateway: ``manage.py ssh_gateway`` (its own process, as in production) in front of
  a running ``local`` sandbox; ``true`` runs inside the sandbox through its init;
* the baseline: a throwaway ``sshd`` started here on a loopback port with a config, host
  key and authorized_keys of its own, running ``true`` on the host.

Target: the gateway's median at most 1.5 times sshd's.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import ROOT, Result, median_result, run_child

REPEAT = int(os.environ.get("BENCH_SSH_REPEAT", "40"))

NOTES = """
Each run is a complete `ssh` invocation: process start, TCP connect, key exchange
(curve25519-sha256 forced on both sides: OpenSSH's default sntrup761x25519 hybrid, which
asyncssh does not offer, costs sshd about 100 ms more here), an ed25519 host key,
public-key authentication, a session running `true`, the exit status. The gateway also
looks the key and the sandbox up in the database, writes the session's two audit events
and starts `true` inside the sandbox through its init; sshd (OpenSSH 9.2 here, with a
config of the benchmark's own: no PAM, no DNS) re-executes itself for each connection,
forks a privilege-separated child and runs `true` through root's bash on the host (where
its extra time presumably goes; not profiled). The machine was shared with other jobs.
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited: {process.stderr.read()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


def _client(port: int, key: Path, login: str) -> list[str]:
    return [
        "ssh",
        *("-F", "/dev/null", "-i", str(key), "-p", str(port)),
        *("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"),
        *("-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"),
        # The same key exchange on both sides: OpenSSH would otherwise pick its
        # post-quantum hybrid (sntrup761x25519, several times the CPU) with sshd only.
        *("-o", "KexAlgorithms=curve25519-sha256"),
        f"{login}@127.0.0.1",
        "true",
    ]


def _time(argv: list[str], repeat: int) -> list[float]:
    env = {**os.environ, "SSH_AUTH_SOCK": ""}
    for _ in range(3):  # warm up
        subprocess.run(argv, check=True, capture_output=True, env=env, timeout=60)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env, timeout=60)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def _sshd(work: Path, client_public: str) -> tuple[subprocess.Popen, int]:
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    host_key = work / "sshd_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    authorized = work / "authorized_keys"
    authorized.write_text(client_public + "\n")
    authorized.chmod(0o600)
    port = _free_port()
    config = work / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {authorized}\nPidFile {work / 'sshd.pid'}\n"
        "UsePAM no\nUseDNS no\nStrictModes no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "PrintMotd no\nPrintLastLog no\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    process = subprocess.Popen(
        [sshd, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, text=True
    )
    _wait_port(port, process, "sshd")
    return process, port


def run() -> list[Result]:
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"no {tool}: apt-get install -y openssh-client openssh-server")
    work = Path(tempfile.mkdtemp(prefix="bench-ssh-"))
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    public = (work / "id_ed25519.pub").read_text().strip()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{work}/bench.sqlite3",
        "SANDBOXES_DATA_DIR": str(work / "data"),
        "DJANGO_SETTINGS_MODULE": "bench.api_settings",
        "PYTHONPATH": str(ROOT),
        "SANDBOX_PROVIDERS": "local",
        "LOCAL_SANDBOX_CGROUP_PARENT": f"sbx-bench-ssh-{os.getpid()}",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("REDIS_URL", None)
    gateway = sshd = None
    try:
        sandbox = run_child("ssh_child", "setup", public, env=env)["sandbox"]
        port = _free_port()
        gateway = subprocess.Popen(
            [sys.executable, "manage.py", "ssh_gateway", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_port(port, gateway, "the SSH gateway")
        through_gateway = _time(_client(port, key, sandbox), REPEAT)
        sshd, sshd_port = _sshd(work, public)
        through_sshd = _time(_client(sshd_port, key, "root"), REPEAT)
    finally:
        for process in (gateway, sshd):
            if process is not None:
                process.terminate()
                process.wait(10)
        subprocess.run(
            [sys.executable, "-m", "bench.ssh_child", "cleanup"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            check=False,
        )
        shutil.rmtree(work, ignore_errors=True)
    import statistics

    gateway_p50 = statistics.median(through_gateway)
    sshd_p50 = statistics.median(through_sshd)
    ratio = gateway_p50 / sshd_p50
    return [
        median_result(
            "ssh -p <gateway> <sandbox>@127.0.0.1 true (local sandbox)",
            through_gateway,
            at_most=None,
        ),
        median_result(
            "ssh -p <sshd> root@127.0.0.1 true (OpenSSH sshd)", through_sshd, at_most=None
        ),
        Result(
            name="gateway / sshd, medians",
            value=round(ratio, 2),
            unit="x",
            target="<= 1.5x",
            met=ratio <= 1.5,
        ),
    ]
