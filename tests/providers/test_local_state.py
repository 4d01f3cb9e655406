"""The local provider's state file and what it works out once per host probe: no
sandbox runs here (no bubblewrap needed), only the files and the provider object."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from providers.errors import NotFound
from providers.local import LocalProvider, host
from providers.local import provider as local_module
from providers.local.state import Runtime, SandboxState, ServiceEntry


def full_state(sandbox_id: str = "sbx-state1") -> SandboxState:
    return SandboxState(
        id=sandbox_id,
        vcpus=2,
        memory_mb=1024,
        disk_gb=8,
        preset_id="2vcpu_1gb_8gb",
        metadata={"sandbox_id": sandbox_id, "team": "tests"},
        snapshot_ref="snap-1",
        chain=["snap-1", "base"],
        parts={"/": "root", "/workspace": "workspace"},
        created_at=1733300000.25,
        runtime=Runtime(pid=42, start_ticks=7, boot_id="b-1", supervisor=41, exec_socket=True),
        services={"web": ServiceEntry(port=8080), "api": ServiceEntry(port=9000)},
        id_slot=3,
        network={"mode": "allowlist", "allow": ["example.org"]},
        image={"env": {"A": "1"}, "working_dir": "/app", "uid": 1000, "exposed_ports": [80]},
    )


@pytest.mark.parametrize(
    "state",
    [full_state(), dataclasses.replace(full_state(), runtime=None, services={}, image=None)],
    ids=["everything", "stopped, plain"],
)
def test_the_state_file_text_is_what_it_always_was(state):
    """Readers of every version parse it: the text is the one ``asdict`` gave."""
    assert state.to_json() == json.dumps(dataclasses.asdict(state), indent=1, sort_keys=True)
    assert SandboxState.from_json(state.to_json()) == state


@pytest.fixture
def provider(tmp_path) -> LocalProvider:
    return LocalProvider.from_config({"LOCAL_SANDBOX_ROOT": str(tmp_path / "root")})


def stored(provider: LocalProvider, state: SandboxState) -> Path:
    provider.store.ensure_dirs()
    provider.store.sandbox_dir(state.id).mkdir()
    provider.store.save(state)
    return provider.store.state_path(state.id)


def test_relabel_rewrites_the_state_file_only_when_the_metadata_changes(provider):
    path = stored(provider, full_state())
    before = path.stat().st_ino
    provider.relabel("sbx-state1", {"team": "tests", "sandbox_id": "sbx-state1"})
    assert path.stat().st_ino == before  # the same labels: nothing written
    provider.relabel("sbx-state1", {"sandbox_id": "sbx-claimed", "team": 7})
    assert path.stat().st_ino != before  # a new file put in place (atomic_write)
    assert provider.store.load("sbx-state1") == dataclasses.replace(
        full_state(), metadata={"sandbox_id": "sbx-claimed", "team": "7"}
    )
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(NotFound):
        provider.relabel("sbx-missing", {"sandbox_id": "sbx-missing"})


def test_capabilities_are_worked_out_again_when_the_host_is_probed_again(provider, monkeypatch):
    caps = provider.capabilities
    assert provider.capabilities is caps  # asked on every exec: one answer per probe
    monkeypatch.setattr(host, "blocking_problems", lambda *_: ["bubblewrap is gone"])
    assert provider.capabilities is caps  # until the next probe is due
    monkeypatch.setattr(local_module, "PROBE_SECONDS", -1.0)
    fresh = provider.capabilities
    assert fresh is not caps
    assert not fresh.supports_pause
