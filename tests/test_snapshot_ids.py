"""Snapshot and preset ids: strict, total parsing with property-based tests."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from providers.errors import InvalidPresetId, InvalidSnapshotId
from providers.presets import format_preset_id, parse_preset_id
from providers.registry import known_provider_names, register_provider, unregister_provider
from providers.snapshot_ids import (
    NoActiveVersion,
    SnapshotId,
    format_snapshot_id,
    parse_snapshot_id,
    resolve_snapshot_id,
)

PROVIDERS = ["local", "pve-lxc", "pve-vm", "morph", "docker"]


@pytest.fixture(autouse=True, scope="module")
def _known_providers():
    """The documented providers, whether or not their modules are merged yet."""
    added = [name for name in PROVIDERS if name not in known_provider_names()]
    for name in added:
        register_provider(name, lambda: None)
    yield
    for name in added:
        unregister_provider(name)


sizes = st.integers(min_value=1, max_value=999_999)
memory = st.one_of(
    st.integers(min_value=1, max_value=999_999).map(lambda gb: gb * 1024),
    st.integers(min_value=1, max_value=999_999).filter(lambda mb: mb % 1024),
)
presets = st.builds(format_preset_id, sizes, memory, sizes)
versions = st.integers(min_value=1, max_value=999_999_999)


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("pvelxc_4vcpu_6gb_32gb_v3", ("pve-lxc", "4vcpu_6gb_32gb", 3)),
        ("morph_4vcpu_16gb_48gb_v1", ("morph", "4vcpu_16gb_48gb", 1)),
        ("pvevm_4vcpu_6gb_32gb_v1", ("pve-vm", "4vcpu_6gb_32gb", 1)),
        ("local_2vcpu_2gb_8gb_v2", ("local", "2vcpu_2gb_8gb", 2)),
        ("docker_2vcpu_4gb_16gb_v1", ("docker", "2vcpu_4gb_16gb", 1)),
        ("local_1vcpu_512mb_8gb_v10", ("local", "1vcpu_512mb_8gb", 10)),
        ("pvelxc_4vcpu_6gb_32gb", ("pve-lxc", "4vcpu_6gb_32gb", None)),
    ],
)
def test_the_documented_examples(text, parts):
    assert parse_snapshot_id(text) == SnapshotId(*parts)
    assert format_snapshot_id(*parts) == text


@given(st.sampled_from(PROVIDERS), presets, st.one_of(st.none(), versions))
def test_every_valid_id_round_trips(provider, preset, version):
    text = format_snapshot_id(provider, preset, version)
    parsed = parse_snapshot_id(text)
    assert parsed == SnapshotId(provider, preset, version)
    assert str(parsed) == text


@given(st.text(max_size=60))
@example("")
@example("pvelxc_4vcpu_6gb_32gb_v0")
@example("pvelxc_4vcpu_6gb_32gb_v03")
@example("pve-lxc_4vcpu_6gb_32gb_v3")
@example("PVELXC_4vcpu_6gb_32gb_v3")
@example(" local_2vcpu_2gb_8gb_v2")
@example("local_2vcpu_2gb_8gb_v2\n")
@example("local_2vcpu_2048mb_8gb_v2")
@example("local_02vcpu_2gb_8gb_v2")
@example("local_2vcpu_2gb_8gb_v")
@example("local_2vcpu_2gb_v2")
@example("nosuch_2vcpu_2gb_8gb_v2")
@example("local_2vcpu_2gb_8tb_v2")
@example("local_2vcpu_2gb_8gb_v1_v2")
def test_every_string_either_parses_to_a_canonical_id_or_raises_the_one_error(text):
    try:
        parsed = parse_snapshot_id(text)
    except InvalidSnapshotId as exc:
        assert str(exc)  # noqa: PT017 - the error says what is wrong
        return
    assert str(parsed) == text  # anything accepted is exactly the canonical spelling


@given(st.one_of(st.integers(), st.none(), st.binary(), st.lists(st.text())))
def test_non_strings_raise_the_same_error(value):
    with pytest.raises(InvalidSnapshotId):
        parse_snapshot_id(value)


def test_format_refuses_what_parse_would_refuse():
    with pytest.raises(InvalidSnapshotId):
        format_snapshot_id("nosuch", "2vcpu_2gb_8gb", 1)
    with pytest.raises(InvalidSnapshotId):
        format_snapshot_id("local", "2vcpu_2048mb_8gb", 1)
    for version in (0, -1, True, "1"):
        with pytest.raises(InvalidSnapshotId):
            format_snapshot_id("local", "2vcpu_2gb_8gb", version)


def test_resolve_fills_in_the_active_version():
    active = {("pve-lxc", "4vcpu_6gb_32gb"): 3}
    lookup = lambda provider, preset: active.get((provider, preset))  # noqa: E731
    assert resolve_snapshot_id("pvelxc_4vcpu_6gb_32gb", active_version=lookup).version == 3
    assert resolve_snapshot_id("pvelxc_4vcpu_6gb_32gb_v1", active_version=lookup).version == 1
    with pytest.raises(NoActiveVersion):
        resolve_snapshot_id("local_2vcpu_2gb_8gb", active_version=lookup)
    with pytest.raises(InvalidSnapshotId):
        resolve_snapshot_id("local_2vcpu", active_version=lookup)


@given(sizes, memory, sizes)
def test_preset_ids_round_trip(vcpus, memory_mb, disk_gb):
    size = parse_preset_id(format_preset_id(vcpus, memory_mb, disk_gb))
    assert (size.vcpus, size.memory_mb, size.disk_gb) == (vcpus, memory_mb, disk_gb)


@given(st.text(max_size=40))
def test_preset_parsing_is_total(text):
    try:
        size = parse_preset_id(text)
    except InvalidPresetId:
        return
    assert size.id == text
