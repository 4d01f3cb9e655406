"""The dashboard's presentation helpers: durations, sparklines, action offers, lineage."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers.base import Capabilities, MetricSample
from sandboxes.models import Sandbox, Snapshot
from sandboxes.ui.actions import feature_offer, lifecycle_offers
from sandboxes.ui.charts import cpu_sparkline, memory_sparkline
from sandboxes.ui.durations import format_duration, parse_duration
from sandboxes.ui.lineage import parent_chain


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("", None),
        ("  ", None),
        ("90", 90),
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("1d", 86400),
        ("1h30m", 5400),
        ("1H 30M", 5400),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "1x", "-5", "0", "0m", "h", "1.5h"])
def test_parse_duration_refuses_what_it_cannot_read(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@given(st.integers(min_value=1, max_value=10**8))
def test_format_and_parse_round_trip(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


def samples(*pairs):
    return [
        MetricSample(datetime(2025, 1, 1, 0, 0, i, tzinfo=UTC), cpu, mem)
        for i, (cpu, mem) in enumerate(pairs)
    ]


def test_cpu_sparkline_scales_to_the_vcpus():
    line = cpu_sparkline(samples((0.0, None), (2.0, None), (1.0, None)), vcpus=2, height=50)
    points = [tuple(map(float, p.split(","))) for p in line.points.split()]
    assert [x for x, _ in points] == [0.0, 120.0, 240.0]
    assert [y for _, y in points] == [49.0, 1.0, 25.0]  # empty, full, half (1 px margins)
    assert (line.latest, line.peak, line.count) == ("1.00 vCPU", "2.00 vCPU", 3)


def test_memory_sparkline_skips_missing_samples_and_never_overflows():
    line = memory_sparkline(
        samples((None, 512 * 2**20), (None, None), (None, 2048 * 2**20)), memory_mb=1024
    )
    assert line.count == 2
    assert line.peak == "2048 MiB"  # above the size: the scale grows instead of clipping
    assert min(float(p.split(",")[1]) for p in line.points.split()) == 1.0
    assert cpu_sparkline([], vcpus=1).empty


def sandbox(status, provider="memory"):
    return Sandbox(pk="sbx-test", status=status, provider=provider, name="")


FULL = Capabilities(
    supports_pause=True,
    supports_hibernate=True,
    supports_exec=True,
    supports_snapshots=True,
    supports_expose_http=True,
    supports_wake_on=True,
)


def test_offers_follow_the_status():
    assert [o.name for o in lifecycle_offers(sandbox("running"), FULL)] == [
        "pause",
        "hibernate",
        "stop",
        "delete",
    ]
    assert [o.name for o in lifecycle_offers(sandbox("paused"), FULL)] == [
        "resume",
        "hibernate",
        "stop",
        "delete",
    ]
    assert [o.name for o in lifecycle_offers(sandbox("stopped"), FULL)] == ["start", "delete"]
    assert [o.name for o in lifecycle_offers(sandbox("deleted"), FULL)] == []
    delete = lifecycle_offers(sandbox("stopped"), FULL)[-1]
    assert delete.destructive
    assert "gone for good" in delete.confirm


def test_offers_say_why_the_provider_or_role_cannot():
    caps = Capabilities(reasons={"supports_pause": "no freezer"})
    pause = next(o for o in lifecycle_offers(sandbox("running"), caps) if o.name == "pause")
    assert not pause.allowed
    assert pause.reason == "memory cannot pause: no freezer"
    first = lifecycle_offers(sandbox("running"), FULL, read_only_reason="viewer")[0]
    assert (first.name, first.allowed, first.reason) == ("pause", False, "viewer")
    exec_offer = feature_offer(sandbox("paused"), FULL, "exec")
    assert exec_offer.reason == "the sandbox is paused; this needs it running"
    assert feature_offer(sandbox("running"), caps, "exec").reason.startswith(
        "not offered by memory"
    )
    assert feature_offer(sandbox("running"), FULL, "snapshot").allowed


def test_parent_chain_stops_at_invisible_parents_and_cycles():
    v1 = Snapshot(pk=1, snapshot_id="v1")
    v2 = Snapshot(pk=2, snapshot_id="v2", parent_id=1)
    v3 = Snapshot(pk=3, snapshot_id="v3", parent_id=2)
    hidden = Snapshot(pk=4, snapshot_id="v4", parent_id=99)
    by_pk = {s.pk: s for s in (v1, v2, v3, hidden)}
    assert parent_chain(v3, by_pk) == [v2, v1]
    assert parent_chain(hidden, by_pk) == []
    v1.parent_id = 3  # a cycle
    assert parent_chain(v3, by_pk) == [v2, v1]
