"""What the local provider's defences cost, and what a hostile neighbour costs the host.

Used by bench_local.py. Two kinds of numbers:

* the cost of each defence at start: the seccomp filter as the difference between
  interleaved runs of a bare bubblewrap with and without it; the provider's part (the
  user namespace and its id maps, the idmapped mounts, the sandbox's disk) timed inside
  real starts; sbx-init's hardening (the /proc mounts, dropping CAP_SYS_ADMIN) is a
  dozen system calls, inside "create + start";
* a fork bomb and a memory hog in one sandbox, while the host and another sandbox run
  commands: their latency before and during the attack.
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench import Result, median_result
from providers.local import disk, launch, seccompbin, syscalls

BARE = ["bwrap", "--ro-bind", "/", "/", "--unshare-all", "--proc", "/proc", "--dev", "/dev"]


def _bwrap_ms(extra: list[str], filter_path: Path | None = None) -> float:
    """One bare bubblewrap run of /bin/true with ``extra`` options (and the filter)."""
    fds = [os.open(filter_path, os.O_RDONLY)] if filter_path else []
    try:
        seccomp = ["--seccomp", str(fds[0])] if fds else []
        begin = time.perf_counter()
        subprocess.run([*BARE, *extra, *seccomp, "/bin/true"], check=True, pass_fds=fds)
        return (time.perf_counter() - begin) * 1000
    finally:
        for fd in fds:
            os.close(fd)


def seccomp_cost(root: Path, repeat: int = 40) -> list[Result]:
    """Loading the seccomp filter, as the difference it makes to a bare bubblewrap run
    (sbx-init loads the same program with the same system call)."""
    path = seccompbin.ensure_filter(root)
    bare, filtered = [], []
    for _ in range(repeat):  # interleaved, so drift on a shared machine hits both alike
        bare.append(_bwrap_ms([]))
        filtered.append(_bwrap_ms([], path))
    return [_cost("seccomp filter", filtered, statistics.median(bare))]


def _cost(name: str, samples: list[float], base: float) -> Result:
    median = statistics.median(samples)
    return Result(
        name=f"defence cost at start: {name}",
        value=round(median - base, 2),
        unit="ms (median difference)",
        detail=f"bare bwrap {base:.2f} ms vs {median:.2f} ms with it, n={len(samples)}",
    )


@contextlib.contextmanager
def _timing(module, name: str, into: dict[str, list[float]]) -> Iterator[None]:
    original = getattr(module, name)

    @functools.wraps(original)
    def timed(*args, **kwargs):
        begin = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            into.setdefault(name, []).append((time.perf_counter() - begin) * 1000)

    setattr(module, name, timed)
    try:
        yield
    finally:
        setattr(module, name, original)


def provider_parts(start_to_first_exec: Callable[[int], list[float]], repeat: int = 30):
    """The provider's own defences, timed inside real create + start + exec rounds."""
    seen: dict[str, list[float]] = {}
    with contextlib.ExitStack() as stack:
        for module, name in (
            (launch, "_spawn_from_thread"),
            (launch, "_map_ids"),
            (launch, "_stage_root"),
            (launch, "_mount_overlays"),
            (syscalls, "idmap_in_place"),
            (disk, "provision"),
            (disk, "ensure_mounted"),
        ):
            stack.enter_context(_timing(module, name, seen))
        start_to_first_exec(repeat)
    per_start = len(seen["_spawn_from_thread"])
    idmapped = sum(seen["idmap_in_place"]) / per_start
    userns = [
        spawn - stage - maps
        for spawn, stage, maps in zip(
            seen["_spawn_from_thread"], seen["_stage_root"], seen["_map_ids"], strict=True
        )
    ]
    staging = [
        stage - overlays
        for stage, overlays in zip(seen["_stage_root"], seen["_mount_overlays"], strict=True)
    ]
    count = len(seen["idmap_in_place"]) // per_start
    return [
        median_result(
            "defence cost at start: user namespace (sbx-init --userns spawn, its thread)",
            userns,
            at_most=None,
        ),
        median_result("defence cost at start: writing its id maps", seen["_map_ids"], at_most=None),
        Result(
            name="defence cost at start: idmapped mounts of the layers",
            value=round(idmapped, 3),
            unit="ms (mean per start)",
            detail=f"{count} mounts per start",
        ),
        median_result(
            "defence cost at start: idmapped mounts and staging the root (overlays excluded)",
            staging,
            at_most=None,
        ),
        median_result(
            "the sandbox's own disk: making one (copy, loop, mount; done ahead by a "
            "background thread, a create renames a spare)",
            seen["provision"],
            at_most=None,
        ),
    ]


def _latencies(call: Callable[[], object], seconds: float) -> list[float]:
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        begin = time.perf_counter()
        call()
        samples.append((time.perf_counter() - begin) * 1000)
        time.sleep(0.02)
    return samples


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


FORK_BOMB = "nohup sh -c 'b() { b | b & }; b' >/dev/null 2>&1 &"
MEMORY_HOG = (
    "nohup python3 -c 'b = []\nwhile True: b.append(bytearray(64 << 20))' >/dev/null 2>&1 &"
)


def noisy_neighbour(running: Callable[[], object], seconds: float = 5.0) -> list[Result]:
    """A fork bomb and a memory hog in one sandbox; the host and a neighbour keep going."""
    neighbour, attacker = running(), running()

    def host_command() -> None:
        subprocess.run(["true"], check=True)

    def neighbour_exec() -> None:
        neighbour.exec(["true"], timeout=30)

    host_before = _latencies(host_command, seconds / 2)
    next_before = _latencies(neighbour_exec, seconds / 2)
    attacker.exec(FORK_BOMB, timeout=30)
    attacker.exec(MEMORY_HOG, timeout=30)
    time.sleep(1)  # let the bomb reach the sandbox's pids.max
    host_during = _latencies(host_command, seconds)
    next_during = _latencies(neighbour_exec, seconds)
    attacker.delete()
    results = []
    for what, before, during in (
        ("host command `true`", host_before, host_during),
        ("neighbour sandbox exec `true`", next_before, next_during),
    ):
        results.append(
            Result(
                name=f"{what} during a fork bomb + memory hog in another sandbox (p99)",
                value=round(_p99(during), 2),
                unit="ms",
                target="<= 100 ms",
                met=_p99(during) <= 100,
                detail=(
                    f"median {statistics.median(during):.2f} ms during vs "
                    f"{statistics.median(before):.2f} ms before (p99 {_p99(before):.2f} ms); "
                    f"n={len(during)}"
                ),
            )
        )
    neighbour.delete()
    return results
