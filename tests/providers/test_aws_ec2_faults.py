"""A fault at every AWS call of an aws-ec2 start leaves no instance that no sandbox owns.

Driven through the service layer (``create_sandbox`` + ``perform_operation``) against moto
running as an HTTP server. A clean start is recorded first (every AWS operation it
called, in order, seen by a botocore event hook on the provider's own clients). Then, for
every call of that list, a fresh start runs with that call failing:

* **before** it reaches AWS (the connection fails: ``EndpointConnectionError``);
* **after** AWS acted, the answer lost (``ConnectionClosedError`` once moto answered),
  for calls that change something.

Each fault is tried twice: once *sticky* (from that call on, every call of the same
operation fails the same way, the services' retries too, so the start cannot simply
succeed on a retry) and once for that one call only (a blip the start may recover from). The
sandbox must end ``running`` or ``failed`` (then without a provider reference and with a
reason), and moto must hold no live instance that no sandbox owns. At the end, deleting
the sandboxes leaves moto with no instance at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from sandboxes.models import Preset, Sandbox, Team
from sandboxes.services import backends
from sandboxes.services.actors import Actor
from sandboxes.services.lifecycle import create_sandbox, perform_operation
from sandboxes.services.snapshots import import_snapshot
from sandboxes.states import Status
from tests.aws_moto import moto_server

PRESET = "1vcpu_512mb_4gb"
READ_ONLY = ("Describe", "Get", "List")


@dataclass
class Faults:
    """Records every AWS operation called and fails the chosen one (see module doc)."""

    calls: list[str] = field(default_factory=list)
    operation: str = ""
    #: Calls of ``operation`` to let through before failing.
    skip: int = 0
    after: bool = False
    #: Every later call of ``operation`` fails too (else only the one call).
    sticky: bool = True
    seen: int = 0

    def clear(self) -> None:
        self.operation, self.skip, self.after, self.seen = "", 0, False, 0

    def fail(self, operation: str, skip: int, after: bool, sticky: bool) -> None:
        self.operation, self.skip, self.after, self.seen = operation, skip, after, 0
        self.sticky = sticky

    def _hit(self, name: str) -> bool:
        if name != self.operation:
            return False
        self.seen += 1
        return self.seen > self.skip if self.sticky else self.seen == self.skip + 1

    def before_call(self, event_name: str, **_) -> None:
        from botocore.exceptions import EndpointConnectionError

        name = event_name.rsplit(".", 1)[-1]
        self.calls.append(name)
        if not self.after and self._hit(name):
            raise EndpointConnectionError(endpoint_url=f"injected fault before {name}")

    def after_call(self, event_name: str, **_) -> None:
        from botocore.exceptions import ConnectionClosedError

        name = event_name.rsplit(".", 1)[-1]
        if self.after and self._hit(name):
            raise ConnectionClosedError(endpoint_url=f"injected: {name}'s answer lost")

    def install(self, client) -> None:
        client.meta.events.register("before-call.*.*", self.before_call)
        client.meta.events.register("after-call.*.*", self.after_call)


def _start(team: Team, provider) -> Sandbox:
    # Each start asks everything afresh (the provider caches whether a type hibernates).
    provider._hibernation_support.clear()
    sandbox = create_sandbox(team=team, actor=Actor.system(), preset_id=PRESET)
    perform_operation(sandbox_id=sandbox.pk)
    sandbox.refresh_from_db()
    return sandbox


def _owned() -> set[str]:
    return set(Sandbox.objects.exclude(provider_ref="").values_list("provider_ref", flat=True))


@pytest.mark.django_db
@pytest.mark.slow
def test_a_failure_at_any_aws_call_of_a_start_leaves_no_instance_unowned(settings):
    with moto_server() as moto:
        settings.SANDBOX_PROVIDER_CONFIG = {
            # Reads that keep failing are asked again until the boot timeout: keep it short.
            **moto.config(AWS_EC2_HIBERNATION="1", AWS_EC2_BOOT_TIMEOUT="1"),
            "SANDBOX_PROVIDERS": "aws-ec2",
        }
        backends.reset()
        try:
            provider = backends.get_provider("aws-ec2")
            faults = Faults()
            for service in ("ec2", "ssm", "cloudwatch"):
                faults.install(provider.backend.client(service))
            team = Team.objects.create(slug="faults", name="Faults")
            Preset.objects.get_or_create(
                id=PRESET, defaults={"vcpus": 1, "memory_mb": 512, "disk_gb": 4}
            )
            import_snapshot(
                provider="aws-ec2",
                preset_id=PRESET,
                ref=moto.base_ami(),
                actor=Actor.system(),
                activate=True,
            )

            clean = _start(team, provider)
            assert clean.status == Status.RUNNING, clean.last_error
            steps = list(faults.calls)
            assert "RunInstances" in steps, steps

            outcomes = {"running": 0, "failed": 0}
            cases = []
            for index, operation in enumerate(steps):
                occurrence = steps[:index].count(operation)
                modes = [
                    (after, sticky)
                    for after in ((False,) if operation.startswith(READ_ONLY) else (False, True))
                    for sticky in (True, False)
                ]
                for after, sticky in modes:
                    where = (
                        f"{operation} #{occurrence + 1} ({'after' if after else 'before'}, "
                        f"{'sticky' if sticky else 'once'})"
                    )
                    cases.append(where)
                    faults.fail(operation, occurrence, after, sticky)
                    sandbox = _start(team, provider)
                    faults.clear()
                    assert sandbox.status in (Status.RUNNING, Status.FAILED), where
                    if sandbox.status == Status.FAILED:
                        outcomes["failed"] += 1
                        assert sandbox.provider_ref == "", where
                        assert sandbox.last_error, where
                    else:
                        outcomes["running"] += 1
                    left = moto.live_instances() - _owned()
                    assert not left, f"{where} left {sorted(left)}"
            assert outcomes["failed"] > 0, outcomes
            assert outcomes["running"] > 0, outcomes  # a blip on a read is retried through
            assert len(cases) >= 2 * len(steps)
            print(f"aws-ec2 start: {steps}; {len(cases)} fault cases, {outcomes}")

            # Nothing was made outside the sandboxes that own it: deleting them empties moto.
            for ref in _owned():
                provider.get(ref).delete()
            assert moto.live_instances() == set()
        finally:
            backends.reset()
