"""A sandbox's writable layer cannot grow past its preset's disk size (providers/local/disk.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from providers.local import disk
from tests.providers.conftest import sh, wait_for

GiB = 1024**3


@pytest.fixture(autouse=True)
def _needs_loop_mounts(local):
    if disk.problem():
        pytest.skip(disk.problem())


def host_free(local) -> int:
    info = os.statvfs(local.store.root)
    return info.f_bavail * info.f_frsize


def loops_of(path: Path) -> list[str]:
    """Loop devices backed by the sandbox's image (also under a .trash- name)."""
    listed = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return [line for line in listed.splitlines() if f"{path.name}" in line]


def mounts_of(path: Path) -> list[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line for line in lines if f"{path.name}" in line]


def test_writing_past_the_disk_size_gets_enospc_and_spares_the_host(local, sandboxes):
    box = sandboxes.running(local, disk_gb=1)
    other = sandboxes.running(local, disk_gb=1)
    free_before = host_free(local)
    big = box.exec("fallocate -l 2G /workspace/big", timeout=60)
    assert big.exit_code != 0
    assert "No space left on device" in big.stderr
    filled = box.exec("dd if=/dev/zero of=/workspace/fill bs=1M count=1500", timeout=120)
    assert filled.exit_code != 0
    assert "No space left on device" in filled.stderr
    sh(box, "sync")
    # The host gave the image at most its size (plus slack for other writers meanwhile).
    assert free_before - host_free(local) < 1.2 * GiB
    # The full sandbox's writes fail; everything else keeps working.
    assert sh(box, "echo alive") == "alive\n"
    assert sh(other, "echo fine > /workspace/f && cat /workspace/f") == "fine\n"
    (local.store.root / "host-check").write_text("ok")
    local.store.save(local.store.load(box.id))  # the provider's own state writes


def test_a_snapshot_of_a_full_sandbox_works_and_keeps_the_file(local, sandboxes):
    box = sandboxes.running(local, disk_gb=1)
    box.exec("dd if=/dev/urandom of=/workspace/full bs=1M count=1100", timeout=120)
    size = int(sh(box, "stat -c %s /workspace/full"))
    assert 900 * 1024**2 < size < GiB
    digest = sh(box, "md5sum /workspace/full")
    snap = box.snapshot()
    child = sandboxes.running(local, snap.ref, disk_gb=1)
    assert sh(child, "md5sum /workspace/full") == digest
    child.delete()
    local.delete_snapshot(snap.ref)


def test_stop_start_keeps_files_and_the_limit(local, sandboxes):
    box = sandboxes.running(local, disk_gb=1)
    sh(box, "echo kept > /workspace/kept")
    box.stop()
    # A host reboot unmounts the disk: start mounts it again.
    disk.release(local.store.sandbox_dir(box.id))
    box.start()
    assert sh(box, "cat /workspace/kept") == "kept\n"
    big = box.exec("fallocate -l 2G /workspace/big", timeout=60)
    assert "No space left on device" in big.stderr


def test_delete_releases_the_mount_the_loop_device_and_the_image(local, sandboxes):
    box = sandboxes.running(local, disk_gb=1)
    directory = local.store.sandbox_dir(box.id)
    assert disk.layer_dir(directory) == directory / "disk"
    assert mounts_of(directory)
    assert loops_of(directory)
    box.delete()
    assert not directory.exists()
    assert not mounts_of(directory)
    wait_for(lambda: not loops_of(directory), timeout=5)


def test_sandboxes_without_a_disk_image_keep_their_layer_in_place(local, sandboxes, tmp_path):
    # Sandboxes made before disk limits: upper/ and work/ directly in the sandbox dir.
    legacy = tmp_path / "legacy"
    (legacy / "upper" / "root").mkdir(parents=True)
    assert disk.layer_dir(legacy) == legacy
    assert disk.ensure_mounted(legacy) == legacy
    disk.release(legacy)


def test_delete_releases_the_disk_while_other_sandboxes_run(local, sandboxes):
    box = sandboxes.running(local, disk_gb=1)
    later = sandboxes.running(local, disk_gb=1)  # its start saw box's disk mounted
    directory = local.store.sandbox_dir(box.id)
    box.delete()
    assert not mounts_of(directory)
    wait_for(lambda: not loops_of(directory), timeout=5)
    assert sh(later, "echo alive") == "alive\n"
