"""Server-side SVG sparklines for CPU and memory samples (no chart library, no JS)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sandboxes.services.interactive import MetricSample


@dataclass(frozen=True)
class Sparkline:
    """A polyline inside a ``width`` x ``height`` box, with the numbers it stands for."""

    title: str
    points: str  # "x,y x,y ..." for <polyline points>
    latest: str
    peak: str
    width: int
    height: int
    count: int

    @property
    def empty(self) -> bool:
        return self.count == 0


def _points(values: Sequence[float], *, ceiling: float, width: int, height: int) -> str:
    if not values:
        return ""
    step = width / max(len(values) - 1, 1)
    ceiling = ceiling or 1.0
    coords = []
    for i, value in enumerate(values):
        y = height - (min(max(value, 0.0), ceiling) / ceiling) * (height - 2) - 1
        coords.append(f"{i * step:.1f},{y:.1f}")
    return " ".join(coords)


def _megabytes(value: float) -> str:
    return f"{value / (1024 * 1024):.0f} MiB"


def cpu_sparkline(
    samples: Sequence[MetricSample], *, vcpus: int, width: int = 240, height: int = 48
) -> Sparkline:
    """CPU use in vCPUs (0..vcpus) over the samples that report it."""
    values = [s.cpu_fraction for s in samples if s.cpu_fraction is not None]
    return Sparkline(
        title=f"CPU (of {vcpus} vCPU)",
        points=_points(values, ceiling=float(vcpus), width=width, height=height),
        latest=f"{values[-1]:.2f} vCPU" if values else "",
        peak=f"{max(values):.2f} vCPU" if values else "",
        width=width,
        height=height,
        count=len(values),
    )


def memory_sparkline(
    samples: Sequence[MetricSample], *, memory_mb: int, width: int = 240, height: int = 48
) -> Sparkline:
    """Memory in use against the sandbox's size."""
    values = [float(s.memory_bytes) for s in samples if s.memory_bytes is not None]
    ceiling = max([memory_mb * 1024 * 1024.0, *values])
    return Sparkline(
        title=f"Memory (of {memory_mb} MiB)",
        points=_points(values, ceiling=ceiling, width=width, height=height),
        latest=_megabytes(values[-1]) if values else "",
        peak=_megabytes(max(values)) if values else "",
        width=width,
        height=height,
        count=len(values),
    )
