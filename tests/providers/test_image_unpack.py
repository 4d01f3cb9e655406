"""Applying image layers: whiteouts and opaque directories become overlayfs ones, and a
layer that tries to write outside its directory is refused."""

from __future__ import annotations

import os
import stat
import tarfile

import pytest

from providers.images import ImageConfig, oci, unpack
from providers.images.unpack import UnsafeLayer, apply_layer
from tests.images_support import layer_tar
from tests.system import require


@pytest.fixture(autouse=True)
def as_root():
    require("root", os.geteuid() == 0, "unpacking whiteouts (0/0 devices) needs root")


def write(tmp_path, build):
    path = tmp_path / "layer.tar"
    path.write_bytes(layer_tar(build))
    return path


def test_whiteouts_and_opaque_directories_become_overlayfs_ones(tmp_path):
    def build(tar, add):
        add("etc", type=tarfile.DIRTYPE, mode=0o755)
        add("etc/.wh.gone", data=b"")
        add("srv", type=tarfile.DIRTYPE, mode=0o755)
        add("srv/data", type=tarfile.DIRTYPE, mode=0o750)
        add("srv/data/.wh..wh..opq", data=b"")
        add("srv/data/new", data=b"new\n", mode=0o640, uid=1000, gid=50)

    target = tmp_path / "out"
    done = apply_layer(write(tmp_path, build), target)
    gone = os.lstat(target / "etc/gone")
    assert stat.S_ISCHR(gone.st_mode)
    assert gone.st_rdev == os.makedev(0, 0)
    assert os.getxattr(target / "srv/data", "trusted.overlay.opaque") == b"y"
    new = os.lstat(target / "srv/data/new")
    assert (new.st_uid, new.st_gid, stat.S_IMODE(new.st_mode)) == (1000, 50, 0o640)
    assert stat.S_IMODE(os.lstat(target / "srv/data").st_mode) == 0o750
    assert (done.whiteouts, done.opaque) == (1, 1)
    assert not any(name.startswith(".wh.") for name in os.listdir(target / "srv/data"))


@pytest.mark.parametrize(
    "build",
    [
        lambda tar, add: add("../escaped", data=b"x"),
        lambda tar, add: add("a/../../escaped", data=b"x"),
        lambda tar, add: (
            add("link", type=tarfile.SYMTYPE, linkname=".."),
            add("link/escaped", data=b"x"),
        ),
        lambda tar, add: (
            add("etc", type=tarfile.SYMTYPE, linkname="/tmp"),
            add("etc/escaped", data=b"x"),
        ),
        lambda tar, add: add("stolen", type=tarfile.LNKTYPE, linkname="../outside"),
        lambda tar, add: add("stolen", type=tarfile.LNKTYPE, linkname="/etc/passwd"),
    ],
    ids=[
        "dotdot",
        "dotdot-inside",
        "through-relative-symlink",
        "through-absolute-symlink",
        "hardlink-out",
        "hardlink-host-file",
    ],
)
def test_a_layer_cannot_write_outside_its_directory(tmp_path, build):
    outside = tmp_path / "outside"
    outside.write_text("host file\n")
    target = tmp_path / "out" / "layer"
    with pytest.raises(UnsafeLayer):
        apply_layer(write(tmp_path, build), target)
    assert sorted(os.listdir(tmp_path)) == ["layer.tar", "out", "outside"]
    assert outside.read_text() == "host file\n"
    assert os.stat(outside).st_nlink == 1
    assert not os.path.exists("/tmp/escaped")


def test_a_directory_replaced_by_a_symlink_keeps_its_mode_off_the_target(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    os.chmod(outside, 0o700)

    def build(tar, add):
        add("d", type=tarfile.DIRTYPE, mode=0o777)
        add("d", type=tarfile.SYMTYPE, linkname=str(outside))
        add("p/q", type=tarfile.DIRTYPE, mode=0o777)
        add("p", type=tarfile.SYMTYPE, linkname=str(tmp_path))

    target = tmp_path / "out"
    apply_layer(write(tmp_path, build), target)
    assert os.readlink(target / "d") == str(outside)
    assert stat.S_IMODE(os.stat(outside).st_mode) == 0o700
    assert not (tmp_path / "q").exists()


def test_the_image_user_is_read_from_the_image_never_through_a_symlink(tmp_path):
    from providers.images import ImageError
    from providers.local.layers import resolve_user

    layer = tmp_path / "layer"
    (layer / "etc").mkdir(parents=True)
    (layer / "etc/passwd").write_text("app:x:1000:1000::/home/app:/bin/sh\n")
    (layer / "etc/group").write_text("staff:x:50:\n")
    assert resolve_user("app:staff", [layer]) == (1000, 50, "/home/app")
    assert resolve_user("", [layer]) == (0, 0, "/root")
    assert resolve_user("4242", [layer]) == (4242, 0, "/")
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "etc").symlink_to("/etc")  # the host's /etc must not answer for the image
    with pytest.raises(ImageError, match="not in its /etc/passwd"):
        resolve_user("root", [evil])


def test_absolute_names_stay_inside_and_device_nodes_are_refused(tmp_path):
    def build(tar, add):
        add("/etc/motd", data=b"hello\n", mode=0o644)
        add("dev/sda", type=tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o666)
        add("dev/mem", type=tarfile.CHRTYPE, devmajor=1, devminor=1, mode=0o666)
        add("bin/tool", data=b"#!/bin/sh\n", mode=0o4755)
        add("bin/same", type=tarfile.LNKTYPE, linkname="bin/tool")

    target = tmp_path / "out"
    done = apply_layer(write(tmp_path, build), target)
    assert (target / "etc/motd").read_text() == "hello\n"
    assert sorted(done.skipped) == ["dev/mem", "dev/sda"]
    assert os.listdir(target / "dev") == []
    assert os.stat(target / "bin/same").st_ino == os.stat(target / "bin/tool").st_ino
    assert stat.S_IMODE(os.stat(target / "bin/tool").st_mode) == 0o4755


def test_image_references_are_checked_before_skopeo_runs(tmp_path):
    for bad in ("ftp://x", "/etc/passwd", "docker://-rm", "oci-archive:" + str(tmp_path / "no")):
        with pytest.raises(ValueError, match=r"image reference|does not exist"):
            oci.check_ref(bad)
    config = ImageConfig.from_oci(
        {
            "Env": ["A=1", "B=x=y", "bad"],
            "WorkingDir": "/app",
            "User": "app",
            "ExposedPorts": {"8080/tcp": {}, "53/udp": {}, "80": {}},
        }
    )
    assert config.env == {"A": "1", "B": "x=y"}
    assert config.exposed_ports == (80, 8080)
    assert unpack.clean_name("./a//b/") == "a/b"


def test_a_damaged_layer_is_a_clear_error(tmp_path):
    import gzip

    from providers.images import ImageError

    whole = layer_tar(lambda tar, add: add("big", data=os.urandom(1 << 20), mode=0o644))
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(gzip.compress(whole)[:200_000])
    with pytest.raises(ImageError, match=r"damaged|not a readable tar"):
        apply_layer(broken, tmp_path / "out")
