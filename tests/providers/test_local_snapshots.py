"""Snapshots of local sandboxes: immutable layers, stacked on start, flattened when deep."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from providers.base import InstanceStatus
from providers.errors import Conflict, NotFound
from providers.local import disk
from providers.local.layers import BASE_REF
from providers.local.provider import STALE_SECONDS
from tests.local_support import local_provider
from tests.providers.conftest import Sandboxes, sh


def manifest(provider, ref: str) -> dict:
    return json.loads((provider.store.snapshots / ref / "manifest.json").read_text())


def disk_usage(path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in path.rglob("*"))


def test_versions_stack_and_keep_additions_changes_and_deletions(local, sandboxes):
    first = sandboxes.running(local)
    sh(first, "echo one > /workspace/a; echo base-file > /workspace/b; mkdir -p /opt/d/x")
    sh(first, "echo old > /opt/d/x/f; rm /etc/issue")
    v1 = first.snapshot()
    assert manifest(local, v1.ref)["chain"] == [v1.ref, BASE_REF]

    second = sandboxes.running(local, snapshot_ref=v1.ref)
    sh(second, "echo two >> /workspace/a; rm /workspace/b; rm -rf /opt/d; mkdir /opt/d")
    sh(second, "echo new > /opt/d/g")
    v2 = second.snapshot()
    assert manifest(local, v2.ref)["chain"] == [v2.ref, v1.ref, BASE_REF]

    third = sandboxes.running(local, snapshot_ref=v2.ref)
    assert sh(third, "cat /workspace/a") == "one\ntwo\n"
    assert sh(third, "ls /opt/d") == "g\n"  # the replaced directory hides the old one
    for gone in ("/workspace/b", "/opt/d/x", "/etc/issue"):
        assert third.exec(["test", "-e", gone], timeout=30).exit_code == 1, gone
    # A version is immutable: what later sandboxes do never reaches it.
    sh(third, "echo three > /workspace/a")
    assert sh(sandboxes.running(local, snapshot_ref=v2.ref), "cat /workspace/a") == "one\ntwo\n"


def test_starting_from_a_snapshot_copies_nothing(local, sandboxes):
    source = sandboxes.running(local)
    sh(source, "head -c 20000000 /dev/urandom > /workspace/big")
    made = source.snapshot()
    assert made.size_bytes >= 20_000_000
    child = sandboxes.running(local, snapshot_ref=made.ref)
    assert sh(child, "wc -c < /workspace/big") == "20000000\n"
    # The big file is read through the stacked layer, not copied into the sandbox.
    upper = disk.layer_dir(local.store.sandbox_dir(child.id)) / "upper"
    assert upper.is_dir()
    assert disk_usage(upper) < 1_000_000


def test_snapshot_keeps_the_sandbox_state(local, sandboxes):
    running = sandboxes.running(local)
    sh(running, "echo r > /workspace/r")
    running.snapshot()
    assert local.get(running.id).status == InstanceStatus.RUNNING
    running.pause()
    paused = running.snapshot()
    assert local.get(running.id).status == InstanceStatus.PAUSED
    running.resume()
    running.stop()
    stopped = running.snapshot()
    assert local.get(running.id).status == InstanceStatus.STOPPED
    for ref in (paused.ref, stopped.ref):
        assert sh(sandboxes.running(local, snapshot_ref=ref), "cat /workspace/r") == "r\n"


def test_a_version_others_stack_on_cannot_be_deleted(local, sandboxes):
    first = sandboxes.running(local)
    v1 = first.snapshot()
    second = sandboxes.running(local, snapshot_ref=v1.ref)
    v2 = second.snapshot()
    second.delete()
    with pytest.raises(Conflict) as raised:
        local.delete_snapshot(v1.ref)
    assert v2.ref in str(raised.value)
    local.delete_snapshot(v2.ref)
    local.delete_snapshot(v1.ref)
    local.delete_snapshot(v1.ref)  # idempotent
    with pytest.raises(NotFound):
        sandboxes.create(local, snapshot_ref=v1.ref)


def test_deep_chains_are_flattened_and_keep_their_meaning(tmp_path):
    with local_provider(tmp_path, LOCAL_SANDBOX_MAX_LAYERS="2") as provider:
        made = Sandboxes()
        try:
            box = made.running(provider)
            sh(box, "echo 1 > /workspace/one; echo keep > /workspace/keep; rm /etc/issue")
            sh(box, "mkdir -p /opt/tree/sub; echo old > /opt/tree/sub/f")
            v1 = box.snapshot()
            box = made.running(provider, snapshot_ref=v1.ref)
            sh(box, "echo 2 > /workspace/two; rm /workspace/one; rm -rf /opt/tree")
            sh(box, "mkdir /opt/tree; echo new > /opt/tree/g")
            v2 = box.snapshot()
            assert manifest(provider, v2.ref)["chain"] == [v2.ref, v1.ref, BASE_REF]
            box = made.running(provider, snapshot_ref=v2.ref)
            sh(box, "echo 3 > /workspace/three; echo changed > /workspace/keep")
            v3 = box.snapshot()
            # Past the limit: one flattened layer straight on the base.
            assert manifest(provider, v3.ref)["chain"] == [v3.ref, BASE_REF]
            final = made.running(provider, snapshot_ref=v3.ref)
            listing = sh(final, "cd /workspace && ls")
            assert listing.split() == ["keep", "three", "two"]
            assert sh(final, "cat /workspace/keep /opt/tree/g") == "changed\nnew\n"
            assert sh(final, "ls /opt/tree") == "g\n"
            assert final.exec(["test", "-e", "/etc/issue"], timeout=30).exit_code == 1
            assert sh(final, "test -e /etc/hosts && echo base-still-there") == "base-still-there\n"
            # The flattened version depends on nothing but the base.
            for sandbox in made.made:
                sandbox.delete()
            made.made.clear()
            provider.delete_snapshot(v2.ref)
            provider.delete_snapshot(v1.ref)
            made.running(provider, snapshot_ref=v3.ref).exec("true", timeout=30)
        finally:
            made.cleanup()


def test_the_leftover_sweep_spares_a_snapshot_copy_still_in_progress(local):
    """A copy of a big layer can take longer than the stale age; its process still runs."""
    finished = subprocess.Popen(["true"])
    finished.wait()
    copies = {
        "in progress": f".tmp-snap-00000000000000a1@{os.getpid()}",
        "process gone": f".tmp-snap-00000000000000a2@{finished.pid}",
        "no owner": ".tmp-snap-00000000000000a3",
    }
    long_ago = time.time() - 2 * STALE_SECONDS
    for name in copies.values():
        (local.store.snapshots / name / "layer").mkdir(parents=True)
        os.utime(local.store.snapshots / name, (long_ago, long_ago))
    local.list()  # sweeps leftovers
    kept = {what for what, name in copies.items() if (local.store.snapshots / name).exists()}
    assert kept == {"in progress"}
