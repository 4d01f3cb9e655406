"""Benchmarks: `make bench` runs every ``bench/bench_*.py`` and writes docs/benchmarks.md.

Each module has ``run() -> list[Result]``. Targets are checked here, never by timed
assertions in the test suite. ``python -m bench NAME...`` runs only the named modules
(``python -m bench local`` runs bench_local.py) and updates their section of the report.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Result:
    name: str
    value: float
    unit: str
    #: The target as a person writes it ("<= 25 ms"); empty when there is none.
    target: str = ""
    #: Whether the value meets the target (None: no target).
    met: bool | None = None
    detail: str = ""


def timed(call: Callable[[], object], *, repeat: int, warmup: int = 1) -> list[float]:
    """Wall-clock milliseconds of ``repeat`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def median_result(
    name: str, samples: list[float], *, at_most: float | None, detail: str = ""
) -> Result:
    """A median in ms against an upper bound, with p90 and n in the detail."""
    median = statistics.median(samples)
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    extra = f"p90 {p90:.2f} ms, n={len(samples)}" + (f"; {detail}" if detail else "")
    return Result(
        name=name,
        value=round(median, 2),
        unit="ms (median)",
        target=f"<= {at_most:g} ms" if at_most is not None else "",
        met=None if at_most is None else median <= at_most,
        detail=extra,
    )


def run_child(module: str, *args: str, env: dict[str, str], timeout: float | None = None) -> Any:
    """Run ``python -m bench.<module> args...`` from the repository (a child measures in a
    process of its own: Django set up its way) and return the JSON of its last line of
    output; RuntimeError with the end of its stderr when it fails."""
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        what = " ".join([f"bench.{module}", *args[:1]])
        raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])
