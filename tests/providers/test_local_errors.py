"""Clear errors from the local provider: missing bubblewrap, full disks, bad settings."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from providers.errors import QuotaExceeded, Unavailable
from providers.local import LocalProvider
from providers.local.host import user_namespaces_allowed
from providers.registry import BUILTIN_PROVIDERS, build_providers
from tests.local_support import local_provider, require_local_runtime
from tests.providers.conftest import Sandboxes, metadata, new_spec, sh
from tests.system import require

ROOT = Path(__file__).resolve().parents[2]


def test_missing_bubblewrap_is_a_clear_error_and_makes_nothing(tmp_path):
    provider = LocalProvider.from_config(
        {"LOCAL_SANDBOX_ROOT": str(tmp_path / "root"), "LOCAL_SANDBOX_BWRAP": "/nonexistent/bwrap"}
    )
    spec = new_spec()
    with pytest.raises(Unavailable) as raised:
        provider.create(spec, "base", metadata(spec))
    assert "apt-get install -y bubblewrap" in str(raised.value)
    assert not (tmp_path / "root" / "sandboxes").exists()
    health = provider.health()
    assert not health.reachable
    assert "bubblewrap" in health.detail
    assert not provider.capabilities.supports_pause
    assert "bubblewrap" in provider.capabilities.reason("supports_pause")


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_refuses_new_sandboxes_naming_the_fix(tmp_path):
    require_local_runtime()
    with (
        small_disk(tmp_path / "disk", "16m") as disk,
        local_provider(disk, LOCAL_SANDBOX_MIN_FREE_MB="64") as provider,
    ):
        spec = new_spec()
        with pytest.raises(QuotaExceeded) as raised:
            provider.create(spec, "base", metadata(spec))
        assert "LOCAL_SANDBOX_ROOT" in str(raised.value)
        assert provider.store.ids() == []
        assert not provider.health().reachable


def test_a_snapshot_that_does_not_fit_fails_cleanly(tmp_path):
    require_local_runtime()
    with (
        small_disk(tmp_path / "disk", "32m") as disk,
        local_provider(disk, LOCAL_SANDBOX_MIN_FREE_MB="0") as provider,
    ):
        made = Sandboxes()
        try:
            box = made.running(provider)
            filled = box.exec("head -c 20000000 /dev/zero > /workspace/fill", timeout=60)
            assert filled.exit_code == 0, filled
            with pytest.raises(QuotaExceeded) as raised:
                box.snapshot()
            assert "LOCAL_SANDBOX_ROOT" in str(raised.value)
            assert list(provider.store.snapshots.iterdir()) == []
            # The sandbox was thawed and still works.
            assert sh(box, "echo alive") == "alive\n"
            sh(box, "rm /workspace/fill")
            assert box.snapshot().ref
        finally:
            made.cleanup()


def test_a_root_on_overlayfs_is_refused_naming_the_fix(tmp_path):
    require_local_runtime()
    for name in ("lower", "upper", "work", "merged"):
        (tmp_path / name).mkdir()
    options = f"lowerdir={tmp_path}/lower,upperdir={tmp_path}/upper,workdir={tmp_path}/work"
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(tmp_path / "merged")],
        check=True,
    )
    try:
        provider = LocalProvider.from_config({"LOCAL_SANDBOX_ROOT": str(tmp_path / "merged/r")})
        spec = new_spec()
        with pytest.raises(Unavailable, match="local file system"):
            provider.create(spec, "base", metadata(spec))
        assert not provider.health().reachable
        assert not (tmp_path / "merged" / "r").exists()
    finally:
        subprocess.run(["umount", "-l", str(tmp_path / "merged")], check=False)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"LOCAL_SANDBOX_ROOT": "relative/path"}, "absolute"),
        ({"LOCAL_SANDBOX_ROOT": "/usr/lib/sandboxes"}, "must not be inside"),
        ({"LOCAL_SANDBOX_ROOT": "/srv/a:b"}, "must not contain"),
        ({"LOCAL_SANDBOX_CGROUP_PARENT": "a/b"}, "one cgroup name"),
        ({"LOCAL_SANDBOX_MAX_LAYERS": "0"}, "between"),
        ({"LOCAL_SANDBOX_PIDS_MAX": "lots"}, "whole number"),
        ({"LOCAL_SANDBOX_ID_RANGE": "100000"}, "FIRST:COUNT"),
        ({"LOCAL_SANDBOX_ID_RANGE": "0:65536"}, "1000 or above"),
        ({"LOCAL_SANDBOX_ID_RANGE": "100000:1000"}, "at least 65536"),
    ],
)
def test_bad_settings_name_the_setting(settings, message):
    with pytest.raises(ValueError, match=message):
        LocalProvider.from_config({"LOCAL_SANDBOX_ROOT": "/srv/sandboxes", **settings})


def test_local_is_the_registered_default_and_building_it_touches_nothing(tmp_path):
    assert BUILTIN_PROVIDERS["local"] == "providers.local:LocalProvider"
    root = tmp_path / "not-yet"
    built = build_providers({"LOCAL_SANDBOX_ROOT": str(root)})
    assert list(built) == ["local"]
    assert isinstance(built["local"], LocalProvider)
    assert not root.exists()


def test_bad_sandbox_ids_are_refused(local):
    spec = new_spec(sandbox_id="Not_A_Hostname")
    with pytest.raises(ValueError, match="hostname"):
        local.create(spec, "base", metadata(spec))


_ROOTLESS = """
import json, sys
from providers.base import InstanceSpec
from providers.local import LocalProvider
provider = LocalProvider.from_config({"LOCAL_SANDBOX_ROOT": sys.argv[1]})
caps = provider.capabilities
spec = InstanceSpec("sbx-rootless", "1vcpu_512mb_4gb", 1, 512, 4)
box = provider.create(spec, "base", {"sandbox_id": spec.sandbox_id})
box.start()
out = {
    "caps": caps.as_dict(),
    "reasons": dict(caps.reasons),
    "limitations": provider.limitations(),
    "exec": box.exec("id -u; hostname; echo kept > /workspace/f", 30).stdout,
}
box.stop()
snap = box.snapshot()
child = provider.create(InstanceSpec("sbx-rootless2", "1vcpu_512mb_4gb", 1, 512, 4),
                        snap.ref, {"sandbox_id": "sbx-rootless2"})
