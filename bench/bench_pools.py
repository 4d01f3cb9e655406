"""Warm pools (issue 16): a create that takes a ready member, per provider, and hit rates.

Runs ``bench/pools_child.py`` in a process of its own (Django on a throwaway SQLite
database; tasks queued, no worker inside a measured request):

* PVE (``pve-lxc`` against the simulator with 2 s tasks): ``POST /api/v1/sandboxes``
  through the whole Django stack (token auth, throttles, serializer) until the answer
  says ``running``: a hit answers running itself (claim, relabel, status check);
* Docker (a private dockerd, as the tests start it): the same API call;
* ``local``: create to the first exec's result on a hit and cold, as provider calls (the
  measurement of the cold baseline in bench_images) and through the services;
* hit rates, with the in-memory provider whose clone of a member takes 2 s (in
  parallel): a burst of 20 creates against a pool of 20, then one create a second for
  ``BENCH_POOL_STREAM`` (30) seconds against a pool of 5, a thread refilling as the
  worker would.
"""

from __future__ import annotations

import os
import statistics

from bench import Result, median_result, run_child

NOTES = """
The `local` target is read as the figure it improves on was measured: "today 12.9 ms" is
bench_images' create, start and first exec through the provider (no database), so a hit
is the provider calls a hit makes (get the member, relabel it, its first exec), and the
cold row is measured again in the same run for the comparison. Before each series the
spare disks being made in the background are waited for and the host's writes flushed,
so a hit does not time the pool fill's own writes (the relabel's state file rename waits
behind them on this shared disk). The first exec of a member (about 1.5-2 ms) is most of
a hit: the init forks a helper that forks the command, and `true` itself (fork, exec,
dynamic loading) takes 0.7 ms inside the sandbox.

Through the services the same hit also writes what every create writes: the caller's
role, the version (2 statements), the create's transaction (team lock, quota, pool,
member, claim, hit count, version lock, the row, two audit events), the refill task in a
transaction of its own, and the start's settle (the row and its event): 22 statements on
SQLite with BEGIN and COMMIT, pinned in tests/test_pools.py. The row is born holding the
start's lease, so the create starts it itself without claiming a lease, asking a worker,
starting a member that already runs or reading the row back (that was 7 statements
more); the exec is 4 statements (two long-call slots, their release, its audit event;
no activity write when the row's activity is recent), pinned in tests/test_interactive.py.
On this machine, before those changes, the same service-level hit took 28.6 ms (create
21.4 ms, first exec 7.0 ms). What is left is Django's cost per statement on SQLite (0.2-0.4
ms each here); it is not a target of the issue, and every create and exec pays it.

PVE and Docker hits are the same bookkeeping plus a few provider calls (PVE: 4 API calls,
no task: get, relabel; a guest found running is not started again; Docker: inspects and
the relabel volume). The first hit of each provider pays for connection setup (TLS to the
simulator, the Docker client) and is included in the medians' n (PVE's p90). The machine
is shared (two cores, other jobs): single runs vary by tens of percent; the local hit
measured 2.5-3.9 ms over this session's runs while the cold start in the same runs
measured 17-34 ms.

Members of every provider are kept *started*: a started member answers a claim with a
metadata write, while a paused or stopped one would add a resume (PVE: a start task, 2 s
against this simulator; Docker unpause: tens of ms; local: a thaw) to every hit, so
nothing is gained by parking them unless memory matters more than latency (docs/pools.md).
"""


def run() -> list[Result]:
    env = {**os.environ}
    out = run_child("pools_child", env=env, timeout=1800)
    results: list[Result] = []
    if "pve_hit_ms" in out:
        results.append(
            median_result(
                "pve-lxc: create -> running on a pool hit, through the API (2 s tasks)",
                out["pve_hit_ms"],
                at_most=500,
                detail=f"{out['pve_calls_per_hit'][0]:g} PVE API calls and "
                f"{out['pve_tasks_during_hits'][0]} tasks per hit; a cold start is about 6 s "
                f"(clone, resize, start); filling 5 members took {out['pve_fill_s'][0]:.1f} s",
            )
        )
    if "docker_hit_ms" in out:
        results.append(
            median_result(
                "docker: create -> running on a pool hit, through the API",
                out["docker_hit_ms"],
                at_most=60,
            )
        )
    if "local_hit_provider_ms" in out:
        cold = statistics.median(out["local_cold_provider_ms"])
        results.append(
            median_result(
                "local: create -> first exec on a pool hit, provider calls (get, relabel, "
                "first exec of the member), measured as the cold baseline is",
                out["local_hit_provider_ms"],
                at_most=3,
                detail=f"get {statistics.median(out['local_hit_get_ms']):.2f} ms, relabel "
                f"{statistics.median(out['local_hit_relabel_ms']):.2f} ms, first exec "
                f"{statistics.median(out['local_hit_exec_ms']):.2f} ms; cold in the same run "
                f"(create, start, first exec: bench_images' 12.8 ms measurement) {cold:.2f} ms",
            )
        )
    if "local_hit_to_exec_ms" in out:
        results.append(
            median_result(
                "local: the same through the services, with the database (create_sandbox "
                "answers a hit running, then exec_command)",
                out["local_hit_to_exec_ms"],
                at_most=None,
                detail=f"create to running {statistics.median(out['local_hit_create_ms']):.1f}"
                f" ms, first exec {statistics.median(out['local_first_exec_ms']):.1f} ms; cold "
                f"(create_sandbox, the worker's start at once, exec_command) "
                f"{statistics.median(out['local_cold_to_exec_ms']):.1f} ms",
            )
        )
    if "burst_hits" in out:
        results.append(
            Result(
                "hit rate: a burst of 20 creates, pool of 20",
                round(100 * out["burst_hits"][0] / 20, 1),
                "%",
                target="= 100%",
                met=out["burst_hits"][0] == 20,
            )
        )
    if "stream_hits" in out:
        hits, total = out["stream_hits"][0], out["stream_total"][0]
        results.append(
            Result(
                "hit rate: one create a second, pool of 5, 2 s clones",
                round(100 * hits / total, 1),
                "%",
                target=">= 90%",
                met=hits / total >= 0.9,
                detail=f"{hits} of {total} creates",
            )
        )
    for key in sorted(k for k in out if k.endswith("_error")):
        results.append(Result(f"{key.removesuffix('_error')}: did not run", 0, out[key]))
    return results
