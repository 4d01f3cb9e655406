"""What this host offers the local provider, probed once per process."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

BWRAP_HINT = "apt-get install -y bubblewrap (or `make system-packages`)"


def find_bwrap(configured: str) -> str | None:
    if os.sep in configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which(configured)


def overlay_supported() -> bool:
    try:
        return "overlay" in Path("/proc/filesystems").read_text().split()
    except OSError:
        return False


def rootless() -> bool:
    return os.geteuid() != 0


def user_namespaces_allowed() -> bool:
    for path, minimum in (
        ("/proc/sys/user/max_user_namespaces", 1),
        ("/proc/sys/kernel/unprivileged_userns_clone", 1),  # Debian's switch, if present
    ):
        try:
            if int(Path(path).read_text()) < minimum:
                return False
        except (OSError, ValueError):
            continue
    return True


#: File systems overlayfs cannot use for a writable layer.
NO_UPPER_LAYER = {"overlay", "nfs", "nfs4", "cifs", "smb3", "fuse", "9p"}


def filesystem_type(path: Path) -> str | None:
    """The type of the file system holding ``path`` (or its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        device = os.stat(path).st_dev
        mountinfo = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return None
    wanted = f"{os.major(device)}:{os.minor(device)}"
    found = None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) > 4 and fields[2] == wanted and right:
            found = right.split()[0]  # the last mount of that device wins (it is on top)
    return found


def blocking_problems(bwrap: str, root: Path | None = None) -> list[str]:
    """What stops sandboxes from running at all, each with its fix."""
    problems = []
    fstype = filesystem_type(root) if root is not None else None
    if fstype in NO_UPPER_LAYER or (fstype or "").startswith("fuse."):
        problems.append(
            f"LOCAL_SANDBOX_ROOT ({root}) is on {fstype}, which cannot hold the sandboxes' "
            "writable overlay layers: point it at a local file system (ext4, xfs, btrfs, "
            "tmpfs), e.g. a volume when the control plane runs in a container"
        )
    if find_bwrap(bwrap) is None:
        problems.append(f"bubblewrap ({bwrap}) is not installed: {BWRAP_HINT}")
    if rootless() and not user_namespaces_allowed():
        problems.append(
            "not running as root and unprivileged user namespaces are disabled: run the "
            "control plane as root, or `sysctl -w kernel.unprivileged_userns_clone=1`"
        )
    if not overlay_supported():
        problems.append("the kernel has no overlayfs: load it with `modprobe overlay`")
    return problems


@functools.cache
def checkpoint_problem() -> str:
    """Why hibernating (checkpointing a sandbox's memory to disk) is not offered."""
    criu = shutil.which("criu")
    if criu is None:
        return "hibernate needs CRIU checkpointing, which is not installed on this host"
    try:
        done = subprocess.run([criu, "check"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"hibernate needs CRIU checkpointing; `criu check` failed here: {exc}"
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        detail = lines[-1] if lines else f"exit status {done.returncode}"
        return f"hibernate needs CRIU checkpointing; `criu check` fails on this host: {detail}"
    return (
        "CRIU works on this host, but the local provider does not checkpoint sandboxes yet; "
        "pause keeps memory instead"
    )
