"""Run the benchmarks and write docs/benchmarks.md (see bench/__init__.py)."""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import re
import sys
import traceback
from pathlib import Path

from bench import Result

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Written by `make bench` (`python -m bench`); each section by one `bench/bench_*.py`.
Targets come from the issues; the test suite never asserts timings.
"""


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} cores ({cpu}){memory}, "
        f"Python {platform.python_version()}"
    )


def section(name: str, results: list[Result], error: str = "", notes: str = "") -> str:
    lines = [f"## {name}", ""]
    lines.append(
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {machine()}; "
        f"command: `make bench` (or `python -m bench {name}`)."
    )
    lines.append("")
    if error:
        lines += ["Did not run:", "", "```", error.strip(), "```", ""]
        return "\n".join(lines)
    lines += ["| measurement | value | target | met |", "|---|---|---|---|"]
    for r in results:
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        value = f"{r.value:g} {r.unit}"
        detail = f" ({r.detail})" if r.detail else ""
        lines.append(f"| {r.name}{detail} | {value} | {r.target} | {met} |")
    lines.append("")
    if notes:  # a module's NOTES: how to read its numbers (what they cannot show)
        lines += [notes.strip(), ""]
    return "\n".join(lines)


def existing_sections() -> dict[str, str]:
    if not REPORT.exists():
        return {}
    parts = re.split(r"^## ", REPORT.read_text(), flags=re.M)[1:]
    return {p.split("\n", 1)[0].strip(): "## " + p.rstrip() + "\n" for p in parts}


def main(argv: list[str]) -> int:
    available = sorted(
        p.stem.removeprefix("bench_") for p in Path(__file__).parent.glob("bench_*.py")
    )
    chosen = argv or available
    unknown = set(chosen) - set(available)
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}; have: {', '.join(available)}")
        return 2
    sections = existing_sections()
    failed = False
    for name in chosen:
        print(f"== {name}", flush=True)
        try:
            module = importlib.import_module(f"bench.bench_{name}")
            results = module.run()
            sections[name] = section(name, results, notes=getattr(module, "NOTES", ""))
            for r in results:
                flag = "" if r.met is None else ("  ok" if r.met else "  MISSED")
                print(f"  {r.name}: {r.value:g} {r.unit} {r.target}{flag}", flush=True)
        except Exception:  # a broken benchmark is reported, the others still run
            failed = True
            sections[name] = section(name, [], error=traceback.format_exc(limit=5))
            traceback.print_exc()
    REPORT.parent.mkdir(exist_ok=True)
    body = HEADER + "\n" + "\n".join(sections[k] for k in sorted(sections))
    REPORT.write_text(body)
    print(f"wrote {REPORT.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
