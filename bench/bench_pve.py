"""PVE providers against the simulator with 2 s tasks: API calls and overhead per start.

A start here is what the service layer does: ``create`` (clone, configure, grow the
disk), ``start``, then ``get``. The simulator's own time is the sum of the tasks that
start ran (clone, resize, start: about 6 s); the control plane's overhead is the wall
time beyond that (polling lag, API round trips, our own work). The issue's aim is 300 ms
or less at the median. Then 50 starts at once from one template.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import Result, median_result
from providers.base import InstanceSpec
from providers.pve import PveLxcProvider, PveProvider, PveVmProvider
from tests.pve_sim.server import PveSimulator

TASK_SECONDS = 2.0
STARTS = 5
CROWD = 50


def _spec(sandbox_id: str) -> InstanceSpec:
    return InstanceSpec(sandbox_id, "1vcpu_1gb_8gb", vcpus=1, memory_mb=1024, disk_gb=8)


def _meta(sandbox_id: str) -> dict[str, str]:
    return {"sandbox_id": sandbox_id, "team": "bench", "preset": "1vcpu_1gb_8gb"}


def _start(provider: PveProvider, sandbox_id: str, template: str) -> str:
    instance = provider.create(_spec(sandbox_id), template, _meta(sandbox_id))
    instance.start()
    return provider.get(instance.id).id


def _task_seconds(sim: PveSimulator, since: float) -> float:
    """The simulator's own time for the tasks begun since ``since`` (they run one by one)."""
    with sim.cluster.lock:
        return sum(
            t.finish_at - t.created for t in sim.cluster.tasks.values() if t.created >= since
        )


def _one_kind(name: str, cls: type[PveProvider], template: str, root: Path) -> list[Result]:
    with PveSimulator(root / name, task_delay=TASK_SECONDS) as sim:
        sim.default_cluster()
        provider = cls.from_config(sim.config())
        _start(provider, f"sbx-warm-{name}", template)  # learns the task durations
        overheads, calls, walls = [], [], []
        for index in range(STARTS):
            before_calls = provider.client.calls
            began = time.time()
            _start(provider, f"sbx-bench{index}-{name}", template)
            wall = time.time() - began
            tasks = _task_seconds(sim, began)
            walls.append(wall)
            overheads.append((wall - tasks) * 1000)
            calls.append(provider.client.calls - before_calls)
        crowd_started = time.time()
        with ThreadPoolExecutor(max_workers=CROWD) as pool:
            outcomes = list(
                pool.map(
                    lambda i: _attempt(provider, f"sbx-crowd{i}-{name}", template), range(CROWD)
                )
            )
        crowd_wall = time.time() - crowd_started
        refs = [o for o in outcomes if o]
        duplicates = len(refs) - len(set(refs))
        sim.cluster.settle()
        leftover = len([g for g in sim.guests() if str(g.vmid) not in refs]) - (1 + STARTS)
    return [
        Result(
            f"{name}: PVE API calls per start",
            statistics.median(calls),
            "calls (median)",
            detail=f"create + start + get; min {min(calls)}, max {max(calls)}",
        ),
        median_result(
            f"{name}: control-plane overhead per start over {TASK_SECONDS:g} s tasks",
            overheads,
            at_most=300,
            detail=f"3 tasks per start, median wall {statistics.median(walls):.2f} s",
        ),
        Result(
            f"{name}: {CROWD} starts at once from one template",
            len(refs),
            f"of {CROWD} running",
            target=f"= {CROWD}, no VMID twice, none orphaned",
            met=len(refs) == CROWD and duplicates == 0 and leftover == 0,
            detail=f"{crowd_wall:.1f} s wall; {duplicates} duplicate VMIDs; {leftover} orphans",
        ),
    ]


def _attempt(provider: PveProvider, sandbox_id: str, template: str) -> str:
    try:
        return _start(provider, sandbox_id, template)
    except Exception:  # a failed start counts as not running; the result says how many
        return ""


def run() -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="bench-pve-") as tmp:
        root = Path(tmp)
        return _one_kind("pve-lxc", PveLxcProvider, "9000", root) + _one_kind(
            "pve-vm", PveVmProvider, "9100", root
        )
