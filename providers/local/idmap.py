"""Host id ranges for sandboxes' user namespaces.

Root inside a sandbox is an unprivileged id on the host: each sandbox gets its own slot of
65,536 uids and gids (root inside = the slot's first id, as root in an unprivileged LXC
container is 100000 on a Proxmox host), so no two sandboxes share a host id: one
sandbox's root cannot signal, ptrace, or share per-user limits (inotify instances,
keyrings, process counts) with another's.

The slots come from ``LOCAL_SANDBOX_ID_RANGE`` (``FIRST:COUNT``), else from root's
subordinate ranges in /etc/subuid and /etc/subgid, else from 2^30 on (1,024 slots): above
the ranges ``useradd`` hands users for their own rootless containers (100000 to
600100000 by default, login.defs' SUB_UID_MIN/MAX), so no user's container shares a host
id with a sandbox.
Layers on disk keep the ids a sandbox sees (0 = its root): they are mounted through the
mapping (idmapped mounts), so a slot can change between starts at no cost.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

SLOT = 65536
DEFAULT_FIRST = 1 << 30
DEFAULT_COUNT = SLOT * 1024


@dataclass(frozen=True)
class IdRange:
    uid_first: int
    gid_first: int
    count: int

    @property
    def slots(self) -> int:
        return self.count // SLOT

    def slot(self, index: int) -> tuple[int, int]:
        """The host uid and gid that root inside slot ``index`` is."""
        return self.uid_first + index * SLOT, self.gid_first + index * SLOT


def parse(text: str) -> IdRange:
    """``FIRST:COUNT`` (the same numbers for uids and gids)."""
    first, sep, count = text.strip().partition(":")
    if not sep or not first.isdigit() or not count.isdigit():
        raise ValueError(f"LOCAL_SANDBOX_ID_RANGE must be FIRST:COUNT, not {text!r}")
    return checked(int(first), int(first), int(count), "LOCAL_SANDBOX_ID_RANGE")


def checked(uid_first: int, gid_first: int, count: int, source: str) -> IdRange:
    if min(uid_first, gid_first) < 1000:
        raise ValueError(f"{source}: the range must start at 1000 or above (host users)")
    if count < SLOT:
        raise ValueError(f"{source}: the range must hold at least {SLOT} ids (one sandbox)")
    if max(uid_first, gid_first) + count > 2**32 - 2:
        raise ValueError(f"{source}: the range runs past the largest id")
    return IdRange(uid_first, gid_first, count)


def _subordinate(path: Path) -> tuple[int, int] | None:
    """Root's first range in /etc/subuid or /etc/subgid, if any."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in ("root", "0") and all(f.isdigit() for f in fields[1:]):
            return int(fields[1]), int(fields[2])
    return None


def default(etc: Path = Path("/etc")) -> IdRange:
    uids, gids = _subordinate(etc / "subuid"), _subordinate(etc / "subgid")
    if uids and gids:
        return checked(uids[0], gids[0], min(uids[1], gids[1]), "root's range in /etc/subuid")
    return IdRange(DEFAULT_FIRST, DEFAULT_FIRST, DEFAULT_COUNT)


# --- slots: which sandbox holds which range, as symlinks <root>/slots/<n> -> <sandbox id>


def claim(slots: Path, sandbox_id: str, count: int) -> int:
    """Take a free slot for ``sandbox_id`` (atomically: a symlink either exists or not).

    The search starts at a random slot, so claims cost one system call while the range is
    far from full, however many sandboxes exist.
    """
    slots.mkdir(mode=0o700, exist_ok=True)
    start = secrets.randbelow(count)
    for offset in range(count):
        index = (start + offset) % count
        try:
            os.symlink(sandbox_id, slots / str(index))
        except FileExistsError:
            continue
        return index
    raise LookupError(f"all {count} host id ranges are in use")


def holds(slots: Path, sandbox_id: str, index: int) -> bool:
    try:
        return os.readlink(slots / str(index)) == sandbox_id
    except OSError:
        return False


def release(slots: Path, sandbox_id: str, index: int | None) -> None:
    """Give a sandbox's slot back (idempotent; never another sandbox's)."""
    if index is not None and holds(slots, sandbox_id, index):
        with contextlib.suppress(FileNotFoundError):
            (slots / str(index)).unlink()
