"""Lifecycle of local sandboxes: limits, pause, stop/start, restarts, reboots, exec."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from providers import unix_http
from providers.base import EXEC_OUTPUT_LIMIT, InstanceStatus
from providers.errors import Conflict, NotFound, Unavailable, Unsupported
from providers.local import LocalProvider, disk
from providers.local.cgroups import Cgroups, Layout
from providers.local.state import process_start_ticks
from tests.local_support import local_provider
from tests.providers.conftest import Sandboxes, metadata, new_spec, sh, wait_for

ROOT = Path(__file__).resolve().parents[2]
COUNTER = (
    "nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /workspace/c.tmp; "
    "mv /workspace/c.tmp /workspace/counter; sleep 0.02; done' >/dev/null 2>&1 &"
)


def counter(provider: LocalProvider, sandbox_id: str) -> int:
    """The counter, read from the host side (works while the sandbox is frozen)."""
    layer = disk.layer_dir(provider.store.sandbox_dir(sandbox_id))
    path = layer / "upper" / "root" / "workspace" / "counter"
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return 0


def cgroup_file(provider: LocalProvider, role: str, sandbox_id: str, name: str) -> str:
    _, mount = provider.cgroups.roles[role]
    return (mount / provider.cgroups.parent / sandbox_id / name).read_text().strip()


# --- limits


def test_memory_limit_comes_from_the_preset_and_is_enforced(local, sandboxes):
    box = sandboxes.running(local, memory_mb=64)
    version, _ = local.cgroups.roles["memory"]
    name = "memory.max" if version == "v2" else "memory.limit_in_bytes"
    assert cgroup_file(local, "memory", box.id, name) == str(64 * 1024 * 1024)
    hog = box.exec(
        ["python3", "-c", "b = bytearray(256 * 1024 * 1024); print('survived')"], timeout=60
    )
    assert hog.exit_code != 0
    assert "survived" not in hog.stdout
    assert sh(box, "echo still-up") == "still-up\n"


def test_cpu_quota_comes_from_the_preset(local, sandboxes):
    box = sandboxes.running(local, vcpus=2)
    version, _ = local.cgroups.roles["cpu"]
    if version == "v2":
        assert cgroup_file(local, "cpu", box.id, "cpu.max") == "200000 100000"
    else:
        assert cgroup_file(local, "cpu", box.id, "cpu.cfs_quota_us") == "200000"
        assert cgroup_file(local, "cpu", box.id, "cpu.cfs_period_us") == "100000"


def test_pids_limit_is_enforced(tmp_path):
    with local_provider(tmp_path, LOCAL_SANDBOX_PIDS_MAX="24") as provider:
        made = Sandboxes()
        try:
            box = made.running(provider)
            assert cgroup_file(provider, "pids", box.id, "pids.max") == "24"
            result = box.exec(
                "i=0; while [ $i -lt 60 ]; do sleep 60 & i=$((i+1)); done", timeout=60
            )
            assert "fork" in result.stderr  # the shell was refused new processes
            assert 0 < len(provider.cgroups.pids(box.id)) <= 24
        finally:
            made.cleanup()


def test_execd_commands_run_inside_the_sandbox_cgroups(local, sandboxes):
    box = sandboxes.running(local)
    sh(box, "nohup sleep 300 >/dev/null 2>&1 &")

    def sleepers() -> list[int]:
        found = []
        for pid in local.cgroups.pids(box.id):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\x00300"):
                    found.append(pid)
        return found

    sleepers = wait_for(sleepers)
    for directory in local.cgroups.dirs(box.id):
        assert set(sleepers) <= {int(p) for p in (directory / "cgroup.procs").read_text().split()}


# --- pause keeps memory


def test_pause_freezes_and_resume_continues_from_memory(local, sandboxes):
    box = sandboxes.running(local)
    sh(box, COUNTER)
    wait_for(lambda: counter(local, box.id) > 5)
    box.pause()
    assert local.get(box.id).status == InstanceStatus.PAUSED
    frozen_at = counter(local, box.id)
    time.sleep(0.5)
    assert counter(local, box.id) == frozen_at  # nothing ran while paused
    with pytest.raises(Conflict):
        box.exec("true", timeout=10)
    box.resume()
    assert local.get(box.id).status == InstanceStatus.RUNNING
    after = wait_for(lambda: counter(local, box.id) > frozen_at and counter(local, box.id))
    # It continued from the value it held in memory instead of starting over.
    assert frozen_at < after < frozen_at + 200


def test_pause_and_resume_are_idempotent_and_checked(local, sandboxes):
    box = sandboxes.running(local)
    box.pause()
    box.pause()
    box.resume()
    box.resume()
    box.stop()
    with pytest.raises(Conflict):
        box.pause()
    with pytest.raises(Conflict):
        box.resume()


def test_a_sandbox_stopped_while_paused_starts_running(local, sandboxes):
    box = sandboxes.running(local)
    sh(box, "echo kept > /workspace/file")
    box.pause()
    box.stop()
    assert local.get(box.id).status == InstanceStatus.STOPPED
    box.start()
    assert local.get(box.id).status == InstanceStatus.RUNNING
    assert sh(box, "cat /workspace/file") == "kept\n"


def test_hibernate_is_refused_with_the_reason(local, sandboxes):
    box = sandboxes.running(local)
    assert not local.capabilities.supports_hibernate
    assert "CRIU" in local.capabilities.reason("supports_hibernate")
    with pytest.raises(Unsupported) as raised:
        box.hibernate()
    assert raised.value.capability == "supports_hibernate"


# --- stop and start


def test_stop_ends_every_process_and_keeps_the_layer(local, sandboxes):
    box = sandboxes.running(local)
    sh(box, "echo kept > /workspace/file; mkdir -p /opt/tool; echo v1 > /opt/tool/version")
    sh(box, "nohup sleep 300 >/dev/null 2>&1 &")
    assert local.cgroups.pids(box.id)
    box.stop()
    assert local.cgroups.pids(box.id) == set()
    assert local.get(box.id).status == InstanceStatus.STOPPED
    box.start()
    assert sh(box, "cat /workspace/file /opt/tool/version") == "kept\nv1\n"
    assert "sleep 300" not in sh(box, "cat /proc/*/cmdline | tr '\\0' ' '")


def test_delete_removes_processes_cgroups_and_files(local, sandboxes):
    box = sandboxes.running(local)
    sh(box, "nohup sleep 300 >/dev/null 2>&1 &")
    directory = local.store.sandbox_dir(box.id)
    box.delete()
    assert not directory.exists()
    assert not local.cgroups.exists(box.id)
    assert box.id not in {i.id for i in local.list()}
    with pytest.raises(NotFound):
        box.start()


# --- outliving processes, restarts and reboots

_CREATE_ELSEWHERE = """
import json, sys
from providers.base import InstanceSpec
from providers.local import LocalProvider
provider = LocalProvider.from_config(json.loads(sys.argv[1]))
spec = InstanceSpec(sys.argv[2], "1vcpu_512mb_4gb", 1, 512, 4)
box = provider.create(spec, "base", {"sandbox_id": spec.sandbox_id, "team": "t"})
box.start()
assert box.exec("echo from-another-process > /workspace/origin", 30).exit_code == 0
"""


def test_sandboxes_outlive_the_process_that_started_them(local, sandboxes):
    spec = new_spec()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _CREATE_ELSEWHERE,
            json.dumps(local.config_mapping()),
            spec.sandbox_id,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    fresh = LocalProvider.from_config(local.config_mapping())  # as after a web restart
    box = fresh.get(spec.sandbox_id)
    sandboxes.made.append(box)
    assert box.status == InstanceStatus.RUNNING
    assert spec.sandbox_id in {i.id for i in fresh.list()}
    assert sh(box, "cat /workspace/origin") == "from-another-process\n"
    box.stop()
    assert fresh.get(spec.sandbox_id).status == InstanceStatus.STOPPED


def test_sandboxes_survive_their_supervisor_being_killed(local, sandboxes):
    box = sandboxes.running(local)
    runtime = json.loads(local.store.state_path(box.id).read_text())["runtime"]
    # A service manager stopping the web service kills what stayed in its cgroup.
    os.kill(runtime["supervisor"], signal.SIGKILL)
    wait_for(lambda: process_start_ticks(runtime["supervisor"]) is None)
    assert local.get(box.id).status == InstanceStatus.RUNNING
    assert sh(box, "echo still-here") == "still-here\n"
    box.stop()
    assert local.cgroups.pids(box.id) == set()


def test_a_new_provider_object_finds_running_and_paused_sandboxes(local, sandboxes):
    running = sandboxes.running(local)
    paused = sandboxes.running(local)
    paused.pause()
    fresh = LocalProvider.from_config(local.config_mapping())
    found = {i.id: i.status for i in fresh.list()}
    assert found[running.id] == InstanceStatus.RUNNING
    assert found[paused.id] == InstanceStatus.PAUSED
    fresh.get(paused.id).resume()
    assert sh(fresh.get(paused.id), "echo ok") == "ok\n"


def test_after_a_host_reboot_sandboxes_show_stopped_with_files_kept(local, sandboxes):
    box = sandboxes.running(local)
    sh(box, "echo survives-reboot > /workspace/file")
    # A reboot: every process gone, every cgroup gone, only the disk remains.
    assert local.cgroups.kill(box.id)
    assert local.cgroups.remove(box.id)
    fresh = LocalProvider.from_config(local.config_mapping())
    assert fresh.get(box.id).status == InstanceStatus.STOPPED
    with pytest.raises(Conflict):
        fresh.get(box.id).exec("true", timeout=10)
    fresh.get(box.id).start()
    assert sh(fresh.get(box.id), "cat /workspace/file") == "survives-reboot\n"


def test_a_recycled_pid_is_never_taken_for_the_sandbox(local, sandboxes):
    box = sandboxes.running(local)
    box.stop()
    # The state file points at a live process that is not the sandbox (here: us).
    path = local.store.state_path(box.id)
    state = json.loads(path.read_text())
    state["runtime"] = {
        "pid": os.getpid(),
        "start_ticks": 1,
        "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
        "supervisor": os.getpid(),
        "exec_socket": True,
    }
    path.write_text(json.dumps(state))
    assert local.get(box.id).status == InstanceStatus.STOPPED
    box.start()  # must not signal the process the stale state names
    assert sh(box, "echo fine") == "fine\n"


# --- exec details


def test_exec_output_is_capped_and_flagged(local, sandboxes):
    box = sandboxes.running(local)
    big = box.exec(
        f"head -c {EXEC_OUTPUT_LIMIT + 5000} /dev/zero | tr '\\0' x; echo small >&2", timeout=60
    )
    assert big.exit_code == 0
    assert len(big.stdout) == EXEC_OUTPUT_LIMIT
    assert big.stdout_truncated
    assert (big.stderr, big.stderr_truncated) == ("small\n", False)


def test_exec_timeout_kills_the_whole_command_but_nothing_else(local, sandboxes):
    box = sandboxes.running(local)
    sh(box, "nohup sleep 400 >/dev/null 2>&1 &")  # not part of the timed-out command
    result = box.exec("sleep 300 & sleep 301", timeout=1)
    assert result.timed_out
    processes = wait_for(
        lambda: (
            (
                (seen := sh(box, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"))
                and "sleep 30" not in seen
            )
            and seen
        )
    )
    assert "sleep 400" in processes


def test_exec_of_a_missing_program_reports_127(local, sandboxes):
    box = sandboxes.running(local)
    result = box.exec(["no-such-program-here"], timeout=30)
    assert result.exit_code == 127
    assert "no-such-program-here" in result.stderr


def test_exec_records_activity(local, sandboxes):
    box = sandboxes.running(local)
    before = local.get(box.id).last_activity
    time.sleep(0.02)
    sh(box, "true")
    assert local.get(box.id).last_activity > before


def test_without_a_compiler_sandboxes_refuse_to_start_and_say_what_to_install(
    tmp_path, monkeypatch
):
    # sbx-init is every sandbox's pid 1 and the maker of its user namespace: without it
    # there is no sandbox, rather than a weaker one.
    with local_provider(tmp_path) as provider:
        spec = new_spec()
        box = provider.create(spec, "base", metadata(spec))
        monkeypatch.setattr("providers.local.initbin.SOURCE", tmp_path / "changed.c")
        (tmp_path / "changed.c").write_text("int main(void) { return 0; }\n")
        monkeypatch.setattr("shutil.which", lambda name, *a, **k: None)
        with pytest.raises(Unavailable, match="gcc"):
            box.start()
        assert provider.get(box.id).status == InstanceStatus.STOPPED


# --- hosts with fewer cgroup features


def test_without_cgroups_sandboxes_run_and_capabilities_say_what_is_missing(tmp_path):
    with local_provider(tmp_path) as provider:
        provider.cgroups = Cgroups(Layout(), provider.config.cgroup_parent)  # nothing mounted
        made = Sandboxes()
        try:
            capabilities = provider.capabilities
            assert not capabilities.supports_pause
            assert "no cgroup hierarchy" in capabilities.reason("supports_pause")
            assert any("memory limits are not enforced" in p for p in provider.limitations())
            box = made.running(provider)
            assert sh(box, "echo works") == "works\n"
            with pytest.raises(Unsupported):
                box.pause()
            box.stop()
            assert provider.get(box.id).status == InstanceStatus.STOPPED
        finally:
            made.cleanup()


def test_cgroup_v1_freezer_and_kill_work_without_the_v2_tree(tmp_path):
    layout = Layout.discover()
    if "freezer" not in layout.v1:
        pytest.skip("this host has no cgroup v1 freezer to exercise")
    with local_provider(tmp_path) as provider:
        provider.cgroups = Cgroups(Layout(v1=layout.v1, v2=None), provider.config.cgroup_parent)
        assert provider.cgroups.roles["freeze"][0] == "v1"
        made = Sandboxes()
        try:
            box = made.running(provider)
            sh(box, COUNTER)
            wait_for(lambda: counter(provider, box.id) > 3)
            box.pause()
            frozen_at = counter(provider, box.id)
            time.sleep(0.3)
            assert counter(provider, box.id) == frozen_at
            box.stop()  # killing a frozen v1 cgroup needs a thaw first
            assert provider.cgroups.pids(box.id) == set()
            box.start()
            assert sh(box, "echo back") == "back\n"
        finally:
            made.cleanup()


# --- concurrency


def test_concurrent_creates_of_one_sandbox_make_one(local, sandboxes):
    spec = new_spec()
    results, errors = [], []

    def create() -> None:
        try:
            results.append(local.create(spec, "base", metadata(spec)))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sandboxes.made.extend(results[:1])
    assert errors == []
    assert {r.id for r in results} == {spec.sandbox_id}
    assert [i.id for i in local.list()].count(spec.sandbox_id) == 1
    # The creates' own staging folders; the background Spares thread may be writing a spare
    # disk (".tmp-spare-...") at this moment, which is not a create's leftover.
    staging = f".tmp-{spec.sandbox_id}-"
    leftovers = [p for p in local.store.sandboxes.iterdir() if p.name.startswith(staging)]
    assert leftovers == []


def test_concurrent_first_use_builds_the_base_once(tmp_path):
    with local_provider(tmp_path) as provider:
        made = Sandboxes()
        errors = []

        def start() -> None:
            try:
                made.running(provider)
            except Exception as exc:
                errors.append(exc)

        try:
            threads = [threading.Thread(target=start) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert errors == []
            assert len(made.made) == 4
            assert not [p for p in tmp_path.iterdir() if p.name.startswith(".base-tmp")]
            for box in made.made:
                assert sh(box, "cat /etc/hosts").startswith("127.0.0.1")
        finally:
            made.cleanup()


def test_exec_refuses_nul_bytes_and_gives_only_the_sandbox_environment(local, sandboxes):
    box = sandboxes.running(local)
    with pytest.raises(ValueError, match="NUL"):
        box.exec(["echo", "a\0b"], timeout=10)
    env = dict(line.split("=", 1) for line in sh(box, "env").splitlines() if "=" in line)
    assert env["HOSTNAME"] == box.id
    assert env["HOME"] == "/root"
    assert set(env) <= {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "HOSTNAME", "LANG", "PWD"}


def test_a_deeply_nested_root_works(tmp_path):
    deep = tmp_path.joinpath(*["nested-directory"] * 8)  # sockets there exceed sun_path
    with local_provider(deep) as provider:
        made = Sandboxes()
        try:
            box = made.running(provider)
            assert len(str(provider.store.sandbox_dir(box.id) / "exec.sock")) > 108
            assert sh(box, "echo deep") == "deep\n"
            url = box.expose_http_service("web", 8080)
            assert len(unix_http.socket_path(url)) > 108
            with unix_http.session() as session:  # the forwarder answers: nothing inside
                assert session.get(url, timeout=10).status_code == 502
        finally:
            made.cleanup()


def test_a_sandbox_that_deleted_its_working_directory_still_starts(local, sandboxes):
    box = sandboxes.running(local)
    sh(box, "cd / && rm -rf /workspace")
    box.stop()
    box.start()
    assert sh(box, "pwd") == "/\n"


def test_metrics_report_memory_and_cpu_from_the_cgroups(local, sandboxes):
    box = sandboxes.running(local)
    assert local.capabilities.supports_metrics
    first = box.metrics()
    assert len(first) == 1
    hold = "import time; kept = b'x' * (40 * 1024 * 1024); time.sleep(300)"
    sh(box, f'nohup python3 -c "{hold}" >/dev/null 2>&1 &')
    wait_for(lambda: box.metrics()[0].memory_bytes >= 40 * 1024 * 1024)
    box.metrics()
    sh(box, "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done")  # burn some CPU
    second = box.metrics()[0]
    assert second.time > first[0].time
    assert 0 < second.cpu_fraction <= 1.05  # one vCPU
