"""Local sandboxes from real images: a Debian root filesystem built with mmdebstrap, and
OCI archives imported with skopeo (layers stored once by digest, whiteouts honoured, the
image's Env, WorkingDir, User and ExposedPorts applied)."""

from __future__ import annotations

import json
import os
import tarfile

import pytest

from providers.errors import Conflict
from providers.images import debian, oci
from tests.images_support import busybox_base_layer, debian_rootfs, layer_tar, oci_archive
from tests.providers.conftest import sh
from tests.system import require


def test_a_debian_image_is_a_real_distribution(local, sandboxes):
    spec, rootfs = debian_rootfs()
    imported = local.import_image(debian.image_source(spec, rootfs))
    box = sandboxes.running(local, snapshot_ref=imported.ref)

    installed = sh(box, "apt list --installed 2>/dev/null")
    for package in ("git/", "python3/", "ca-certificates/", "apt/"):
        assert package in installed, package
    assert sh(box, "git --version").startswith("git version 2.")
    code = "import ssl, sqlite3, sys; print(sys.version_info[0], ssl.OPENSSL_VERSION[:7])"
    assert sh(box, f"python3 -c '{code}'") == "3 OpenSSL\n"
    assert "Debian GNU/Linux 12" in sh(box, "cat /etc/os-release")
    # Its own /usr, not the host's; dpkg works on it as root of the sandbox.
    assert sh(box, "dpkg -S /usr/bin/git") == "git: /usr/bin/git\n"
    assert sh(box, "pwd; id -u") == "/workspace\n0\n"
    # Writes go to the sandbox's own layer: a second sandbox sees the image unchanged.
    sh(box, "rm /usr/bin/git")
    other = sandboxes.running(local, snapshot_ref=imported.ref)
    assert sh(other, "git --version").startswith("git version")

    # The same root filesystem again: its layer is already stored, nothing big is written.
    again = local.import_image(debian.image_source(spec, rootfs))
    assert again.layers_reused == 1
    assert again.bytes_written < 64 * 1024


def two_images(tmp_path):
    """Two OCI archives sharing their base layer; the second's top layer deletes a base
    file, makes a directory opaque, and sets Env, WorkingDir, User and ExposedPorts."""
    base = busybox_base_layer()

    def first_top(tar, add):
        add("srv/first", data=b"first\n", mode=0o644)

    def second_top(tar, add):
        add("etc", type=tarfile.DIRTYPE, mode=0o755)
        add("etc/.wh.base-only", data=b"")
        add("srv", type=tarfile.DIRTYPE, mode=0o755)
        add("srv/data", type=tarfile.DIRTYPE, mode=0o755)
        add("srv/data/.wh..wh..opq", data=b"")
        add("srv/data/fresh", data=b"fresh\n", mode=0o644)
        add("home/app/work", type=tarfile.DIRTYPE, mode=0o755, uid=1000, gid=1000)

    first = oci_archive(tmp_path / "first.tar", [base, layer_tar(first_top)], {})
    config = {
        "Env": ["PATH=/bin", "GREETING=hello from the image"],
        "WorkingDir": "/home/app/work",
        "User": "app:staff",
        "ExposedPorts": {"8080/tcp": {}},
    }
    second = oci_archive(
        tmp_path / "second.tar", [base, layer_tar(second_top)], config, gzip_top=True
    )
    return base, first, second


def stored_layers(provider) -> list[str]:
    return sorted(os.listdir(provider.store.root / "layers"))


