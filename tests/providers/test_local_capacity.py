"""Caps on all local sandboxes together: the parent cgroup's pids and memory limits, and
admission of creates and starts against the memory total (Provider.capacity())."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from providers.errors import Conflict, QuotaExceeded
from providers.local import LocalProvider
from providers.local.cgroups import (
    default_total_memory_mb,
    default_total_pids,
    host_memory_mb,
    host_pid_space,
)
from providers.local.config import LocalConfig
from tests.local_support import local_provider, make_provider
from tests.providers.conftest import Sandboxes, sh, wait_for

MB = 1024 * 1024


def parent_file(provider: LocalProvider, role: str, name: str) -> Path:
    _, mount = provider.cgroups.roles[role]
    return mount / provider.cgroups.parent / name


def memory_limit_name(provider: LocalProvider) -> str:
    version, _ = provider.cgroups.roles["memory"]
    return "memory.max" if version == "v2" else "memory.limit_in_bytes"


# --- defaults and settings


def test_defaults_leave_the_host_a_quarter_of_its_pids_and_a_tenth_of_its_memory():
    assert default_total_pids(32768) == 24576  # keeps 8192
    assert default_total_pids(4_194_304) == 3_145_728
    assert default_total_pids(8192) == 4096  # keeps 4096
    assert default_total_pids(4096) == 2048  # a tiny host still gets half
    assert default_total_memory_mb(24 * 1024) == 24 * 1024 - 2457
    assert default_total_memory_mb(4096) == 3072  # keeps 1 GiB
    assert default_total_memory_mb(1024) == 512
    assert default_total_memory_mb(0) == 0  # unknown: no cap


def test_settings_override_the_derived_totals(tmp_path):
    derived = LocalConfig.from_mapping({"LOCAL_SANDBOX_ROOT": str(tmp_path)}).totals()
    assert derived.pids == default_total_pids(host_pid_space())
    assert derived.memory_mb == default_total_memory_mb(host_memory_mb())
    set_ = LocalConfig.from_mapping(
        {
            "LOCAL_SANDBOX_ROOT": str(tmp_path),
            "LOCAL_SANDBOX_TOTAL_PIDS": "1000",
            "LOCAL_SANDBOX_TOTAL_MEMORY_MB": "2048",
        }
    ).totals()
    assert (set_.pids, set_.memory_mb) == (1000, 2048)
    for key, bad in (("LOCAL_SANDBOX_TOTAL_PIDS", "0"), ("LOCAL_SANDBOX_TOTAL_MEMORY_MB", "x")):
        with pytest.raises(ValueError, match=key):
            LocalConfig.from_mapping({"LOCAL_SANDBOX_ROOT": str(tmp_path), key: bad})


# --- the parent cgroup's limits


def test_the_parent_cgroup_is_capped_from_the_settings(tmp_path):
    with local_provider(
        tmp_path, LOCAL_SANDBOX_TOTAL_PIDS="1000", LOCAL_SANDBOX_TOTAL_MEMORY_MB="2048"
    ) as provider:
        made = Sandboxes()
        try:
            box = made.running(provider, memory_mb=64)
            assert sh(box, "echo up") == "up\n"
            assert parent_file(provider, "pids", "pids.max").read_text().strip() == "1000"
            memory = parent_file(provider, "memory", memory_limit_name(provider))
            assert memory.read_text().strip() == str(2048 * MB)
            assert provider.cgroups.parent_limits() == {"pids": 1000, "memory_mb": 2048}
            # Someone lifted the caps: the next start puts them back.
            parent_file(provider, "pids", "pids.max").write_text("max")
            box.stop()
            box.start()
            assert parent_file(provider, "pids", "pids.max").read_text().strip() == "1000"
        finally:
            made.cleanup()


def test_the_default_caps_are_derived_from_the_host(local, sandboxes):
    sandboxes.running(local)
    limits = local.cgroups.parent_limits()
    assert limits["pids"] == default_total_pids(host_pid_space())
    assert limits["memory_mb"] == default_total_memory_mb(host_memory_mb())
    assert limits["pids"] < int(Path("/proc/sys/kernel/pid_max").read_text())


def test_twenty_sandboxes_at_their_pid_limit_do_not_exhaust_the_host(tmp_path):
    """Each sandbox may have 100 processes and tries 400; together they may have 1000.

    Without the parent's cap they would hold 20 x 100 = 2000; with it the kernel stops them
    at 1000 and the host (outside the parent) forks as before."""
    with local_provider(
        tmp_path, LOCAL_SANDBOX_PIDS_MAX="100", LOCAL_SANDBOX_TOTAL_PIDS="1000"
    ) as provider:
        made = Sandboxes()
        current = parent_file(provider, "pids", "pids.current")
        seen: list[int] = []
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                seen.append(int(current.read_text()))
                done.wait(0.005)

        watcher = threading.Thread(target=watch, daemon=True)
        try:
            boxes = [made.running(provider, memory_mb=64) for _ in range(20)]
            watcher.start()
            refused = 0
            for box in boxes:
                try:
                    result = box.exec(
                        "for i in $(seq 400); do sleep 60 & done 2>/dev/null; echo all", timeout=20
                    )
                except Conflict:  # no pid left even for the exec itself
                    refused += 1
                    continue
                # The loop dies at the sandbox's own limit or at the shared one.
                assert result.exit_code != 0, result
                assert "all" not in result.stdout, result
            assert subprocess.run(["true"], check=False).returncode == 0
            done.set()
            watcher.join()
            peak = max(seen)
            assert 900 <= peak <= 1000, peak  # full, never over
            assert int(current.read_text()) <= 1000
            per_box = [len(provider.cgroups.pids(box.id)) for box in boxes]
            assert sum(per_box) <= 1000
            assert max(per_box) <= 100
            assert sum(1 for n in per_box if n < 50) >= 5  # late sandboxes found it full
        finally:
            done.set()
            made.cleanup()


# --- admission against the memory total


def test_a_sandbox_bigger_than_the_total_is_refused(tmp_path):
    with local_provider(tmp_path, LOCAL_SANDBOX_TOTAL_MEMORY_MB="1024") as provider:
        made = Sandboxes()
        try:
            with pytest.raises(QuotaExceeded) as refused:
                made.create(provider, memory_mb=2048)
            message = refused.value.message
            assert "2048 MB" in message
            assert "1024 MB" in message
            assert "LOCAL_SANDBOX_TOTAL_MEMORY_MB" in message
            assert provider.store.ids() == []  # nothing was made
        finally:
            made.cleanup()


def test_creates_and_starts_that_would_commit_more_memory_than_the_total_are_refused(tmp_path):
    with local_provider(tmp_path, LOCAL_SANDBOX_TOTAL_MEMORY_MB="1024") as provider:
        made = Sandboxes()
        try:
            assert provider.capacity().memory_mb_free == 1024
            first = made.running(provider, memory_mb=512)
            made.running(provider, memory_mb=256)
            waiting = made.create(provider, memory_mb=256)  # fits: 1024 committed once up
            capacity = provider.capacity()
            assert (capacity.memory_mb_used, capacity.memory_mb_free) == (768, 256)
            assert capacity.sandboxes_running == 2
            assert capacity.pids_total
            assert capacity.pids_used
            waiting.start()
            assert provider.capacity().memory_mb_free == 0

            # A created sandbox commits nothing; running it would.
            extra = made.create(provider, memory_mb=64)
            with pytest.raises(QuotaExceeded) as refused:
                extra.start()
            message = refused.value.message
            for part in ("64 MB", "0 MB of 1024 MB", "1024 MB is committed to 3"):
                assert part in message, message
            assert "LOCAL_SANDBOX_TOTAL_MEMORY_MB" in message

            # A stopped sandbox gives its memory back; starting it again needs it back.
            first.stop()
            assert provider.capacity().memory_mb_free == 512
            other = made.create(provider, memory_mb=512)
            other.start()
            with pytest.raises(QuotaExceeded, match="needs 512 MB of memory but only 0 MB"):
                first.start()
            # Paused sandboxes keep theirs.
            other.pause()
            assert provider.capacity().memory_mb_used == 1024
            other.delete()
            first.start()
            assert sh(provider.get(first.id), "echo up") == "up\n"
        finally:
            made.cleanup()


def test_a_total_below_what_sandboxes_use_now_is_refused_with_the_setting(tmp_path):
    with local_provider(tmp_path) as provider:
        made = Sandboxes()
        try:
            box = made.running(provider, memory_mb=256)
            sh(
                box,
                "nohup python3 -c 'import time; b = b\"x\" * (96 << 20); time.sleep(60)' "
                ">/dev/null 2>&1 &",
            )
            wait_for(lambda: (provider.cgroups.memory_bytes(box.id) or 0) > 64 * MB)
            version, _ = provider.cgroups.roles["memory"]
            shrunk = make_provider(
                tmp_path,
                LOCAL_SANDBOX_CGROUP_PARENT=provider.config.cgroup_parent,
                LOCAL_SANDBOX_TOTAL_MEMORY_MB="32",
            )
            if version == "v2":  # v2 takes any limit and reclaims or OOM-kills
                return
            with pytest.raises(OSError, match="LOCAL_SANDBOX_TOTAL_MEMORY_MB"):
                shrunk.cgroups.ensure(box.id, shrunk._limits(shrunk.store.load(box.id)))
        finally:
            made.cleanup()