child.start()
out["child"] = child.exec("cat /workspace/f", 30).stdout
child.delete(); box.delete(); provider.delete_snapshot(snap.ref)
out["left"] = [i.id for i in provider.list()]
print(json.dumps(out))
"""


def test_without_root_it_runs_what_it_can_and_says_what_is_missing():
    require_local_runtime()
    python = shutil.which("python3", path="/usr/bin")
    runuser = shutil.which("runuser")
    require("runuser", runuser is not None, "apt-get install -y util-linux")
    require("unprivileged user namespaces", user_namespaces_allowed(), "kernel support")
    require("/usr/bin/python3", python is not None, "apt-get install -y python3")
    work = Path(tempfile.mkdtemp(prefix="sbx-rootless-"))
    try:
        # nobody gets its own copy of the provider code: the checkout may be in a
        # directory only its owner can read (root's home, a mktemp -d).
        code = work / "src"
        shutil.copytree(
            ROOT / "providers", code / "providers", ignore=shutil.ignore_patterns("__pycache__")
        )
        for path in (work, *code.rglob("*"), code):
            shutil.chown(path, "nobody", "nogroup")
        done = subprocess.run(
            [runuser, "-u", "nobody", "--", python, "-c", _ROOTLESS, str(work / "root")],
            cwd=work,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(code)},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert out["exec"] == "0\nsbx-rootless\n"  # root inside, mapped to nobody outside
        assert out["child"] == "kept\n"
        assert out["left"] == []
        assert out["caps"]["supports_exec"]
        assert out["caps"]["supports_snapshots"]
        assert not out["caps"]["supports_pause"]
        assert "cgroups are not writable" in out["reasons"]["supports_pause"]
        assert not out["caps"]["supports_expose_http"]
        assert any("memory limits are not enforced" in x for x in out["limitations"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
