"""Start the PVE simulator by hand (demos, trying the dashboard without a cluster).

    python -m tests.pve_sim [--port 8006] [--task-delay 2]

It prints the settings to give the control plane (PVE_API_URL, PVE_API_TOKEN, ...), then
serves on 127.0.0.1 until interrupted. Register the templates as snapshot versions with
``manage.py import_snapshot`` (9000 for pve-lxc, 9100 for pve-vm).
"""

from __future__ import annotations

import argparse
import signal
import threading

from tests.pve_sim.harness import LXC_TEMPLATE, VM_TEMPLATE
from tests.pve_sim.server import PveSimulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.pve_sim", description=__doc__)
    parser.add_argument("--port", type=int, default=8006, help="0 picks a free port")
    parser.add_argument("--task-delay", type=float, default=1.0, help="seconds each PVE task takes")
    args = parser.parse_args(argv)
    sim = PveSimulator(task_delay=args.task_delay)
    sim.default_cluster(lxc_template=LXC_TEMPLATE, vm_template=VM_TEMPLATE)
    sim.start(port=args.port)
    print("PVE API simulator running. Settings for the control plane:\n")
    for key, value in sim.config().items():
        if key.startswith("PVE_"):
            print(f"{key}={value}")
    print(
        "\nIts guests report loopback addresses, which the control plane refuses to connect "
        "to:\nLXC exec and exposed services do not work against it by hand."
    )
    print(f"\nTemplates: {LXC_TEMPLATE} (CT, pve1), {VM_TEMPLATE} (VM, pve2). Ctrl-C stops.")
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    sim.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
