"""Running a PVE provider against a fresh simulator (conformance suite and PVE tests)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from providers.pve import PveLxcProvider, PveProvider, PveVmProvider
from tests.pve_sim.schema import APIDOC
from tests.pve_sim.server import PveSimulator
from tests.system import require

LXC_TEMPLATE = 9000
VM_TEMPLATE = 9100


def require_for(kind: str) -> None:
    require("openssl", shutil.which("openssl") is not None, "apt-get install openssl")
    require(
        "PVE API schema",
        APIDOC.is_file(),
        f"{APIDOC} is missing (set PVE_APIDOC to a copy of pve-apidoc.json)",
    )
    if kind == "pve-vm":
        require(
            "bubblewrap",
            shutil.which("bwrap") is not None,
            "apt-get install bubblewrap (the simulator's QEMU guest agent runs commands in it)",
        )


@contextlib.contextmanager
def simulated(
    kind: str, root: Path | None = None, *, task_delay: float = 0.02, **settings: str
) -> Iterator[tuple[PveSimulator, PveProvider]]:
    """A started simulator with the default cluster, and a provider of ``kind`` on it."""
    require_for(kind)
    sim = PveSimulator(root, task_delay=task_delay)
    sim.default_cluster(lxc_template=LXC_TEMPLATE, vm_template=VM_TEMPLATE)
    sim.start()
    try:
        cls = PveLxcProvider if kind == "pve-lxc" else PveVmProvider
        yield sim, cls.from_config(sim.config(**settings))
    finally:
        sim.close()


def template_for(kind: str) -> str:
    return str(LXC_TEMPLATE if kind == "pve-lxc" else VM_TEMPLATE)