def test_oci_images_share_layers_and_keep_their_configuration(local, sandboxes, tmp_path):
    require("skopeo", oci.problem() == "", "apt-get install skopeo")
    base, first, second = two_images(tmp_path)
    before = set(stored_layers(local)) if (local.store.root / "layers").exists() else set()

    one = local.import_image(oci.copy_to_layout(f"oci-archive:{first}", tmp_path / "one"))
    two = local.import_image(oci.copy_to_layout(f"oci-archive:{second}", tmp_path / "two"))
    # Three layers stored, not four: the base the two images share is there once.
    assert len(set(stored_layers(local)) - before) == 3
    assert two.layers_reused == 1
    # The first import wrote the base; the second only its own small layer and top.
    assert one.bytes_written >= len(base) * 0.9
    assert two.bytes_written <= 128 * 1024

    box = sandboxes.running(local, snapshot_ref=two.ref)
    assert sh(box, "id -u; id -g; pwd") == "1000\n50\n/home/app/work\n"
    assert sh(box, "echo $GREETING; echo $HOME; echo $PATH") == (
        "hello from the image\n/home/app\n/bin\n"
    )
    assert sh(box, "ls /srv/data") == "fresh\n"  # the opaque directory hides the base's
    assert box.exec("test -e /etc/base-only", timeout=30).exit_code == 1  # whited out
    assert sh(box, "touch /home/app/work/mine && ls -n /home/app/work/mine | cut -d' ' -f3")
    # The image's user has no root rights: the base's files are not its to change.
    assert box.exec("echo x > /etc/passwd", timeout=30).exit_code != 0
    # A terminal is the same user, in the same place, with the same environment.
    with box.open_terminal(["sh", "-c", "id -u; pwd; echo $GREETING"]) as session:
        output = b""
        while chunk := session.read(timeout=10):
            output += chunk
    assert output.decode().split() == ["1000", "/home/app/work", "hello", "from", "the", "image"]
    state = json.loads((local.store.sandbox_dir(box.id) / "state.json").read_text())
    assert state["image"]["exposed_ports"] == [8080]

    # The first image is unaffected by the second's whiteouts.
    plain = sandboxes.running(local, snapshot_ref=one.ref)
    assert sh(plain, "cat /etc/base-only /srv/data/old /srv/first; id -u") == (
        "from the base\nold\nfirst\n0\n"
    )

    # A snapshot of an image's sandbox keeps the image's configuration and layers.
    sh(box, "echo kept > /home/app/work/note")
    snap = box.snapshot()
    child = sandboxes.running(local, snapshot_ref=snap.ref)
    assert sh(child, "cat note; id -u") == "kept\n1000\n"

    # Layers stay while a version stacks them; they go with the last one.
    for instance in (box, plain, child):
        instance.delete()
    with pytest.raises(Conflict):
        local.delete_snapshot(two.ref)  # the snapshot made from it stacks it
    for ref in (snap.ref, two.ref, one.ref):
        local.delete_snapshot(ref)
    assert set(stored_layers(local)) - before == set()


def test_a_docker_sandbox_from_the_same_root_filesystem(tmp_path):
    from providers.base import InstanceSpec
    from tests.docker_daemon import docker_provider_under_test

    spec, rootfs = debian_rootfs()
    with docker_provider_under_test() as (provider, _base):
        imported = provider.import_image(debian.image_source(spec, rootfs))
        again = provider.import_image(debian.image_source(spec, rootfs))
        assert again.ref == imported.ref
        assert again.bytes_written == 0
        sandbox = InstanceSpec(
            sandbox_id="sbx-docker-debian",
            preset_id="1vcpu_512mb_4gb",
            vcpus=1,
            memory_mb=512,
            disk_gb=4,
        )
        metadata = {"sandbox_id": sandbox.sandbox_id, "team": "tests", "preset": "p"}
        instance = provider.create(sandbox, imported.ref, metadata)
        try:
            instance.start()
            box = provider.get(instance.id)
            assert box.exec("git --version", timeout=60).stdout.startswith("git version 2.")
            installed = box.exec("apt list --installed 2>/dev/null", timeout=60).stdout
            assert "python3/" in installed
            assert "ca-certificates/" in installed
            result = box.exec("python3 -c 'import sys; print(sys.version_info[0])'", timeout=60)
            assert result.stdout == "3\n"
        finally:
            instance.delete()
            provider.delete_snapshot(imported.ref)
