"""Helpers for driving the PVE providers through the service layer against the simulator."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from django.test import override_settings

from sandboxes.models import Preset, Sandbox, Team
from sandboxes.services import backends
from sandboxes.services.actors import Actor
from sandboxes.services.lifecycle import create_sandbox, perform_operation
from sandboxes.services.snapshots import import_snapshot
from sandboxes.services.teams import create_team
from tests.pve_sim.harness import template_for
from tests.pve_sim.server import PveSimulator

#: 1 vCPU, 1 GiB, 8 GB: the template's disk is 4 GB, so a start also grows the disk.
PRESET = "1vcpu_1gb_8gb"


@dataclass
class ServiceRig:
    sim: PveSimulator
    kind: str
    team: Team

    def start_one(self) -> Sandbox:
        sandbox = create_sandbox(
            team=self.team, actor=Actor.system(), preset_id=PRESET, provider=self.kind
        )
        perform_operation(sandbox_id=sandbox.pk)
        return Sandbox.objects.get(pk=sandbox.pk)

    def ours(self) -> list:
        """Guests left in the simulator that the control plane made (not templates, not
        guests someone made "by hand" in PVE's UI)."""
        self.sim.cluster.settle()
        return [g for g in self.sim.guests() if g.owner != "foreign"]


@contextlib.contextmanager
def service_rig(sim: PveSimulator, kind: str, slug: str, **settings: str) -> Iterator[ServiceRig]:
    config = {"SANDBOX_PROVIDERS": kind, **sim.config(**settings)}
    with override_settings(SANDBOX_PROVIDER_CONFIG=config):
        backends.reset()
        # Transactional tests empty the tables the migrations seeded: make sure it is there.
        Preset.objects.get_or_create(
            id=PRESET,
            defaults={"vcpus": 1, "memory_mb": 1024, "disk_gb": 8, "providers": [kind]},
        )
        team = create_team(slug=slug, actor=Actor.system())
        Team.objects.filter(pk=team.pk).update(max_sandboxes=0, max_vcpus=0, max_memory_mb=0)
        team.refresh_from_db()
        import_snapshot(
            provider=kind,
            preset_id=PRESET,
            ref=template_for(kind),
            actor=Actor.system(),
            activate=True,
        )
        yield ServiceRig(sim, kind, team)
    backends.reset()
